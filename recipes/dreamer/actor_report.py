"""What a Dreamer-family run's actor does: saturation, and deterministic against sampled evaluation.

For the latest checkpoint of a ``dreamerv2`` or ``tempo`` run with continuous actions (``reweigh inspect-actor``):

* the actor's pre-squash means over replayed posterior states (quantiles, and the share with |μ| > 5, where
  tanh′ < 2e-4: a share near 1 is an actor whose mean gradient has died, e.g. a pendulum held at full torque);
* what the world model makes of the same states: the reward head's R² against the real rewards, its mean prediction
  where the reward is 0 and where it is > 0, and each vector observation dimension's std and largest |value|;
* per-episode returns of the deterministic policy (the evaluation the run loop logs) and of the sampled one
  (DreamerV3's published scores sample), on fresh episodes, with the actions' mean and share at the bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.dreamer import dreamerv2
from recipes.dreamer.config import DreamerConfig, TempoConfig
from recipes.envs import make_env
from recipes.run import loop, rundir


def load_agent(logdir: Path) -> tuple[DreamerConfig, dreamerv2.DreamerAgent]:
    """A ``dreamerv2`` or ``tempo`` run's config and agent at its latest checkpoint, in eval mode.

    Raises:
        ValueError: no config or checkpoint in ``logdir``, or an environment with discrete actions.
    """
    from recipes.dreamer.tempo import TempoAgent

    config = rundir.read_config(logdir)
    recipe = config.pop("recipe", "dreamerv2")
    cls, agent_cls = (TempoConfig, TempoAgent) if recipe == "tempo" else (DreamerConfig, dreamerv2.DreamerAgent)
    cfg = cls(**config)
    ckpt = rundir.load_checkpoint(logdir)
    if ckpt is None:
        raise ValueError(f"logdir: no checkpoint in {logdir / 'checkpoints'}")
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    env.close()
    if env.discrete:
        raise ValueError(f"logdir: {logdir} acts in a discrete action space: nothing to saturate")
    agent = agent_cls(cfg, env.obs_shape, env.action_dim, env.discrete)
    agent.load_state_dict(ckpt["agent"])
    agent.eval()
    return cfg, agent


def replay_statistics(agent: dreamerv2.DreamerAgent, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The actor's pre-squash means and the reward head on the posterior states of a replayed ``batch``."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        feat = agent.wm.loss(batch).states["feat"]
        raw_mean = agent.ac.actor.net(feat).chunk(2, -1)[0].float().flatten()
        pred_reward = agent.wm.reward(feat).float().reshape(-1)
    reward = batch["reward"].float().reshape(-1)
    sse, sst = float(((pred_reward - reward) ** 2).sum()), float(((reward - reward.mean()) ** 2).sum())
    out["reward_r2"] = round(1.0 - sse / sst, 3) if sst > 0 else None
    for name, where in (("reward_pred_where_0", reward == 0), ("reward_pred_where_positive", reward > 0)):
        out[name] = round(float(pred_reward[where].mean()), 3) if where.any() else None
    if batch["obs"].dim() == 3:  # vector observations [B, T, D]
        obs = batch["obs"].float().reshape(-1, batch["obs"].shape[-1])
        out["obs_std"] = [round(float(x), 3) for x in obs.std(0)]
        out["obs_abs_max"] = [round(float(x), 2) for x in obs.abs().amax(0)]
    q = torch.quantile(raw_mean, torch.tensor([0.05, 0.5, 0.95])).tolist()
    out["pre_squash_mean_q05_q50_q95"] = [round(x, 2) for x in q]
    out["share_abs_mean_over_5"] = round(float((raw_mean.abs() > 5).float().mean()), 3)
    return out


def evaluate_modes(agent: dreamerv2.DreamerAgent, cfg: DreamerConfig, episodes: int, seed: int) -> dict[str, Any]:
    """Returns and actions of the deterministic (``mode``) and the sampled (``sample``) policy over ``episodes``
    fresh episodes each, seeded by ``seed``."""
    out: dict[str, Any] = {}
    env = make_env(cfg.env, seed=seed, **cfg.env_kwargs())
    torch.manual_seed(seed)
    try:
        for mode, explore in (("mode", False), ("sample", True)):
            actions: list[np.ndarray] = []

            def act(step: dict[str, Any], state: Any, explore: bool = explore, actions: list = actions) -> Any:
                action, state = agent.act(step, state, explore=explore)
                actions.append(np.clip(action, -1, 1))
                return action, state

            returns, _ = loop.run_episodes(env, act, episodes)
            acts = np.stack(actions)  # [steps, A]
            out[mode] = {
                "returns": [round(r, 1) for r in returns],
                "mean": round(float(np.mean(returns)), 1),
                "action_mean": [round(float(x), 3) for x in acts.mean(0)],
                "share_at_bounds": round(float((np.abs(acts) > 0.9).mean()), 3),
            }
    finally:
        env.close()
    return out


def inspect_actor(logdir: Path, *, episodes: int = 5, sequences: int = 16, seed: int = 777) -> dict[str, Any]:
    """``replay_statistics`` over ``sequences`` replayed sequences and ``evaluate_modes`` over ``episodes`` episodes
    per mode for the run in ``logdir``; ``seed`` seeds the latent samples and the episodes.

    Raises:
        ValueError: see ``load_agent``.
    """
    cfg, agent = load_agent(logdir)
    replay = dreamerv2.make_replay(cfg, logdir, seed=0)
    batch = {k: torch.as_tensor(v) for k, v in replay.sample(sequences).items()}
    torch.manual_seed(seed)  # the posterior's latent samples: the same numbers for the same seed
    return {"logdir": str(logdir), **replay_statistics(agent, batch), **evaluate_modes(agent, cfg, episodes, seed)}


def actor_lines(out: dict[str, Any]) -> list[str]:
    """``inspect_actor``'s result as the lines ``reweigh inspect-actor`` prints."""
    lines = [
        f"pre-squash means over replayed states: 5/50/95% {out['pre_squash_mean_q05_q50_q95']}, "
        f"share |mean| > 5: {out['share_abs_mean_over_5']}",
        f"reward head on the same states: R² {out['reward_r2']}, mean prediction where r = 0: "
        f"{out['reward_pred_where_0']}, where r > 0: {out['reward_pred_where_positive']}",
    ]
    if "obs_std" in out:
        lines.append(f"observations: std per dim {out['obs_std']}, largest |o| {out['obs_abs_max']}")
    for mode in ("mode", "sample"):
        m = out[mode]
        lines.append(
            f"{mode:6s}: returns {m['returns']} (mean {m['mean']}), action mean {m['action_mean']}, "
            f"share |a| > 0.9: {m['share_at_bounds']}"
        )
    return lines
