"""Fill the shared cache of reference returns A*(ψ) before a comparison of AdMRL-family runs.

Every run on one env computes A*(ψ) for the same test tasks (``recipes.admrl.evaluate``), caching them in
``reference_dir``. Two runs started together would both compute every reference; this script computes them once,
split over ``--shards`` processes (one torch thread each), so ``benchmarks/admrl_compare.sh`` can start its runs with
a full cache.

    python benchmarks/admrl_references.py --env admrl:halfcheetah-vel --reference-dir ~/runs/cmp-admrl/reference \
        --shard 0 --shards 2 [--set KEY=VALUE ...]

Prints one line per reference (ψ, A*, seconds) and writes ``references-<shard>.json`` into the cache directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from recipes.admrl.evaluate import ood_grid, reference_return, task_grid
from recipes.envs import make_env
from recipes.registry import resolve
from recipes.run.config import parse_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="admrl:halfcheetah-vel")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--reference-dir", type=Path, required=True)
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if not 0 <= args.shard < args.shards:
        p.error(f"--shard: must be in [0, {args.shards}), got {args.shard}")
    torch.set_num_threads(1)
    overrides = {**parse_sets(args.set), "reference_dir": str(args.reference_dir)}
    cfg = resolve(args.env, args.preset, overrides, recipe="admrl")
    env = make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs())
    grid = task_grid(env)
    if cfg.eval_ood:
        grid = np.concatenate([grid, ood_grid(env)])
    rows = []
    for psi in grid[args.shard :: args.shards]:
        t0 = time.perf_counter()
        value = reference_return(cfg, env, psi, args.reference_dir)
        rows.append({"psi": psi.tolist(), "reference": value, "seconds": time.perf_counter() - t0})
        print(f"psi={np.round(psi, 3).tolist()} A*={value:.1f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    args.reference_dir.mkdir(parents=True, exist_ok=True)
    (args.reference_dir / f"references-{args.shard}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
