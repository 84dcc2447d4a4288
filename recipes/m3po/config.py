"""Configs of the M3PO family, with presets as data (``cpu`` and ``paper``).

Sources, named in each field's description: M3PO (Hiraoka et al. 2021, Algorithm 2, §6–7; our copy lacks the
appendices A.5–A.8 with the environment details and hyperparameters), and where the paper is silent MBPO's
published defaults as mbrl-lib ships them (``conf/algorithm/mbpo.yaml``, ``conf/overrides/mbpo_halfcheetah.yaml``,
``conf/dynamics_model/gaussian_mlp_ensemble.yaml``) and the SAC paper (Haarnoja et al. 2018, Table 1).  Numbers
marked "ours" are choices of this library.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recipes.run.config import Presets, RunConfig
from recipes.run.precision import Precision


class M3POConfig(RunConfig):
    """Every setting of an ``m3po`` run (and, with other defaults, of ``mbpo`` and ``sac``)."""

    # run and environment (RunConfig's, with this family's defaults)
    env: str = "meta:halfcheetah-fwd-bwd"
    action_repeat: int = Field(1, ge=1, description="MuJoCo control as the meta-RL literature uses it: no repeat")
    task_switch: int | None = Field(
        None,
        ge=1,
        description="meta: envs resample the hidden task every this many agent steps inside an "
        "episode too (None: at every episode start only)",
    )
    prefill: int = Field(5_000, ge=0, description="random-action env steps (mbrl-lib MBPO initial_exploration_steps)")
    train_every: int = Field(
        1,
        ge=1,
        description="env steps per training call; each call does train_every × rollouts_per_step "
        "rollouts and train_every × sac_updates SAC updates, so the per-step rates stay those of Algorithm 2",
    )
    eval_every: int = Field(5_000, ge=1)
    eval_episodes: int = Field(3, ge=1)
    log_every: int = Field(1_000, ge=1)
    checkpoint_every: int = Field(5_000, ge=1)

    # history (M3PO §6, Fig. 5)
    history_len: int = Field(
        10,
        ge=0,
        description="L, steps of the current episode the meta-model and the "
        "meta-policy see (M3PO's L; its value is in App. A.7, which we lack: ours)",
    )
    history_hidden: int = Field(64, ge=1, description="size of the GRU code z (ours)")

    # meta-model (MBPO via mbrl-lib unless noted)
    model_based: bool = Field(True, description="False: model-free SAC on real data (recipe sac)")
    members: int = Field(7, ge=1, description="ensemble size B (mbrl-lib ensemble_size 7)")
    elites: int = Field(5, ge=1, description="members used for rollouts (mbrl-lib num_elites 5)")
    model_layers: int = Field(4, ge=1, description="hidden layers per member (mbrl-lib num_layers 4)")
    model_units: int = Field(200, ge=1, description="units per hidden layer (mbrl-lib hid_size 200)")
    model_activation: str = Field("silu", description="the members' activation (mbrl-lib: SiLU)")
    model_lr: float = Field(1e-3, gt=0.0, description="Adam (mbrl-lib model_lr)")
    model_wd: float = Field(1e-5, ge=0.0, description="Adam L2 weight decay (mbrl-lib model_wd)")
    model_batch: int = Field(256, ge=1, description="mbrl-lib model_batch_size")
    model_precision: Precision = Field(
        "fp32",
        description="the meta-model's training step: fp32, bf16 (autocast: bf16 matrix products, fp32 weights, NLL "
        "and optimiser) or auto (bf16 where a bf16 GEMM measures >= 2x faster on the device: matrix units "
        "for bf16; recipes.run.precision). Ours; fp32 is what every reported learning result used",
    )
    holdout_ratio: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="hold-out share of D_env for early stopping and elite selection (mbrl-lib validation_ratio)",
    )
    model_patience: int = Field(
        5, ge=1, description="epochs without a model_improvement hold-out gain before stopping (mbrl-lib patience 5)"
    )
    model_improvement: float = Field(
        0.01, gt=0.0, description="the relative hold-out MSE gain that counts as an improvement (mbrl-lib 1%)"
    )
    model_max_epochs: int | None = Field(
        None, ge=1, description="cap on epochs per retraining (None: until the patience runs out, as mbrl-lib)"
    )
    model_every: int = Field(
        250, ge=1, description="F, env steps between meta-model retrainings (mbrl-lib freq_train_model 250)"
    )

    # branched rollouts (M3PO Algorithm 2, lines 6–9)
    rollouts_per_step: int = Field(
        400, ge=1, description="M, branched rollouts per env step (MBPO effective_model_rollouts_per_step 400)"
    )
    rollout_length: int = Field(1, ge=1, description="k, model steps per branched rollout (M3PO §5.2: k = 1)")
    rollout_length_end: int | None = Field(
        None,
        ge=1,
        description="MBPO's rollout schedule: k rises linearly from rollout_length at rollout_length_from to this "
        "at rollout_length_until (env steps; MBPO's Hopper: 1 → 15 over epochs 20–150, i.e. 20000–150000), and "
        "D_model keeps rollouts_per_step × k × model_retain rows, as MBPO resizes its model pool; None: k constant",
    )
    rollout_length_from: int = Field(0, ge=0, description="env step where the rollout schedule starts")
    rollout_length_until: int = Field(0, ge=0, description="env step where the rollout schedule ends")
    model_retain: int = Field(
        1_000,
        ge=1,
        description="env steps' worth of rollouts D_model keeps (MBPO: one "
        "epoch of 1000 steps, num_epochs_to_retain_sac_buffer 1)",
    )

    # real/model data mixture (M3PO-h, §7.1; the schedule of App. A.8 is not in our copy: ours)
    real_ratio_start: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="share of real data in each SAC batch at real_ratio_from (MBPO's real_ratio 0.05)",
    )
    real_ratio_end: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of real data from real_ratio_until on (M3PO-h: the share rises over training; ours)",
    )
    real_ratio_from: int = Field(0, ge=0, description="env step where the linear schedule starts")
    real_ratio_until: int = Field(
        200_000,
        ge=0,
        description="env step where it reaches real_ratio_end (M3PO's short-term budget of 200k samples, §7)",
    )

    # SAC meta-policy (SAC paper Table 1 unless noted)
    sac_updates: int = Field(
        10,
        ge=1,
        description="G, SAC updates per env step (mbrl-lib's HalfCheetah config: 10, its Hopper: 40; MBPO's own code: "
        "20 on Hopper, 40 on HalfCheetah)",
    )
    sac_batch: int = Field(256, ge=1)
    sac_layers: int = Field(2, ge=1)
    sac_units: int = Field(256, ge=1)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    tau: float = Field(0.005, gt=0.0, le=1.0)
    sac_lr: float = Field(3e-4, gt=0.0)
    target_entropy: float | None = Field(None, description="None: −|A| (SAC paper)")
    sac_init_alpha: float = Field(1.0, gt=0.0, description="SAC's initial entropy temperature α")
    sac_target_update_every: int = Field(1, ge=1, description="SAC updates between the target critics' updates")
    sac_grad_clip: float | None = Field(None, gt=0.0, description="SAC's gradient-norm clip (None: none)")

    # weighting: the framework's own contribution (no paper)
    model_loss: Literal["nll", "vagram"] = Field(
        "nll",
        description="the meta-model's own objective: nll (maximum likelihood, MBPO's) or vagram — VaGraM as the "
        "model's loss, as its paper trains the model (Voelcker et al. 2022): the squared error of each predicted "
        "next-observation dimension weighted by the SAC value gradient there, plus the reward's squared error; "
        "the mean only, rollouts deterministic (task_loss_kwargs set its options, e.g. clip_quantile)",
    )
    weighting: bool = Field(
        False,
        description="train the meta-model by bi-level reweighting: a MetaWeighter over "
        "its training transitions, upper loss task_loss through the SAC critic's V",
    )
    task_loss: str = Field("vagram", description="upper-level loss by registry name (tasklosses): vagram or vaml")
    task_loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    strategy: Literal["same_state", "lookahead", "implicit", "naive"] = "same_state"
    meta_every: int = Field(1, ge=1, description="update the weighter every this many model minibatches")
    meta_lr: float | None = Field(None, gt=0.0, description="η of SameState/Lookahead (None: model_lr)")
    weighter_layers: int = Field(2, ge=0)
    weighter_units: int = Field(64, ge=1)
    weighter_activation: str = "elu"
    weighter_norm: Literal["batch", "layer", "none"] = Field(
        "none", description="the weighter's hidden-layer normalisation (ours: none; TEMPO's recipe: batch)"
    )
    weighter_output_norm: bool = Field(
        False, description="normalise the weighter's logit by a BatchNorm before the sigmoid (MetaWeighter output_norm)"
    )
    weighter_scale: float = Field(0.5, gt=0.0, description="weights are scale·σ(z) + shift (as TEMPO eq. 5)")
    weighter_shift: float = Field(0.75, ge=0.0, description="the weights' lower bound (as TEMPO eq. 5)")
    weighter_lr: float = Field(1e-4, gt=0.0)
    hypergradient_scale: Literal["exact", "unit_norm"] = Field(
        "exact",
        description="what the weighter's optimiser receives (bilevel.BilevelUpdate): g = dL_up/dw, or g / |g| (the "
        "same direction at unit norm, for hypergradients whose scale leaves the weighter's gradients below Adam's "
        "epsilon)",
    )

    @model_validator(mode="after")
    def _check_m3po(self) -> M3POConfig:
        from tasklosses import available_task_losses

        if self.elites > self.members:
            raise ValueError(f"elites: {self.elites} > members {self.members}")
        if self.real_ratio_until < self.real_ratio_from:
            raise ValueError("real_ratio_until: must not come before real_ratio_from")
        if self.rollout_length_end is not None and self.rollout_length_until < self.rollout_length_from:
            raise ValueError("rollout_length_until: must not come before rollout_length_from")
        if self.weighting and not self.model_based:
            raise ValueError("weighting: needs a model (model_based=true)")
        if self.model_loss == "vagram" and self.weighting:
            raise ValueError("model_loss: vagram is the task-aware loss without a weighter; set weighting=false")
        if self.task_loss not in available_task_losses():
            raise ValueError(f"task_loss: unknown {self.task_loss!r}; registered: {available_task_losses()}")
        if self.pixels:
            raise ValueError("pixels: the M3PO family learns from vector observations only")
        return self

    def env_kwargs(self, *, evaluation: bool = False) -> dict[str, Any]:
        kwargs = super().env_kwargs(evaluation=evaluation)
        if self.env.startswith("meta:"):
            kwargs.update(task_switch=self.task_switch, split="test" if evaluation else "train")
        return kwargs

    def rollout_length_at(self, env_steps: int) -> int:
        """k at ``env_steps``: ``rollout_length``, or MBPO's schedule (``rollout_length_end``), rounded down as MBPO
        does."""
        if self.rollout_length_end is None:
            return self.rollout_length
        span = self.rollout_length_until - self.rollout_length_from
        frac = 1.0 if span == 0 else min(max((env_steps - self.rollout_length_from) / span, 0.0), 1.0)
        return int(self.rollout_length + frac * (self.rollout_length_end - self.rollout_length))

    def real_ratio(self, env_steps: int) -> float:
        """The real share of a SAC batch at ``env_steps``: linear from ``real_ratio_start`` at ``real_ratio_from``
        to ``real_ratio_end`` at ``real_ratio_until``, constant outside (M3PO-h, §7.1)."""
        if not self.model_based:
            return 1.0
        span = self.real_ratio_until - self.real_ratio_from
        frac = 1.0 if span == 0 else min(max((env_steps - self.real_ratio_from) / span, 0.0), 1.0)
        return self.real_ratio_start + frac * (self.real_ratio_end - self.real_ratio_start)


class MBPOConfig(M3POConfig):
    """``mbpo``: M3PO without histories (L = 0) and MBPO's constant real share 0.05 (Janner et al. 2019)."""

    history_len: int = Field(0, ge=0, description="L = 0: MBPO's Markovian model and policy")
    real_ratio_end: float = Field(0.05, ge=0.0, le=1.0, description="MBPO: constant real_ratio 0.05")


