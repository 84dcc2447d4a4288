"""Throughput of the Dreamer-family recipes, the two numbers peers publish, measured separately:

* **env steps/s** while acting: environment step + the agent's filtering step and action (no training), in
  environment steps (agent steps × action repeat);
* **gradient updates/s**: ``train_step`` on a replay-shaped batch (world model + actor-critic; for ``tempo`` the
  amortised meta-weighter update included).

Usage: ``python benchmarks/dreamer_throughput.py [--recipe dreamerv2] [--env dmc:cartpole_swingup]
[--set pixels=true ...] [--threads 1] [--out benchmarks/results/throughput.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.registry import resolve  # noqa: E402
from recipes.run.config import parse_value  # noqa: E402
from recipes.run.heap import configure_heap  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="dreamerv2", choices=["dreamerv2", "tempo"])
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--act-steps", type=int, default=1000, help="agent steps to time while acting")
    ap.add_argument("--updates", type=int, default=20, help="train steps to time (after 3 warm-up steps)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from recipes.dreamer.dreamerv2 import DreamerAgent
    from recipes.dreamer.tempo import TempoAgent
    from recipes.envs import make_env

    torch.set_num_threads(args.threads)
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = resolve(args.env, args.preset, overrides, recipe=args.recipe)
    configure_heap(cfg.heap)
    env = make_env(
        cfg.env,
        seed=0,
        pixels=cfg.pixels,
        size=cfg.image_size,
        action_repeat=cfg.action_repeat,
        time_limit=cfg.time_limit,
    )
    torch.manual_seed(0)
    agent = (TempoAgent if args.recipe == "tempo" else DreamerAgent)(cfg, env.obs_shape, env.action_dim, env.discrete)
    # acting: env step + filtering + policy
    step, state = env.reset(), None
    obs_seq, act_seq, rew_seq, first_seq = [], [], [], []
    t0 = time.perf_counter()
    for _ in range(args.act_steps):
        action, state = agent.act(step, state, explore=True)
        obs_seq.append(np.asarray(step["obs"]))
        act_seq.append(action)
        rew_seq.append(float(step["reward"]))
        first_seq.append(bool(step["is_first"]))
        step = env.step(action)
        if step["is_last"]:
            step, state = env.reset(), None
    act_s = time.perf_counter() - t0
    env_steps_per_s = args.act_steps * cfg.action_repeat / act_s
    # training: batches cut from the collected steps
    b, t = cfg.batch_size, cfg.seq_len
    rng = np.random.default_rng(0)
    obs, act, rew, first = (np.stack(x) for x in (obs_seq, act_seq, rew_seq, first_seq))

    def batch() -> dict[str, torch.Tensor]:
        starts = rng.integers(0, len(obs) - t, b)
        idx = starts[:, None] + np.arange(t)[None]
        return {
            "obs": torch.as_tensor(obs[idx]),
            "action": torch.as_tensor(act[idx]),
            "reward": torch.as_tensor(rew[idx], dtype=torch.float32),
            "is_first": torch.as_tensor(first[idx]),
            "discount": torch.ones(b, t),
        }

    for _ in range(3):
        agent.train_step(batch())
    times = []
    for _ in range(args.updates):
        data = batch()
        t0 = time.perf_counter()
        agent.train_step(data)
        times.append(time.perf_counter() - t0)
    per_update = statistics.mean(times)
    result = {
        "recipe": args.recipe,
        "env": cfg.env,
        "preset": args.preset,
        "pixels": cfg.pixels,
        "image_size": cfg.image_size if cfg.pixels else None,
        "threads": args.threads,
        "env_steps_per_s_acting": env_steps_per_s,
        "seconds_per_update": per_update,
        "updates_per_s": 1.0 / per_update,
        "train_every_env_steps": cfg.train_every,
        "predicted_hours_per_100k": (100_000 / env_steps_per_s + (100_000 - cfg.prefill) / cfg.train_every * per_update)
        / 3600,
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"throughput_{args.recipe}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
