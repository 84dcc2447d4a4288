"""The M3PO family (Hiraoka et al. 2021): ``m3po`` (history-conditioned ensemble meta-model, SAC meta-policy,
branched rollouts, a rising real-data share), ``mbpo`` (the same with L = 0) and ``sac`` (model-free, the same
history networks); option ``weighting`` trains the meta-model by bi-level reweighting."""
