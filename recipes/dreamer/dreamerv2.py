"""Recipe ``dreamerv2``: RSSM world model with uniform weights + Dreamer actor-critic, trained online.

Composes library parts: the replay on disk (:mod:`recipes.data.replay`), the world model
(:mod:`worldmodels.rssm`), the bi-level update with the ``Uniform`` strategy — plain maximum likelihood, the
baseline of every TEMPO comparison (:mod:`bilevel`) — and the actor-critic (:mod:`recipes.agents.dreamer_ac`),
driven by the shared run loop (:mod:`recipes.run.loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bilevel import BilevelUpdate, LevelOutputs, Strategy, Uniform
from recipes.agents.compile import MaybeCompiled
from recipes.agents.dreamer_ac import ActorCritic
from recipes.data.replay import Replay
from recipes.dreamer.config import DreamerConfig
from recipes.envs import Env
from recipes.run import loop
from recipes.run.precision import autocast_fn, resolve_precision
from worldmodels import ModelLoss, RSSMWorldModel


class DreamerAgent(nn.Module):
    """World model + actor-critic + their optimisers; ``train_step(batch)`` and ``act(step, state)``."""

    def __init__(
        self,
        cfg: DreamerConfig,
        obs_shape: tuple[int, ...],
        action_dim: int,
        discrete: bool,
        strategy: Strategy | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.discrete, self.action_dim = cfg, discrete, action_dim
        # (device, dtype) of the world-model forward (cfg.model_precision); dtype None = plain fp32
        self.autocast = (cfg.device, resolve_precision(cfg.model_precision, cfg.device))
        self.wm = RSSMWorldModel(
            obs_shape,
            action_dim,
            deter=cfg.deter,
            stoch=cfg.stoch,
            classes=cfg.classes,
            hidden=cfg.hidden,
            depth=cfg.depth,
            mlp_layers=cfg.mlp_layers,
            mlp_units=cfg.mlp_units,
            discount_head=cfg.discount_head,
            kl_balance=cfg.kl_balance,
            kl_free=cfg.kl_free,
            kl_scale=cfg.kl_scale,
            discount_scale=cfg.discount_scale,
            unimix=cfg.unimix,
            twohot_bins=cfg.twohot_bins,
            symlog_obs=cfg.symlog_obs,
        )
        self.ac = ActorCritic(
            self.wm.rssm,
            self.wm.reward,
            self.wm.discount,
            action_dim,
            discrete,
            horizon=cfg.horizon,
            gamma=cfg.gamma,
            lam=cfg.lam,
            entropy=cfg.entropy,
            actor_grad=None if cfg.actor_grad == "auto" else cfg.actor_grad,
            slow_every=cfg.slow_every,
            imag_starts=cfg.imag_starts,
            layers=cfg.ac_layers,
            units=cfg.ac_units,
            actor_lr=cfg.actor_lr,
            critic_lr=cfg.critic_lr,
            eps=cfg.model_eps,
            clip=cfg.model_clip,
            weight_decay=cfg.model_wd,
            compile=cfg.compile,
            autocast_dtype=resolve_precision(cfg.ac_precision, cfg.device),
            return_norm=cfg.return_norm,
            unimix=cfg.unimix,
            twohot_bins=cfg.twohot_bins,
            return_norm_decay=cfg.return_norm_decay,
            return_norm_limit=cfg.return_norm_limit,
        )
        # the real pass of the ELBO, compiled (first-order only; used by this class's forward closure, which
        # subclasses that differentiate the pass twice replace)
        self._compiled_loss = MaybeCompiled(self.wm.loss, "the world-model loss") if cfg.compile else None
        self.model_opt = torch.optim.AdamW(
            self.wm.parameters(), cfg.model_lr, eps=cfg.model_eps, weight_decay=cfg.model_wd
        )
        self.update = BilevelUpdate(self.wm, self.model_opt, strategy or Uniform(), grad_clip=cfg.model_clip)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser by checkpoint name (subclasses add theirs)."""
        return {"model_opt": self.model_opt, "actor_opt": self.ac.actor_opt, "critic_opt": self.ac.critic_opt}

    # -- learning --------------------------------------------------------------------------------------------
    def world_model_forward(self, batch: dict[str, Tensor]) -> Callable[[Any], LevelOutputs]:
        """The ``forward`` closure the bi-level update calls with the model at θ (or a virtual θ'): the per-step
        ELBO terms ℓ[B, T], and the :class:`worldmodels.ModelLoss` as ``aux``."""

        def forward(fn: Any) -> LevelOutputs:
            out = self._compiled_loss(batch) if fn is self.wm and self._compiled_loss is not None else fn(batch)
            return LevelOutputs(loss=out.loss, aux=out)

        return forward

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, float], ModelLoss]:
        """The lower level (and, in subclasses, the upper level): metrics and the real pass's output."""
        forward = autocast_fn(self.world_model_forward(batch), *self.autocast)
        levels = forward(self.wm)  # the real forward at θ, reused by the update
        metrics = {f"model/{k}": v for k, v in self.update.step(forward, outputs=levels, meta=self.meta_due()).items()}
        return metrics, levels.aux

    def meta_due(self) -> bool:
        """Whether this update also trains the weighter (no weighter here)."""
        return True

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model update (weighted by the strategy) and one actor-critic update in imagination."""
        metrics, out = self.world_model_step(batch)
        for name, term in out.terms.items():
            metrics[f"model/{name}"] = float(term.detach().mean())
        terminal = batch["discount"] == 0 if "discount" in batch else None
        metrics.update({f"agent/{k}": v for k, v in self.ac.update(out.states["post"], terminal).items()})
        return metrics

    # -- acting ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self, step: dict[str, np.ndarray], state: dict[str, Tensor] | None, *, explore: bool
    ) -> tuple[np.ndarray, dict[str, Tensor]]:
        """Filter one observation into the latent state and pick the next action (numpy, shape [A])."""
        device = next(self.parameters()).device
        obs = self.wm.preprocess(torch.as_tensor(np.asarray(step["obs"]), device=device)[None])
        embed = self.wm.encoder(obs)
        if state is None:
            state = self.wm.rssm.initial(1, device)
        prev_action = torch.as_tensor(np.asarray(step["action"], np.float32), device=device)[None]
        is_first = torch.as_tensor([bool(step["is_first"])], device=device)
        post, _ = self.wm.rssm.obs_step(state, prev_action, embed, is_first)
        action = self.ac.act(self.wm.rssm.features(post), deterministic=not explore)[0]
        if explore and self.cfg.expl_noise > 0 and not self.discrete:
            action = (action + self.cfg.expl_noise * torch.randn_like(action)).clamp(-1, 1)
        return action.cpu().numpy().astype(np.float32), post


def _to_torch(batch: dict[str, np.ndarray], device: str) -> dict[str, Tensor]:
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


class DreamerLearner(loop.Learner):
    """A Dreamer-family agent with its on-disk replay, as the run loop drives it: ``train_steps`` updates per
    training call, each on a fresh batch of ``batch_size`` sequences of ``seq_len`` steps."""

    def __init__(self, cfg: DreamerConfig, agent: DreamerAgent, replay: Replay) -> None:
        self.cfg, self.agent, self.replay = cfg, agent, replay

    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        return self.agent.act(step, state, explore=explore)

    def observe(self, step: dict[str, Any]) -> None:
        self.replay.add(step)

    def ready(self) -> bool:
        return self.replay.num_episodes > 0

    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        metrics: dict[str, float] = {}
        for _ in range(self.cfg.train_steps):
            metrics = self.agent.train_step(_to_torch(self.replay.sample(self.cfg.batch_size), self.cfg.device))
        return self.cfg.train_steps, metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent.state_dict(),
            **{name: opt.state_dict() for name, opt in self.agent.optimizers().items()},
            "replay": self.replay.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        for name, opt in self.agent.optimizers().items():
            opt.load_state_dict(state[name])
        self.replay.load_state_dict(state["replay"])

    def flush(self) -> None:
        self.replay.flush()


def make_replay(cfg: DreamerConfig, logdir: Path, seed: int | None = None) -> Replay:
    """The run's on-disk replay in ``logdir/replay``."""
    return Replay(
        logdir / "replay",
        seq_len=cfg.seq_len,
        capacity_steps=cfg.replay_capacity,
        seed=cfg.seed if seed is None else seed,
        boundary=cfg.replay_boundary,
    )


def make_learner(
    cfg: DreamerConfig, env: Env, logdir: Path, agent_cls: Callable[..., DreamerAgent] = DreamerAgent
) -> DreamerLearner:
    """The learner of a ``dreamerv2`` run (``agent_cls``: the agent class, e.g. ``tempo``'s)."""
    agent = agent_cls(cfg, env.obs_shape, env.action_dim, env.discrete).to(cfg.device)
    return DreamerLearner(cfg, agent, make_replay(cfg, logdir))


def train(
    cfg: DreamerConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "dreamerv2"
) -> dict[str, Any]:
    """Train (or resume) a ``dreamerv2`` run in ``logdir`` (:func:`recipes.run.loop.train`)."""
    return loop.train(cfg, logdir, make_learner, recipe=recipe, force=force, progress=progress)
