"""Recipe ``dreamerv2``: RSSM world model with uniform weights + Dreamer actor-critic, trained online.

Reads like a training script top to bottom (:func:`train`), composing library parts: the environment
(:mod:`recipes.envs`), the replay on disk (:mod:`recipes.replay`), the world model (:mod:`worldmodels.rssm`), the
bi-level update with the ``Uniform`` strategy — plain maximum likelihood, the baseline of every TEMPO comparison
(:mod:`bilevel`) — and the actor-critic (:mod:`recipes.actor_critic`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bilevel import BilevelUpdate, LevelOutputs, Strategy, Uniform
from recipes import rundir
from recipes.actor_critic import ActorCritic
from recipes.config import DreamerConfig
from worldmodels import ModelLoss, RSSMWorldModel


class DreamerAgent(nn.Module):
    """World model + actor-critic + their optimisers; ``train_step(batch)`` and ``act(step, state)``."""

    def __init__(self, cfg: DreamerConfig, obs_shape: tuple[int, ...], action_dim: int, discrete: bool,
                 strategy: Strategy | None = None) -> None:
        super().__init__()
        self.cfg, self.discrete, self.action_dim = cfg, discrete, action_dim
        self.wm = RSSMWorldModel(
            obs_shape, action_dim, deter=cfg.deter, stoch=cfg.stoch, classes=cfg.classes, hidden=cfg.hidden,
            depth=cfg.depth, mlp_layers=cfg.mlp_layers, mlp_units=cfg.mlp_units, discount_head=cfg.discount_head,
            kl_balance=cfg.kl_balance, kl_free=cfg.kl_free, kl_scale=cfg.kl_scale, discount_scale=cfg.discount_scale)
        self.ac = ActorCritic(
            self.wm.rssm, self.wm.reward, self.wm.discount, action_dim, discrete, horizon=cfg.horizon,
            gamma=cfg.gamma, lam=cfg.lam, entropy=cfg.entropy,
            actor_grad=None if cfg.actor_grad == "auto" else cfg.actor_grad, slow_every=cfg.slow_every,
            imag_starts=cfg.imag_starts,
            layers=cfg.ac_layers, units=cfg.ac_units, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
            eps=cfg.model_eps, clip=cfg.model_clip, weight_decay=cfg.model_wd)
        self.model_opt = torch.optim.AdamW(self.wm.parameters(), cfg.model_lr, eps=cfg.model_eps,
                                           weight_decay=cfg.model_wd)
        self.update = BilevelUpdate(self.wm, self.model_opt, strategy or Uniform(), grad_clip=cfg.model_clip)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser by checkpoint name (subclasses add theirs)."""
        return {"model_opt": self.model_opt, "actor_opt": self.ac.actor_opt, "critic_opt": self.ac.critic_opt}

    # -- learning --------------------------------------------------------------------------------------------
    def world_model_forward(self, batch: dict[str, Tensor]) -> tuple[Any, dict[str, ModelLoss]]:
        """The ``forward`` closure the bi-level update calls, and a box that receives the real pass's output."""
        box: dict[str, ModelLoss] = {}

        def forward(fn: Any) -> LevelOutputs:
            out = fn(batch)
            box.setdefault("out", out)  # the first call is the real forward at θ
            return LevelOutputs(loss=out.loss)

        return forward, box

    def world_model_step(self, batch: dict[str, Tensor]) -> tuple[dict[str, float], ModelLoss]:
        """The lower level (and, in subclasses, the upper level): metrics and the real pass's output."""
        forward, box = self.world_model_forward(batch)
        metrics = {f"model/{k}": v for k, v in self.update.step(forward).items()}
        return metrics, box["out"]

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
    def act(self, step: dict[str, np.ndarray], state: dict[str, Tensor] | None, *, explore: bool
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


def evaluate(agent: DreamerAgent, env: Any, episodes: int, *, record: bool = False) -> tuple[float, list]:
    """Mean return of ``episodes`` greedy episodes; frames of the first one when ``record``."""
    returns, frames = [], []
    for i in range(episodes):
        step, state, total = env.reset(), None, 0.0
        while True:
            if record and i == 0:
                frames.append(env.render())
            action, state = agent.act(step, state, explore=False)
            step = env.step(action)
            total += float(step["reward"])
            if step["is_last"]:
                break
        returns.append(total)
    return float(np.mean(returns)), frames


def train(cfg: DreamerConfig, logdir: Path, *, force: bool = False, progress: bool = True,
          strategy: Strategy | None = None, recipe: str = "dreamerv2",
          agent_factory: Callable[..., DreamerAgent] | None = None) -> dict[str, Any]:
    """Train (or resume) one run in ``logdir`` until ``cfg.steps`` environment steps; returns a summary.

    ``agent_factory(cfg, obs_shape, action_dim, discrete)`` builds the agent (default: :class:`DreamerAgent` with
    ``strategy``); the ``tempo`` recipe passes its own.
    """
    from recipes.envs import make_env
    from recipes.replay import Replay

    torch.set_num_threads(cfg.threads)
    resuming = rundir.prepare(logdir, {"recipe": recipe, **cfg.model_dump()}, force=force)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    env_kw = {"pixels": cfg.pixels, "size": cfg.image_size, "action_repeat": cfg.action_repeat,
              "time_limit": cfg.time_limit}
    env = make_env(cfg.env, seed=cfg.seed, **env_kw)
    eval_env = make_env(cfg.env, seed=cfg.seed + 10_000, **env_kw)
    if agent_factory is None:
        agent = DreamerAgent(cfg, env.obs_shape, env.action_dim, env.discrete, strategy)
    else:
        agent = agent_factory(cfg, env.obs_shape, env.action_dim, env.discrete)
    agent = agent.to(cfg.device)
    replay = Replay(logdir / "replay", seq_len=cfg.seq_len, capacity_steps=cfg.replay_capacity, seed=cfg.seed,
                    boundary=cfg.replay_boundary)
    logger = rundir.Logger(logdir)
    counters = {"env_steps": 0, "updates": 0, "episodes": 0, "last_train": 0, "last_eval": 0, "last_log": 0,
                "last_ckpt": 0}
    last_eval_return = float("nan")
    if resuming and (ckpt := rundir.load_checkpoint(logdir)) is not None:
        agent.load_state_dict(ckpt["agent"])
        for name, opt in agent.optimizers().items():
            opt.load_state_dict(ckpt[name])
        counters.update(ckpt["counters"])
        replay.load_state_dict(ckpt["replay"])
        rundir.set_rng_state(ckpt["rng"])
        last_eval_return = ckpt.get("last_eval_return", last_eval_return)

    def checkpoint() -> None:
        replay.flush()
        rundir.save_checkpoint(logdir, {
            "agent": agent.state_dict(), **{name: opt.state_dict() for name, opt in agent.optimizers().items()},
            "counters": counters, "replay": replay.state_dict(), "rng": rundir.rng_state(),
            "last_eval_return": last_eval_return})
        counters["last_ckpt"] = counters["env_steps"]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=counters["env_steps"], unit="env step", dynamic_ncols=True)
    rng = np.random.default_rng(cfg.seed + counters["env_steps"])
    step, state, episode_return = env.reset(), None, 0.0
    t_start, updates_start, metrics = time.perf_counter(), counters["updates"], {}
    while counters["env_steps"] < cfg.steps:
        replay.add(step)
        if counters["env_steps"] < cfg.prefill:
            action, state = _random_action(rng, env.action_dim, env.discrete), None
        else:
            action, state = agent.act(step, state, explore=True)
        step = env.step(action)
        episode_return += float(step["reward"])
        counters["env_steps"] += cfg.action_repeat
        if bar is not None:
            bar.update(cfg.action_repeat)
        if step["is_last"]:
            replay.add(step)
            counters["episodes"] += 1
            logger.log(counters["env_steps"], train_return=episode_return, episodes=counters["episodes"])
            step, state, episode_return = env.reset(), None, 0.0
        ready = counters["env_steps"] >= cfg.prefill and replay.num_episodes > 0
        if ready and counters["env_steps"] - counters["last_train"] >= cfg.train_every:
            counters["last_train"] = counters["env_steps"]
            for _ in range(cfg.train_steps):
                metrics = agent.train_step(_to_torch(replay.sample(cfg.batch_size), cfg.device))
                counters["updates"] += 1
        if counters["env_steps"] - counters["last_log"] >= cfg.log_every and metrics:
            counters["last_log"] = counters["env_steps"]
            elapsed = time.perf_counter() - t_start
            logger.log(counters["env_steps"], **metrics,
                       updates_per_s=(counters["updates"] - updates_start) / max(elapsed, 1e-9))
        if counters["env_steps"] - counters["last_eval"] >= cfg.eval_every:
            counters["last_eval"] = counters["env_steps"]
            last_eval_return, _ = evaluate(agent, eval_env, cfg.eval_episodes)
            logger.log(counters["env_steps"], eval_return=last_eval_return)
        if counters["env_steps"] - counters["last_ckpt"] >= cfg.checkpoint_every:
            checkpoint()
        if bar is not None:
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(upd_s=f"{(counters['updates'] - updates_start) / max(elapsed, 1e-9):.1f}",
                            eval=f"{last_eval_return:.0f}")
    if counters["last_eval"] != counters["env_steps"]:
        last_eval_return, _ = evaluate(agent, eval_env, cfg.eval_episodes)
        counters["last_eval"] = counters["env_steps"]
        logger.log(counters["env_steps"], eval_return=last_eval_return)
    checkpoint()
    if bar is not None:
        bar.close()
    if cfg.video:
        _, frames = evaluate(agent, eval_env, 1, record=True)
        rundir.write_video(logdir / "eval_episode.gif", frames[::2])
    rundir.plot_curve(logdir, f"{recipe} on {cfg.env} (seed {cfg.seed})")
    logger.close()
    env.close()
    eval_env.close()
    return {"env_steps": counters["env_steps"], "updates": counters["updates"], "eval_return": last_eval_return}


def _random_action(rng: np.random.Generator, action_dim: int, discrete: bool) -> np.ndarray:
    if discrete:
        return np.eye(action_dim, dtype=np.float32)[rng.integers(action_dim)]
    return rng.uniform(-1, 1, action_dim).astype(np.float32)
