#!/usr/bin/env bash
# Issue 3's learning check: dreamerv2 --preset cpu on dmc:cartpole_swingup (proprio), 3 seeds × 100k env steps,
# one torch thread each, in run directories outside the work tree; train_every=10, the preset's value then.  Re-running resumes unfinished runs.
# Then: python benchmarks/learning_report.py ~/runs/dv2-tn-s{0,1,2} --out benchmarks/results/dreamer_cartpole.json
set -euo pipefail
RUNS=${RUNS:-$HOME/runs}
REWEIGH=${REWEIGH:-reweigh}
mkdir -p "$RUNS"
for seed in 0 1 2; do
  OMP_NUM_THREADS=1 nohup "$REWEIGH" run dreamerv2 --env dmc:cartpole_swingup --preset cpu --steps 100000 \
    --set train_every=10 --seed "$seed" --logdir "$RUNS/dv2-tn-s$seed" > "$RUNS/dv2-tn-s$seed.log" 2>&1 &
done
wait
