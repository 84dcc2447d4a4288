"""Recipe ``tempo``: TEMPO (Deng et al., NeurIPS 2023) — DreamerV2 with a meta-weighted world model.

One train step (TEMPO Algorithm 1 with eq. 9; docs/recipe-tempo.md):

    batch → RSSM.observe (one pass, fixed latent noise) → ℓ[B,T] (every ELBO term), h, s_post, s_prior
          → V(s_post), V(s_prior) by the slow critic → Norm → L_up[B,T] = |V̄_post − V̄_prior|²   (eq. 4)
          → w[B,T] = N_α(detach(h, stats(s_post), stats(s_prior), V̄_post, V̄_prior))          (eq. 5)
          → model step on mean(w·ℓ); weighter step on g = dL_up/dw by the strategy         (eq. 7, 9)
          → actor-critic in imagination from the detached posteriors                      (DreamerV2, unchanged)

The upper loss reads the states of the lower loss's observe pass (the official code runs a second observe pass
with other latent samples; we do not).  Gaussian latents feed the weighter the posterior and prior *means*,
categorical latents their logits, as the official code does.  Every number lives in
``recipes.dreamer.config.TempoConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bilevel import (
    BatchNormalizer,
    BilevelUpdate,
    LevelOutputs,
    MetaWeighter,
    Uniform,
)
from recipes.agents.optim import adamw
from recipes.dreamer import dreamerv2, fast
from recipes.dreamer.config import TempoConfig
from recipes.run import loop
from recipes.run.config import WEIGHTER_FIELDS, config_kwargs
from recipes.run.precision import autocast_fn
from recipes.run.strategy import strategy_from_config
from tasklosses import make_task_loss
from worldmodels import ModelLoss

#: Metrics of ``bilevel.BilevelUpdate.step`` that only weighter updates produce (the weights against ‖∂V/∂s‖ is
#: computed on those alone: a critic backward every step would cost a few per cent of a step for one logged record).
WEIGHTER_METRICS = (
    "hypergrad_norm",
    "weighter_grad_norm",
    "weighter_step",
    "weighter_step_vs_lr",
    "weight_corr/value_grad_norm",
)


class TempoAgent(dreamerv2.DreamerAgent):
    """DreamerV2's agent plus a meta weighter N_α, a task-aware upper loss and a hypergradient strategy.

    Args:
        cfg: a ``TempoConfig``.
        obs_shape, action_dim, discrete: the environment's spaces.

    ``compile=true`` runs the step's forward at θ by compiled graphs and SameState's mixed product by forward mode
    (``recipes.dreamer.fast.TempoCompiled``).
    """

    def __init__(self, cfg: TempoConfig, obs_shape: tuple[int, ...], action_dim: int, discrete: bool) -> None:
        super().__init__(cfg, obs_shape, action_dim, discrete, Uniform())
        self.cfg: TempoConfig = cfg
        kwargs = dict(cfg.task_loss_kwargs)
        if cfg.task_loss == "vvaml":
            kwargs.setdefault("normalizer", cfg.normalizer)
        self.task_loss = make_task_loss(cfg.task_loss, **kwargs)
        rssm = self.wm.rssm
        stats = rssm.stoch_size  # Gaussian: the mean (S); categorical: the logits (S·C)
        sizes = {"D": rssm.deter_size, "S": 2 * stats, "V": 2}
        task_features = {"none": 0, "id": cfg.num_tasks, "embedding": 1}[cfg.weighter_task]
        self.weighter = MetaWeighter(
            sum(sizes[k] for k in cfg.weighter_inputs) + task_features,
            **config_kwargs(
                cfg, MetaWeighter, WEIGHTER_FIELDS, groups=cfg.num_tasks if cfg.weighter_task == "embedding" else 0
            ),
        )
        self.weighter_opt = adamw(
            self.weighter.parameters(), cfg.weighter_lr, eps=cfg.weighter_eps, weight_decay=cfg.weighter_wd
        )
        strategy = strategy_from_config(cfg)
        self._last_meta: dict[str, float] = {}  # WEIGHTER_METRICS of the last weighter update
        self.update = BilevelUpdate(
            self.wm,
            self.model_opt,
            strategy,
            self.weighter if strategy.trains_weighter else None,
            self.weighter_opt if strategy.trains_weighter else None,
            grad_clip=cfg.model_clip,
            weighter_grad_clip=cfg.weighter_clip,
            hypergradient_scale=cfg.hypergradient_scale,
        )

    def make_backend(self) -> fast.Eager:
        return fast.TempoCompiled(self, strategy_from_config(self.cfg)) if self.cfg.compile else fast.Eager(self)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "weighter_opt": self.weighter_opt}

    def value(self, feat: Tensor) -> Tensor:
        """V(features) by the slow (target) critic: the value the upper loss uses (TEMPO §2.2)."""
        return self.ac.value(feat, slow=True)

    def value_gradient_norm(self, feat: Tensor) -> Tensor:
        """‖∂V/∂s‖ [B, T] of the slow critic at the features ``feat`` [B, T, F] (detached): where the value is most
        sensitive to the state, the steps VaGraM's loss weights most (Voelcker et al. 2022); a diagnostic."""
        with torch.enable_grad():
            f = feat.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.value(f).sum(), f)
        return grad.norm(dim=-1)

    def _noise(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Latent noise for one step, drawn once so that virtual passes (Lookahead) see the same samples."""
        rssm, obs = self.wm.rssm, batch["obs"]
        shape = rssm.noise_shape(*obs.shape[:2])
        dtype = next(self.wm.parameters()).dtype
        draw = torch.rand if rssm.classes else torch.randn
        return draw(shape, device=obs.device, dtype=dtype), draw(shape, device=obs.device, dtype=dtype)

    def level_outputs(self, out: ModelLoss, task: Tensor | None = None) -> LevelOutputs:
        """ℓ, weighter features and the per-step upper loss from one observe pass; ``aux`` holds the pass's
        ``worldmodels.ModelLoss`` and the raw values (for logging).  ``task``: the batch's task ids [B, T]
        (int) for ``weighter_task``."""
        upper, features, values = self.upper_parts(out.states["post"], out.states["prior"], task)
        return LevelOutputs(loss=out.loss, features=features, upper=upper, aux=(out, values))

    def upper_parts(
        self, post: dict[str, Tensor], prior: dict[str, Tensor], task: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """What the upper level reads of the posterior and prior states (dicts of [B, T, ...]): the per-step upper
        loss [B, T] (TEMPO eq. 4), the weighter's features [B, T, F] (eq. 5, detached) and the raw values
        ``value_post``/``value_prior`` [B, T] by the slow critic.

        Raises:
            ValueError: ``weighter_task`` is set but ``task`` is None.
        """
        rssm = self.wm.rssm
        feat_post, feat_prior = rssm.features(post), rssm.features(prior)
        v_post, v_prior = self.value(feat_post), self.value(feat_prior)
        value_loss = getattr(self.task_loss, "value_loss", None)
        if value_loss is not None:  # a loss of the values alone (V-VAML, TEMPO eq. 4): reuse V_post, V_prior
            upper, n_post, n_prior = value_loss(v_post, v_prior)
        else:
            upper = self.task_loss(feat_prior, feat_post, self.value)
            with torch.no_grad():  # Algorithm 1, line 5, for the weighter's inputs only
                n_post, n_prior = BatchNormalizer()(torch.stack([v_post, v_prior]))
        key = "logits" if rssm.classes else "mean"
        parts = {
            "D": [post["deter"]],
            "S": [post[key].flatten(2), prior[key].flatten(2)],
            "V": [n_post.unsqueeze(-1), n_prior.unsqueeze(-1)],
        }
        inputs = [x.detach() for k in self.cfg.weighter_inputs for x in parts[k]]
        if self.cfg.weighter_task != "none":
            if task is None:
                raise ValueError("weighter_task: the batch has no 'task' key (the env is not a set of environments)")
            if self.cfg.weighter_task == "id":
                inputs.append(torch.nn.functional.one_hot(task.long(), self.cfg.num_tasks).to(inputs[0].dtype))
            else:  # the id itself, embedded by the weighter (MetaWeighter groups)
                inputs.append(task.to(inputs[0].dtype).unsqueeze(-1))
        return upper, torch.cat(inputs, -1), {"value_post": v_post, "value_prior": v_prior}

    def world_model_forward(
        self, batch: dict[str, Tensor], noise: tuple[Tensor, Tensor] | None = None
    ) -> Callable[[Any], LevelOutputs]:
        """The ``forward`` closure of the bi-level update: ℓ, weighter features and the upper loss of one observe
        pass of the model at θ (or a virtual θ') with latent ``noise`` (drawn here when None)."""
        noise = self._noise(batch) if noise is None else noise
        return lambda fn: self.level_outputs(fn(batch, noise), batch.get("task"))

    def meta_due(self) -> bool:
        return int(self.ac.updates) % self.cfg.meta_every == 0  # one actor-critic update per model update

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, float], ModelLoss]:
        meta, noise = self.meta_due(), self._noise(batch)
        # ℓ, the weights' features and L_up (eq. 4, 5) of one pass; compiled at θ with compile=true
        forward = self.backend.forward(self.world_model_forward(batch, noise), batch, noise, meta)
        forward = autocast_fn(forward, *self.autocast)
        levels = forward(self.wm)  # the real forward at θ, reused by the update
        # the weights against the reward, the random policy's share of the data and ‖∂V/∂s‖ (diagnostics)
        levels.probes = {k: batch[k] for k in ("reward", "random_policy") if k in batch}
        if meta:
            levels.probes["value_grad_norm"] = self.value_gradient_norm(levels.aux[0].states["feat"])
        jvp = self.backend.jvp(batch, noise, levels, meta)  # (1/N) J a by forward mode, where the backend has it
        with self.backend.backward(meta):
            result = self.update.step(forward, outputs=levels, meta=meta, jvp=jvp)  # eq. 7 (model), 9 (weighter)
        if meta:  # carried to the steps between weighter updates, so that every logged record shows the last one
            self._last_meta = {k: v for k, v in result.items() if k in WEIGHTER_METRICS}
        metrics = {f"model/{k}": v for k, v in {**self._last_meta, **result}.items()}
        out, values = levels.aux
        for name, v in values.items():
            metrics[f"tempo/{name}"] = float(v.detach().mean())
        return metrics, out


def train(
    cfg: TempoConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "tempo"
) -> dict[str, Any]:
    """Train (or resume) a ``tempo`` run in ``logdir`` (``recipes.run.loop.train``); at the end also
    ``diagnostics.png`` (``plot_diagnostics``)."""
    dreamerv2.check_init(cfg, logdir, TempoAgent)
    result = loop.train(
        cfg,
        logdir,
        partial(dreamerv2.make_learner, agent_cls=TempoAgent),
        recipe=recipe,
        force=force,
        progress=progress,
    )
    from recipes.dreamer.analysis import plot_diagnostics

    path = logdir / "diagnostics.png"
    loop.optional(path, plot_diagnostics, [logdir], path, f"tempo on {cfg.env} (seed {cfg.seed})")
    return result
