"""Recipe ``dreamerv2``: RSSM world model with uniform weights + Dreamer actor-critic, trained online.

Composes library parts: the replay on disk (``recipes.data.replay``), the world model
(``worldmodels.rssm``), the bi-level update with the ``Uniform`` strategy — plain maximum likelihood, the
baseline of every TEMPO comparison (``bilevel``) — and the actor-critic (``recipes.agents.dreamer_ac``),
driven by the shared run loop (``recipes.run.loop``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bilevel import BilevelUpdate, LevelOutputs, NonFiniteError, Strategy, Uniform
from recipes.agents.dreamer_ac import ActorCritic
from recipes.agents.optim import adamw
from recipes.data.replay import Replay
from recipes.dreamer import fast
from recipes.dreamer.config import DreamerConfig
from recipes.envs import Env, make_env
from recipes.run import loop, rundir
from recipes.run.config import config_kwargs
from recipes.run.precision import autocast_fn, resolve_precision
from worldmodels import ModelLoss, RSSMWorldModel

#: ``ActorCritic``'s arguments whose config fields have other names (its optimisers share the model's settings).
AC_FIELDS = {
    "layers": "ac_layers",
    "units": "ac_units",
    "eps": "model_eps",
    "clip": "model_clip",
    "weight_decay": "model_wd",
}


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
        self.wm = RSSMWorldModel(obs_shape, action_dim, **config_kwargs(cfg, RSSMWorldModel))
        self.ac = ActorCritic(
            self.wm.rssm,
            self.wm.reward,
            self.wm.discount,
            action_dim,
            discrete,
            **config_kwargs(
                cfg,
                ActorCritic,
                AC_FIELDS,
                actor_grad=None if cfg.actor_grad == "auto" else cfg.actor_grad,
                autocast_dtype=resolve_precision(cfg.ac_precision, cfg.device),
            ),
        )
        self.model_opt = adamw(self.wm.parameters(), cfg.model_lr, eps=cfg.model_eps, weight_decay=cfg.model_wd)
        self.update = BilevelUpdate(self.wm, self.model_opt, strategy or Uniform(), grad_clip=cfg.model_clip)
        self.backend: fast.Eager = self.make_backend()

    def make_backend(self) -> fast.Eager:
        """The backend that runs this reference fast (``recipes.dreamer.fast``; ``fast.Eager`` without
        ``compile``).  Called at the end of ``DreamerAgent.__init__``: an override may read ``cfg``, ``wm`` and
        ``ac`` and take bound methods, nothing a subclass builds later."""
        return fast.DreamerCompiled(self) if self.cfg.compile else fast.Eager(self)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser by checkpoint name (subclasses add theirs)."""
        return {"model_opt": self.model_opt, "actor_opt": self.ac.actor_opt, "critic_opt": self.ac.critic_opt}

    # -- learning --------------------------------------------------------------------------------------------
    def level_outputs(self, out: ModelLoss) -> LevelOutputs:
        """The lower level of one pass: the per-step ELBO terms ℓ[B, T], and the ``worldmodels.ModelLoss`` as
        ``aux``."""
        return LevelOutputs(loss=out.loss, aux=out)

    def world_model_forward(self, batch: dict[str, Tensor]) -> Callable[[Any], LevelOutputs]:
        """The ``forward`` closure the bi-level update calls with the model at θ (or a virtual θ')."""
        return lambda fn: self.level_outputs(fn(batch))

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, float], ModelLoss]:
        """The lower level (and, in subclasses, the upper level): metrics and the real pass's output."""
        forward = self.backend.forward(self.world_model_forward(batch), batch)  # compiled at θ with compile=true
        forward = autocast_fn(forward, *self.autocast)
        levels = forward(self.wm)  # the real forward at θ, reused by the update
        metrics = {f"model/{k}": v for k, v in self.update.step(forward, outputs=levels, meta=self.meta_due()).items()}
        return metrics, levels.aux

    def meta_due(self) -> bool:
        """Whether this update also trains the weighter (no weighter here)."""
        return True

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One world-model update (weighted by the strategy) and one actor-critic update in imagination.

        Raises:
            bilevel.NonFiniteError: (names prefixed ``model/`` or ``agent/``) a NaN or infinite loss or gradient.
                A non-finite world model (or weighter) skips the whole step: no optimiser steps, and the
                actor-critic, which would imagine from its NaN states, is not updated either.  A non-finite
                actor-critic skips the actor's and the critic's steps; the world model's step of this update stands.
        """
        try:
            metrics, out = self.world_model_step(batch)
        except NonFiniteError as err:
            raise err.prefixed("model/") from None
        for name, term in out.terms.items():
            metrics[f"model/{name}"] = float(term.detach().mean())
        if self.cfg.distractors and not self.cfg.pixels:
            metrics.update(self.obs_error_split(batch, out))
        terminal = batch["discount"] == 0 if "discount" in batch else None
        try:
            replay = None
            if self.ac.repval_scale > 0.0:
                replay = {"feat": out.states["feat"], "reward": batch["reward"], "is_first": batch["is_first"]}
                if "discount" in batch:
                    replay["discount"] = batch["discount"]
            agent = self.ac.update(out.states["post"], terminal, replay=replay)
        except NonFiniteError as err:
            raise err.prefixed("agent/") from None
        metrics.update({f"agent/{k}": v for k, v in agent.items()})
        return metrics

    @torch.no_grad()
    def obs_error_split(self, batch: dict[str, Tensor], out: ModelLoss) -> dict[str, float]:
        """The decoder's squared error (in its own, preprocessed space) on the env's own observation dimensions and
        on the ``distractors`` (recipes.envs.mismatch): where the world model spends its reconstruction."""
        error = (self.wm.decoder(out.states["feat"]) - self.wm.preprocess(batch["obs"])) ** 2
        per_dim = error.float().flatten(0, -2).mean(0)  # [O]
        real = per_dim.shape[0] - self.cfg.distractors
        return {
            "model/obs_mse_state": float(per_dim[:real].mean()),
            "model/obs_mse_distractors": float(per_dim[real:].mean()),
        }

    # -- acting ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self, step: dict[str, np.ndarray], state: dict[str, Tensor] | None, *, explore: bool
    ) -> tuple[np.ndarray, dict[str, Tensor]]:
        """Filter one observation into the latent state and pick the next action (numpy, shape [A])."""
        device = next(self.parameters()).device
        obs = torch.as_tensor(np.asarray(step["obs"]), device=device)[None]
        if state is None:
            state = self.wm.rssm.initial(1, device)
        prev_action = torch.as_tensor(np.asarray(step["action"], np.float32), device=device)[None]
        is_first = torch.as_tensor([bool(step["is_first"])], device=device)
        action, post = self.backend.act(obs, prev_action, is_first, state, explore)
        return action.cpu().numpy().astype(np.float32), post

    def act_tensors(
        self, obs: Tensor, prev_action: Tensor, is_first: Tensor, state: dict[str, Tensor], explore: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``act`` on tensors: ``obs`` [1, ...] raw, ``prev_action`` [1, A], ``is_first`` [1] bool, ``state`` the
        latent state [1, ·]; returns the action [A] and the posterior state.  Compiled with ``compile=true``
        (by ``fast.DreamerCompiled``, one graph per value of ``explore``)."""
        embed = self.wm.encoder(self.wm.preprocess(obs))
        post, _ = self.wm.rssm.obs_step(state, prev_action, embed, is_first)
        action = self.ac.act(self.wm.rssm.features(post), deterministic=not explore)[0]
        if explore and self.cfg.expl_noise > 0 and not self.discrete:
            action = (action + self.cfg.expl_noise * torch.randn_like(action)).clamp(-1, 1)
        return action, post


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
        """``train_steps`` updates; one with a non-finite loss or gradient is skipped (``self.skips``)."""
        metrics: dict[str, float] = {}
        done = 0
        for _ in range(self.cfg.train_steps):
            batch = _to_torch(self.replay.sample(self.cfg.batch_size), self.cfg.device)
            out = self.skips.run(self.agent.train_step, batch)
            if out is not None:
                metrics, done = out, done + 1
        return done, metrics

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
        sample_by=sample_by(cfg),
    )


