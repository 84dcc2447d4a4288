"""Stable-Baselines3's SAC on a gymnasium task, logged as one of our run directories (run in the peer's scratch venv
by ``benchmarks/peers/sb3_sac.sh``; it imports nothing of this repository).

Every setting mirrors a field of our ``sac`` recipe (``recipes/m3po/config.py``, SACConfig with ``history_len=0``):

    --batch        sac_batch (256)            --lr          sac_lr, for actor, critics and temperature (3e-4)
    --units        sac_units (256)            --layers      sac_layers (2): net_arch [units] * layers for pi and qf
    --tau          tau (0.005)                --gamma       gamma (0.99)
    --learning-starts  prefill (5000): uniform random actions first
    --train-every  train_every (1)            --updates     sac_updates per env step (1): gradient_steps =
                                                            train_every * updates every train_every steps
    --init-alpha   sac_init_alpha (1.0)       target entropy: -|A| (SB3's "auto", our target_entropy=None)
    --eval-every, --eval-episodes: eval_every (5000), eval_episodes (3): deterministic episodes on an env seeded
                   seed + 10000, as our run loop's evaluation env

Writes ``LOGDIR/config.json`` (``recipe: sb3-sac``, the settings, the SB3 version), ``LOGDIR/metrics.jsonl`` (one
``eval_return`` record per evaluation, with ``eval_return_se`` and ``wall_s``, as our runs log them) and
``LOGDIR/machine.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from peer_common import cpu_name, episode_returns
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback


class Evaluations(BaseCallback):
    """An evaluation every ``every`` env steps, appended to ``metrics.jsonl``."""

    def __init__(self, env: gym.Env, every: int, episodes: int, logdir: Path, t0: float) -> None:
        super().__init__()
        self.env, self.every, self.episodes, self.logdir, self.t0 = env, every, episodes, logdir, t0

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            returns = episode_returns(
                lambda obs: self.model.predict(obs, deterministic=True)[0], self.env, self.episodes
            )
            record = {
                "step": self.num_timesteps,
                "eval_return": float(np.mean(returns)),
                "eval_return_se": float(np.std(returns, ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0,
                "wall_s": time.perf_counter() - self.t0,
                "time": round(time.time(), 3),
            }
            with open(self.logdir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--logdir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--units", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tau", type=float, default=0.005)
    ap.add_argument("--gamma", type=float, default=0.99)
    ap.add_argument("--learning-starts", type=int, default=5_000)
    ap.add_argument("--train-every", type=int, default=1)
    ap.add_argument("--updates", type=int, default=1)
    ap.add_argument("--init-alpha", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=5_000)
    ap.add_argument("--eval-episodes", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.logdir.mkdir(parents=True, exist_ok=True)
    if (args.logdir / "metrics.jsonl").exists():
        raise SystemExit(f"{args.logdir} already holds a run (SB3 runs do not resume): use a new --logdir")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config = {"recipe": "sb3-sac", **settings, "env": f"gym:{args.env}", "sb3": stable_baselines3.__version__}
    (args.logdir / "config.json").write_text(json.dumps(config, indent=1))
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    (args.logdir / "machine.jsonl").write_text(json.dumps({**machine, "torch": torch.__version__}) + "\n")
    t0 = time.perf_counter()
    env = gym.make(args.env)
    eval_env = gym.make(args.env)
    eval_env.reset(seed=args.seed + 10_000)
    model = SAC(
        "MlpPolicy",
        env,
        learning_rate=args.lr,
        buffer_size=args.steps,
        learning_starts=args.learning_starts,
        batch_size=args.batch,
        tau=args.tau,
        gamma=args.gamma,
        train_freq=args.train_every,
        gradient_steps=args.train_every * args.updates,
        ent_coef=f"auto_{args.init_alpha}",
        target_update_interval=1,
        target_entropy="auto",
        policy_kwargs={"net_arch": [args.units] * args.layers},
        seed=args.seed,
        device="cpu",
    )
    callback = Evaluations(eval_env, args.eval_every, args.eval_episodes, args.logdir, t0)
    model.learn(total_timesteps=args.steps, callback=callback)


if __name__ == "__main__":
    main()
