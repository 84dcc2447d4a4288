"""The M3PO learner on any torch device without an environment: synthetic HalfCheetah-sized transitions go through
``observe``; then model fits (plain and bi-level weighted), branched rollouts and SAC updates run, every tensor is
checked to live on the device, and the seconds per part are printed and written as JSON.

    python benchmarks/m3po_device_check.py --device cuda --out benchmarks/results/m3po_device.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.m3po.config import M3POConfig  # noqa: E402
from recipes.m3po.m3po import M3POLearner  # noqa: E402


def _steps(n: int, obs_dim: int, action_dim: int, episode: int, rng: np.random.Generator):
    for t in range(n):
        first = t % episode == 0
        yield {
            "obs": rng.standard_normal(obs_dim).astype(np.float32),
            "action": np.zeros(action_dim, np.float32) if first else rng.uniform(-1, 1, action_dim).astype(np.float32),
            "reward": np.float32(0 if first else rng.standard_normal()),
            "is_first": first,
            "is_last": False,
            "is_terminal": False,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--transitions", type=int, default=5_000)
    parser.add_argument("--preset", default="paper", choices=["paper", "cpu"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from recipes.registry import resolve

    obs_dim, action_dim, rng = 17, 6, np.random.default_rng(0)
    rows = {}
    for weighting in (False, True):
        cfg = resolve(
            "meta:halfcheetah-fwd-bwd",
            args.preset,
            {"device": args.device, "weighting": weighting, "model_max_epochs": 2},
            recipe="m3po",
        )
        assert isinstance(cfg, M3POConfig)
        learner = M3POLearner(cfg, obs_dim, action_dim, args.transitions + 10)
        for step in _steps(args.transitions, obs_dim, action_dim, 1000, rng):
            learner.observe(step)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        t0 = time.perf_counter()
        fit = learner.fit_model()
        sync()
        t1 = time.perf_counter()
        learner.rollouts(cfg.rollouts_per_step)
        sync()
        t2 = time.perf_counter()
        for _ in range(20):
            learner.sac.update(learner.sac_batch(10_000))
        sync()
        t3 = time.perf_counter()
        for module in (learner.sac, learner.model):
            assert all(p.device.type == torch.device(args.device).type for p in module.parameters())
        assert learner.d_model.data["obs"].device.type == torch.device(args.device).type
        action, _ = learner.act(next(_steps(1, obs_dim, action_dim, 1000, rng)), None, explore=True)
        assert action.shape == (action_dim,) and np.isfinite(action).all()
        rows["weighted" if weighting else "plain"] = {
            "fit_s": t1 - t0,
            "fit_epochs": fit["model/epochs"],
            "rollouts_s": t2 - t1,
            "sac_update_s": (t3 - t2) / 20,
            "holdout_mse": fit["model/holdout_mse"],
        }
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({device}), preset {args.preset}, {args.transitions} transitions")
    for name, r in rows.items():
        print(
            f"  {name:>8}: model fit {r['fit_s']:.2f} s ({r['fit_epochs']:.0f} epochs), "
            f"{cfg.rollouts_per_step} rollouts {r['rollouts_s'] * 1e3:.1f} ms, "
            f"SAC update {r['sac_update_s'] * 1e3:.1f} ms"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"device": device, "preset": args.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