class SACConfig(M3POConfig):
    """``sac``: model-free SAC on real data with the same history-conditioned networks as ``m3po``."""

    model_based: bool = Field(False, description="no model: every SAC batch is real data")
    sac_updates: int = Field(1, ge=1, description="SAC's one update per env step (SAC paper Table 1)")


#: Presets per (preset, family).  ``paper``: the field defaults (MBPO/mbrl-lib and the SAC paper).  ``cpu``: sized by
#: measurement on the 2-core development machine (see docs/recipe-m3po.md) — fewer rollouts and SAC updates per step,
#: smaller networks, a capped number of model epochs, training batched every 10 env steps.
PRESETS: Presets = {
    "paper": {"meta": {}, "gym": {}},
    "cpu": {
        fam: {
            "model_units": 128,
            "model_layers": 3,
            "model_max_epochs": 5,
            "rollouts_per_step": 40,
            "sac_updates": 2,
            "sac_units": 128,
            "train_every": 10,
            "prefill": 2_000,
            "history_hidden": 32,
            "real_ratio_until": 50_000,
        }
        for fam in ("meta", "gym")
    },
}

#: The ``sac`` recipe's cpu preset: one SAC update per env step, batched every 10 steps.
SAC_PRESETS: Presets = {"paper": {}, "cpu": {fam: {"sac_updates": 1} for fam in ("meta", "gym")}}