def sample_by(cfg: DreamerConfig) -> Literal["step", "episode"]:
    """``cfg.replay_sample_by`` with ``auto`` resolved: by episode for a set of environments, else by step."""
    if cfg.replay_sample_by == "auto":
        return "episode" if cfg.num_tasks > 1 else "step"
    return cfg.replay_sample_by


#: the agent's state-dict prefixes that ``--init`` loads, per ``init_parts``
INIT_PARTS: dict[str, tuple[str, ...]] = {"wm": ("wm.",), "wm+ac": ("wm.", "ac.")}
#: counters that restart in a fine-tuning run (the slow-critic and meta cadences count from its start)
INIT_SKIP = ("ac.updates",)


def init_state(agent: DreamerAgent, cfg: DreamerConfig) -> dict[str, Tensor]:
    """The tensors of ``cfg.init``'s checkpoint that initialise ``agent`` (``cfg.init_parts``), checked to fit.

    Returns:
        state-dict entries (a subset of ``agent.state_dict()``'s keys, same shapes).

    Raises:
        ValueError: in one line, if ``cfg.init`` holds no readable checkpoint, or its agent lacks a tensor this
            agent has under the loaded prefixes, or a tensor's shape differs (other observation/action spaces or
            model sizes); naming the first offending tensor and both shapes.
    """
    assert cfg.init is not None
    source = Path(cfg.init)
    try:
        ckpt = rundir.load_checkpoint(source)
    except Exception as err:  # a damaged file: say which
        raise ValueError(f"--init {source}: cannot read its checkpoint ({type(err).__name__}: {err})") from None
    if ckpt is None or "agent" not in ckpt:
        raise ValueError(f"--init {source}: no Dreamer-family checkpoint there (expected checkpoints/latest.pt)")
    theirs: dict[str, Tensor] = ckpt["agent"]
    prefixes = INIT_PARTS[cfg.init_parts]
    out: dict[str, Tensor] = {}
    for key, mine in agent.state_dict().items():
        if not key.startswith(prefixes) or key in INIT_SKIP:
            continue
        if key not in theirs:
            raise ValueError(
                f"--init {source}: its checkpoint has no {key} (a different model: check twohot_bins, "
                "discount_head and the layer counts)"
            )
        if tuple(theirs[key].shape) != tuple(mine.shape):
            raise ValueError(
                f"--init {source}: {key} has shape {tuple(theirs[key].shape)} there and {tuple(mine.shape)} here "
                "(different observation/action spaces or model sizes)"
            )
        out[key] = theirs[key]
    return out


