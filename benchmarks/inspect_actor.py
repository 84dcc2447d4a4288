"""What a Dreamer-family run's actor does: saturation and deterministic vs sampled evaluation (issue 12).

For the latest checkpoint of a ``dreamerv2`` or ``tempo`` run directory with continuous actions, prints

* the pre-squash means of the actor over replayed posterior states (quantiles, and the share with |μ| > 5, where
  ``tanh′ < 2e-4``; a share near 1 is an actor whose mean gradient has died, e.g. a pendulum held at full torque),
* per-episode returns of the deterministic policy (the evaluation the run loop logs) and of the sampled policy
  (DreamerV3's published scores sample), on fresh episodes,
* the actions' mean and the share at the bounds (|a| > 0.9): 1.0 is a bang-bang policy,
* what the world model makes of the same replayed states: the reward head's R² against the real rewards and its
  mean prediction where the reward is 0 and where it is > 0 (reacher's `cpu`-preset head predicted 0.20 vs 0.27 for
  rewards 0 vs 2: R² ≈ 0, a policy trained on it is blind), and each observation dimension's std and largest |value|
  (reacher's unlimited shoulder angle reached ±92 rad, std 25, next to `to_target`'s 0.1).

Writes the numbers as JSON with ``--out``:

    python benchmarks/inspect_actor.py ~/runs/dmc-suite/VARIANT/pendulum_swingup-s0 --episodes 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.dreamer import dreamerv2  # noqa: E402
from recipes.dreamer.config import DreamerConfig, TempoConfig  # noqa: E402
from recipes.envs import make_env  # noqa: E402
from recipes.run import rundir  # noqa: E402


def load(logdir: Path) -> tuple[DreamerConfig, Any]:
    """The run's config and its agent at the latest checkpoint (eval mode)."""
    from recipes.dreamer.tempo import TempoAgent

    config = json.loads((logdir / "config.json").read_text())
    recipe = config.pop("recipe", "dreamerv2")
    cls, agent_cls = (TempoConfig, TempoAgent) if recipe == "tempo" else (DreamerConfig, dreamerv2.DreamerAgent)
    cfg = cls(**config)
    ckpt = rundir.load_checkpoint(logdir)
    if ckpt is None:
        raise SystemExit(f"{logdir}: no checkpoint")
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    env.close()
    if env.discrete:
        raise SystemExit(f"{logdir}: discrete actions; nothing to saturate")
    agent = agent_cls(cfg, env.obs_shape, env.action_dim, env.discrete)
    agent.load_state_dict(ckpt["agent"])
    agent.eval()
    return cfg, agent


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logdir", type=Path)
    ap.add_argument("--episodes", type=int, default=5, help="episodes per evaluation mode")
    ap.add_argument("--sequences", type=int, default=16, help="replayed sequences for the saturation statistics")
    ap.add_argument("--seed", type=int, default=777, help="evaluation episodes' seed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg, agent = load(args.logdir)
    out: dict[str, Any] = {"logdir": str(args.logdir)}

    replay = dreamerv2.make_replay(cfg, args.logdir, seed=0)
    batch = {k: torch.as_tensor(v) for k, v in replay.sample(args.sequences).items()}
    with torch.no_grad():
        feat = agent.wm.loss(batch).states["feat"]
        raw_mean = agent.ac.actor.net(feat).chunk(2, -1)[0].float().flatten()
        pred_reward = agent.wm.reward(feat).float().reshape(-1)
    reward = batch["reward"].float().reshape(-1)
    sse, sst = float(((pred_reward - reward) ** 2).sum()), float(((reward - reward.mean()) ** 2).sum())
    out["reward_r2"] = round(1.0 - sse / sst, 3) if sst > 0 else None
    for name, where in (("reward_pred_where_0", reward == 0), ("reward_pred_where_positive", reward > 0)):
        out[name] = round(float(pred_reward[where].mean()), 3) if where.any() else None
    obs = batch["obs"].float().reshape(-1, batch["obs"].shape[-1]) if batch["obs"].dim() == 3 else None
    if obs is not None:  # vector observations [B, T, D]
        out["obs_std"] = [round(float(x), 3) for x in obs.std(0)]
        out["obs_abs_max"] = [round(float(x), 2) for x in obs.abs().amax(0)]
    q = torch.quantile(raw_mean, torch.tensor([0.05, 0.5, 0.95])).tolist()
    out["pre_squash_mean_q05_q50_q95"] = [round(x, 2) for x in q]
    out["share_abs_mean_over_5"] = round(float((raw_mean.abs() > 5).float().mean()), 3)
    print(
        f"pre-squash means over replayed states: 5/50/95% {out['pre_squash_mean_q05_q50_q95']}, "
        f"share |mean| > 5: {out['share_abs_mean_over_5']}"
    )
    print(
        f"reward head on the same states: R² {out['reward_r2']}, mean prediction where r = 0: "
        f"{out['reward_pred_where_0']}, where r > 0: {out['reward_pred_where_positive']}"
    )
    if obs is not None:
        print(f"observations: std per dim {out['obs_std']}, largest |o| {out['obs_abs_max']}")

    env = make_env(cfg.env, seed=args.seed, **cfg.env_kwargs())
    torch.manual_seed(args.seed)
    for mode, explore in (("mode", False), ("sample", True)):
        returns, actions = [], []
        for _ in range(args.episodes):
            step, state, total = env.reset(), None, 0.0
            while not step["is_last"]:
                action, state = agent.act(step, state, explore=explore)
                actions.append(np.clip(action, -1, 1))
                step = env.step(action)
                total += float(step["reward"])
            returns.append(total)
        acts = np.stack(actions)  # [steps, A]
        out[mode] = {
            "returns": [round(r, 1) for r in returns],
            "mean": round(float(np.mean(returns)), 1),
            "action_mean": [round(float(x), 3) for x in acts.mean(0)],
            "share_at_bounds": round(float((np.abs(acts) > 0.9).mean()), 3),
        }
        print(
            f"{mode:6s}: returns {out[mode]['returns']} (mean {out[mode]['mean']}), action mean "
            f"{out[mode]['action_mean']}, share |a| > 0.9: {out[mode]['share_at_bounds']}"
        )
    env.close()
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
