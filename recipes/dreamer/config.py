"""Pydantic configs of the Dreamer-family recipes, with presets as data (``cpu`` and ``paper``).

The config is the only place a number lives.  Presets are dicts of overrides selected by the environment family
(``dmc`` proprio/pixels, ``atari``, ``gym``; see ``recipes.run.config.resolve``).  Sources: DreamerV2's published
``configs.yaml`` (danijar/dreamerv2) and TEMPO Appendix C (Table 1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recipes.run.config import Presets, RunConfig
from recipes.run.precision import Precision


class DreamerConfig(RunConfig):
    """Every setting of a ``dreamerv2`` run: the run's (``recipes.run.config.RunConfig``) plus the world model,
    the actor-critic and the replay.  Environment steps (agent steps × action repeat) everywhere."""

    # world model (DreamerV2 DMC unless noted)
    deter: int = Field(200, ge=1)
    stoch: int = Field(32, ge=1)
    classes: int = Field(0, ge=0, description="0: Gaussian latent (DMC); 32: categorical (Atari)")
    hidden: int = Field(200, ge=1)
    depth: int = Field(48, ge=1)
    mlp_layers: int = Field(4, ge=0)
    mlp_units: int = Field(400, ge=1)
    discount_head: bool = False
    kl_balance: float = Field(0.8, ge=0.0, le=1.0)
    kl_free: float = Field(1.0, ge=0.0, description="free nats of the KL term (0: none)")
    kl_free_avg: bool = Field(
        False,
        description="free nats on the batch mean of the KL (DreamerV2's free_avg, TEMPO's official code) instead of "
        "per step, where a step's weight has no effect through its KL below free nats",
    )
    unimix: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of the uniform mixed into categorical latents and a discrete actor's categorical "
        "(DreamerV3 'unimix', Hafner et al. 2023: 0.01; 0: DreamerV2)",
    )
    kl_scale: float = Field(1.0, ge=0.0)
    discount_scale: float = Field(1.0, ge=0.0)
    obs_scale: float = Field(1.0, ge=0.0, description="weight of the observation term of the ELBO")
    reward_scale: float = Field(1.0, ge=0.0, description="weight of the reward term of the ELBO")
    min_std: float = Field(0.1, gt=0.0, description="the Gaussian latents' smallest std (DreamerV2 rssm.min_std)")
    symlog_obs: bool = Field(
        False,
        description="vector observations: encode and reconstruct symlog(o) (DreamerV3 §3, Hafner et al. 2023)",
    )
    twohot_bins: int = Field(
        0,
        ge=0,
        description="0: DreamerV2's Normal reward head and squared-error critic; K >= 2: reward and critic as two-hot "
        "categoricals over K bins equally spaced in symlog space (DreamerV3 §3, Hafner et al. 2023: 255)",
    )
    model_lr: float = Field(3e-4, gt=0.0)
    model_eps: float = Field(1e-5, gt=0.0)
    model_clip: float = Field(100.0, gt=0.0)
    model_wd: float = Field(1e-6, ge=0.0)

    # actor-critic
    horizon: int = Field(15, ge=1)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)
    entropy: float = Field(1e-4, ge=0.0)
    return_norm: bool = Field(
        False,
        description="DreamerV3's return normalisation (Hafner et al. 2023, eq. 7): the actor's advantages divided "
        "by max(return_norm_limit, EMA of the 5th-95th percentile range of the λ-returns); DreamerV3 pairs it with "
        "entropy 3e-4",
    )
    return_norm_decay: float = Field(0.99, ge=0.0, lt=1.0, description="EMA decay of the return range (DreamerV3)")
    return_norm_limit: float = Field(1.0, gt=0.0, description="L: returns are never scaled up (DreamerV3)")
    actor_grad: Literal["auto", "dynamics", "reinforce"] = "auto"
    actor_dist: Literal["trunc_normal", "normal", "tanh_normal"] = Field(
        "trunc_normal",
        description="continuous actions: DreamerV2's truncated Normal (std up to 2.1), DreamerV3's bounded Normal "
        "(std in [0.1, actor_max_std], the env clips; Hafner et al. 2023) or DreamerV1's / SAC's tanh-squashed Normal "
        "(its entropy bonus keeps the pre-squash mean out of tanh's flat tails; Haarnoja et al. 2018, App. C)",
    )
    repval_scale: float = Field(
        0.0,
        ge=0.0,
        description="DreamerV3's replay value loss (Hafner et al. 2023; danijar/dreamerv3 'repval': 0.3): the critic "
        "also regresses λ-returns of the real replayed rewards at the posterior states, with this weight; 0: off "
        "(DreamerV2)",
    )
    actor_max_std: float = Field(1.0, gt=0.1, description="the largest std of actor_dist=normal (DreamerV3: 1)")
    actor_mean_bound: float | None = Field(
        None,
        gt=0.0,
        description="continuous trunc_normal/normal actors: add the hinge penalty max(0, |mu| - bound)^2 on the "
        "pre-tanh mean to the actor's loss, so dynamics backprop cannot saturate tanh for good (a pendulum actor's "
        "pre-tanh means reached -48..37 without it; docs/recipe-dreamerv2.md); None: off (DreamerV2, DreamerV3)",
    )
    slow_every: int = Field(100, ge=1)
    imag_starts: int | None = Field(
        None,
        ge=1,
        description="imagine from this many random posterior states (None: all batch_size × seq_len, as DreamerV2)",
    )
    ac_layers: int = Field(4, ge=0)
    ac_units: int = Field(400, ge=1)
    actor_lr: float = Field(8e-5, gt=0.0)
    critic_lr: float = Field(8e-5, gt=0.0)

    compile: bool = Field(
        False,
        description="torch.compile the world-model loss and the imagination + actor-critic losses; in tempo also "
        "SameState's mixed product, as a compiled forward-mode JVP (same_state_method auto/jvp; the strategies that "
        "differentiate the forward twice keep it eager on weighter updates): unrolled graphs (the filtering loop in "
        "compile_chunk-step chunks), minutes to compile on a cold cache, eager fallback (recipes.agents.compile)",
    )
    compile_chunk: int = Field(
        10,
        ge=0,
        description="with compile=true, the RSSM's filtering loop is compiled as one graph of this many steps, "
        "run seq_len/compile_chunk times along the sequence (0: the whole sequence unrolled in one graph). The "
        "unrolled graph bakes every step's offsets into its own C++ kernels (~370 kernels at the cpu preset, "
        "minutes of cold compile); chunks of 10 compile several times faster at the same step time "
        "(docs/results.md)",
    )

    imag_chunk: int = Field(
        0,
        ge=0,
        description="with compile=true, the actor-critic's imagination rollout compiled as one graph of this many "
        "steps run horizon/imag_chunk times, its losses as another (0: rollout and losses as one graph unrolled over "
        "the horizon). The same update; smaller graphs, less cold compile (recipes.agents.dreamer_ac.ActorCritic)",
    )

    model_precision: Precision = Field(
        "fp32",
        description="the world-model update: fp32, bf16 (torch.autocast: matrix products in bf16; weights, optimiser, "
        "latent statistics and heads' outputs in fp32, as DreamerV2's mixed precision) or auto (bf16 where a bf16 "
        "GEMM measures >= 2x faster on the device: matrix units for bf16; recipes.run.precision). Every reported "
        "learning result used fp32",
    )
    ac_precision: Precision = Field(
        "fp32",
        description="the actor-critic update (imagination and losses; λ-returns in fp32): fp32, bf16 or auto, as "
        "model_precision: a separate switch because bf16 can speed up the actor-critic while it slows the world "
        "model (docs/results.md)",
    )

    # replay and collection
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(50, ge=2)
    replay_boundary: Literal["absorbing", "concat"] = Field(
        "absorbing",
        description="past a true termination: absorbing padding (Pre-training world models §5.2) or the next "
        "episode; time-limit ends always continue into the next episode (recipes.data.replay)",
    )
    replay_sample_by: Literal["auto", "step", "episode"] = Field(
        "auto",
        description="sequence starts uniform over stored steps or over episodes (auto: episodes for a set of "
        "environments, so the tasks stay balanced in the batch; steps otherwise)",
    )
    replay_capacity: int | None = Field(2_000_000, ge=1, description="env steps kept in replay")
    expl_noise: float = Field(0.0, ge=0.0, description="extra Gaussian action noise while collecting")

    # initialisation from another run (pre-training, then fine-tuning)
    init: str | None = Field(
        None,
        description="a run directory (e.g. of reweigh pretrain) whose checkpoint initialises this run when it "
        "starts; its replay is not carried over",
    )
    init_parts: Literal["wm", "wm+ac"] = Field(
        "wm+ac", description="what --init loads: the world model only, or the world model and the actor-critic"
    )

    @model_validator(mode="after")
    def _check(self) -> DreamerConfig:
        if self.symlog_obs and self.pixels:
            raise ValueError("symlog_obs: applies to vector observations (pixels=false)")
        if self.twohot_bins == 1:
            raise ValueError("twohot_bins: needs at least 2 bins (0 turns the two-hot heads off)")
        if self.actor_mean_bound is not None and self.actor_dist == "tanh_normal":
            raise ValueError("actor_mean_bound: bounds a tanh mean (trunc_normal, normal); tanh_normal has its own")
        if self.batch_size * self.seq_len > 100_000:
            raise ValueError("batch_size × seq_len is implausibly large (> 100000)")
        return self


class TempoConfig(DreamerConfig):
    """Every setting of a ``tempo`` run: DreamerV2's (unchanged, TEMPO §3.1) plus the meta weighter, the task-aware
    upper loss and the hypergradient strategy.  Defaults are TEMPO Appendix C (Table 1)."""

    strategy: Literal["same_state", "lookahead", "implicit", "naive", "uniform"] = "same_state"
    convention: Literal["correct", "official"] = Field(
        "correct",
        description="sign of SameState's hypergradient: 'correct' (−η ∂/∂w ⟨∇θL_low, ∇θL_up⟩, the "
        "descent direction of eq. 9) or 'official' (the official code's +∂/∂w ⟨∇θL_low, ∇θL_up⟩)",
    )
    same_state_method: Literal["auto", "double_backward", "jvp", "finite_difference"] = Field(
        "auto",
        description="how SameState forms its mixed product (bilevel.SameState); auto: the double backward, with "
        "compile=true the compiled forward-mode JVP",
    )
    fd_eps: float = Field(1e-2, gt=0.0, description="perturbation norm of same_state_method=finite_difference")
    task_loss: str = Field("vvaml", description="upper-level loss by registry name (tasklosses)")
    task_loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    normalizer: Literal["batch", "moving"] = Field(
        "batch", description="value normaliser of V-VAML and of the Naive weights"
    )
    weighter_inputs: str = Field(
        "DSV",
        description="meta-weighter inputs (TEMPO Fig. 5b): any of D (h_t), "
        "S (posterior and prior statistics), V (normalised V(s_post), V(s_prior))",
    )
    weighter_task: Literal["none", "id", "embedding"] = Field(
        "none",
        description="a set of environments: the weighter also sees the episode's task, as a one-hot id or as a "
        "learned embedding (bilevel.MetaWeighter groups), so weights can differ per task (TEMPO Appendix A.5)",
    )
    task_embed_dim: int = Field(8, ge=1, description="size of the task embedding of weighter_task=embedding")
    weighter_layers: int = Field(
        4, ge=0, description="hidden dense layers of the meta weighter (TEMPO's '5-layer' MLP: 4 hidden + output)"
    )
    weighter_units: int = Field(400, ge=1)
    weighter_activation: str = "elu"
    weighter_norm: Literal["batch", "layer", "none"] = "batch"
    weighter_output_norm: bool = Field(
        True,
        description="normalise the weighter's output logit by a BatchNorm with learnable scale and shift before "
        "the sigmoid, as TEMPO's official code does (bilevel.MetaWeighter output_norm): the weights start spread "
        "with std ~0.1 and the scale learns the spread",
    )
    hypergradient_scale: Literal["exact", "unit_norm"] = Field(
        "unit_norm",
        description="what the weighter's optimiser receives (bilevel.BilevelUpdate): 'exact' g = dL_up/dw, or "
        "'unit_norm' g / |g| (the same direction at unit norm: SameState's g scales with the model's learning "
        "rate and falls below the weighter's Adam epsilon, which then shrinks every weighter step)",
    )
    weighter_scale: float = Field(0.5, gt=0.0, description="weights are scale·σ(z) + shift (TEMPO eq. 5: 0.5σ + 0.75)")
    weighter_shift: float = Field(0.75, ge=0.0, description="the weights' lower bound (TEMPO eq. 5)")
    weighter_lr: float = Field(1e-4, gt=0.0)
    weighter_eps: float = Field(1e-5, gt=0.0)
    weighter_clip: float = Field(100.0, gt=0.0)
    weighter_wd: float = Field(1e-6, ge=0.0)
    meta_every: int = Field(
        1,
        ge=1,
        description="update the weighter every this many model updates (the weights are applied at every update)",
    )
    compile_jvp: bool | None = Field(
        None,
        description="with compile=true and same_state_method auto/jvp: compile the forward-mode JVP of the weighter "
        "updates (the filtering's, in compile_chunk chunks) too (True), run it eagerly (False), or None: compile it "
        "when meta_every <= 32: its graphs cost a cold compile that enough weighter updates pay back "
        "(docs/results.md)",
    )
    meta_lr: float | None = Field(None, gt=0.0, description="η of SameState/Lookahead (None: model_lr)")
    lookahead_steps: int = Field(1, ge=1)
    implicit_iters: int = Field(5, ge=1)
    implicit_damping: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _check_tempo(self) -> TempoConfig:
        from tasklosses import available_task_losses

        if (
            not self.weighter_inputs
            or set(self.weighter_inputs) - set("DSV")
            or len(set(self.weighter_inputs)) != len(self.weighter_inputs)
        ):
            raise ValueError(f"weighter_inputs: {self.weighter_inputs!r} must be a non-empty subset of 'DSV'")
        if self.same_state_method == "finite_difference":
            raise ValueError(
                "same_state_method: 'finite_difference' differentiates the loss values, but the RSSM "
                "trains with a surrogate gradient (KL balancing); use 'auto' or 'double_backward'"
            )
        if self.task_loss not in available_task_losses():
            raise ValueError(f"task_loss: unknown {self.task_loss!r}; registered: {available_task_losses()}")
        if self.weighter_task != "none" and self.num_tasks < 2:
            raise ValueError(
                f"weighter_task: {self.weighter_task!r} needs a set of environments (env = a comma list), "
                f"got env {self.env!r}"
            )
        return self


#: Presets per (preset, family); "dmc_pixels" applies to dmc with pixels=True.  Data, not code branches.
#: DMC episodes end only by time limit, so its presets continue sequences into the next episode ("concat")
#: instead of padding with absorbing states, which would teach a termination that never happens.
PRESETS: Presets = {
    "paper": {
        # DreamerV2 configs.yaml (dmc / atari) and TEMPO Table 1.
        "dmc": {
            "pixels": True,
            "image_size": 64,
            "action_repeat": 2,
            "deter": 200,
            "stoch": 32,
            "classes": 0,
            "hidden": 200,
            "depth": 48,
            "mlp_layers": 4,
            "mlp_units": 400,
            "kl_free": 1.0,
            "kl_scale": 1.0,
            "model_lr": 3e-4,
            "actor_lr": 8e-5,
            "critic_lr": 8e-5,
            "entropy": 1e-4,
            "discount_head": False,
            "batch_size": 16,
            "seq_len": 50,
            "prefill": 1000,
            "train_every": 10,
            "train_steps": 1,
            "eval_every": 10_000,
            "eval_episodes": 10,
            "replay_capacity": 2_000_000,
            "replay_boundary": "concat",
        },
        "atari": {
            "pixels": True,
            "image_size": 64,
            "action_repeat": 4,
            "deter": 600,
            "stoch": 32,
            "classes": 32,
            "hidden": 600,
            "depth": 48,
            "mlp_layers": 4,
            "mlp_units": 400,
            "kl_free": 0.0,
            "kl_scale": 0.1,
            "discount_head": True,
            "discount_scale": 5.0,
            "model_lr": 2e-4,
            "actor_lr": 4e-5,
            "critic_lr": 1e-4,
            "entropy": 1e-3,
            "batch_size": 16,
            "seq_len": 50,
            "prefill": 200_000,
            "train_every": 16,
            "train_steps": 1,
            "eval_every": 100_000,
            "eval_episodes": 1,
            "replay_capacity": 2_000_000,
        },
        "gym": {"pixels": False, "action_repeat": 1},
    },
    "cpu": {
        # Vector observations, a smaller RSSM and MLPs, sized for a 2-core machine (docs/recipe-dreamerv2.md).
        "dmc": {
            "pixels": False,
            "action_repeat": 2,
            "deter": 128,
            "stoch": 32,
            "classes": 0,
            "hidden": 128,
            "mlp_layers": 2,
            "mlp_units": 128,
            "ac_layers": 2,
            "ac_units": 128,
            "imag_starts": 256,
            "kl_free": 1.0,
            "model_lr": 6e-4,
            "actor_lr": 2e-4,
            "critic_lr": 2e-4,
            "batch_size": 16,
            "seq_len": 50,
            "prefill": 5_000,
            # One update every 2 env steps (a replay ratio of 400 against DreamerV3's 512): on the DMC development
            # suite the actor-critic leaves the spinning optima of reacher and pendulum only at this ratio, at a
            # few times the wall time of train_every=10 (docs/recipe-dreamerv2.md).  `make run` pins its own.
            "train_every": 2,
            "train_steps": 1,
            "eval_every": 10_000,
            "eval_episodes": 5,
            "replay_boundary": "concat",
        },
        # Pixels: train_every stays 10 (a conv update costs several vector ones; the higher ratio is not measured).
        "dmc_pixels": {"pixels": True, "image_size": 32, "depth": 16, "train_every": 10},
        "atari": {
            "pixels": True,
            "image_size": 32,
            "action_repeat": 4,
            "deter": 200,
            "stoch": 16,
            "classes": 16,
            "hidden": 200,
            "depth": 16,
            "mlp_layers": 2,
            "mlp_units": 256,
            "ac_layers": 2,
            "ac_units": 256,
            "kl_free": 0.0,
            "kl_scale": 0.1,
            "discount_head": True,
            "discount_scale": 5.0,
            "model_lr": 3e-4,
            "actor_lr": 8e-5,
            "critic_lr": 1e-4,
            "entropy": 1e-3,
            "prefill": 10_000,
            "train_every": 16,
            "eval_every": 20_000,
        },
        "gym": {
            "pixels": False,
            "action_repeat": 1,
            "mlp_layers": 2,
            "mlp_units": 256,
            "ac_layers": 2,
            "ac_units": 256,
        },
    },
}


#: Extra presets of the ``tempo`` recipe, applied after ``PRESETS`` (same keys).  ``paper``: TEMPO Table 1
#: (the field defaults).  ``cpu``: a smaller weighter and the upper level every 16th update, sized by measurement
#: so that a TEMPO train step costs about as much as a DreamerV2 one (benchmarks/tempo_overhead.py).
TEMPO_PRESETS: Presets = {
    "paper": {},
    "cpu": {"*": {"weighter_layers": 3, "weighter_units": 128, "meta_every": 16}},
}