def load_init(agent: DreamerAgent, cfg: DreamerConfig) -> int:
    """Copy ``init_state`` into ``agent``; returns the number of tensors loaded."""
    state = init_state(agent, cfg)
    agent.load_state_dict(state, strict=False)
    return len(state)


def make_learner(
    cfg: DreamerConfig, env: Env, logdir: Path, agent_cls: Callable[..., DreamerAgent] = DreamerAgent
) -> DreamerLearner:
    """The learner of a ``dreamerv2`` run (``agent_cls``: the agent class, e.g. ``tempo``'s)."""
    agent = agent_cls(cfg, env.obs_shape, env.action_dim, env.discrete)
    if cfg.init is not None and not (logdir / "checkpoints" / "latest.pt").exists():
        load_init(agent, cfg)  # a fresh run; a resumed one loads its own checkpoint
    return DreamerLearner(cfg, agent.to(cfg.device), make_replay(cfg, logdir))


def check_init(cfg: DreamerConfig, logdir: Path, agent_cls: Callable[..., DreamerAgent] = DreamerAgent) -> None:
    """Before a fresh run writes anything: raise ``init_state``'s ``ValueError`` if ``cfg.init`` does not fit
    (builds the agent once on the CPU; nothing to do without ``init`` or when resuming)."""
    if cfg.init is None or (logdir / "checkpoints" / "latest.pt").exists():
        return
    with make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs()) as env:
        init_state(agent_cls(cfg, env.obs_shape, env.action_dim, env.discrete), cfg)


def train(
    cfg: DreamerConfig, logdir: Path, *, force: bool = False, progress: bool = True, recipe: str = "dreamerv2"
) -> dict[str, Any]:
    """Train (or resume) a ``dreamerv2`` run in ``logdir`` (``recipes.run.loop.train``)."""
    check_init(cfg, logdir)
    return loop.train(cfg, logdir, make_learner, recipe=recipe, force=force, progress=progress)
