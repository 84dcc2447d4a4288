"""Two Dreamer-family variants side by side in one process: world-model step, actor-critic update, train step.

Both agents are built from the same seed and fed the same synthetic batch (``benchmarks/tempo_overhead.py``'s
``build``); each round times one train step of A then one of B, split into the world-model step and the
actor-critic update; reported are medians and the ratios A / B after ``--warmup`` untimed steps each (the first
steps of a compiled variant include compiling; their time is printed):

    python benchmarks/dreamer_ab.py --a dreamerv2 --b dreamerv2+compile=true [--preset cpu] [--threads 1]

Writes ``benchmarks/results/dreamer_ab.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from tempo_overhead import build  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="dreamerv2")
    ap.add_argument("--b", default="dreamerv2+compile=true")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dreamer_ab.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    agents, warm = {}, {}
    for key, variant in (("a", args.a), ("b", args.b)):
        agent, batch, _ = build(variant, args.preset, args.env)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            agent.train_step(batch)
        agents[key], warm[key] = (agent, batch), time.perf_counter() - t0
    times: dict[str, list[float]] = {f"{k}_{p}": [] for k in "ab" for p in ("wm", "ac")}
    for _ in range(args.rounds):
        for key, (agent, batch) in agents.items():
            t0 = time.perf_counter()
            _, out = agent.world_model_step(batch)
            t1 = time.perf_counter()
            terminal = batch["discount"] == 0 if "discount" in batch else None
            agent.ac.update(out.states["post"], terminal)
            times[f"{key}_wm"].append(t1 - t0)
            times[f"{key}_ac"].append(time.perf_counter() - t1)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {
        "world-model step": (med["a_wm"], med["b_wm"]),
        "actor-critic update": (med["a_ac"], med["b_ac"]),
        "train step": (med["a_wm"] + med["a_ac"], med["b_wm"] + med["b_ac"]),
    }
    print(f"A = {args.a}   B = {args.b}   preset {args.preset}, {args.threads} thread(s), {args.rounds} rounds")
    print(f"warm-up ({args.warmup} steps): A {warm['a']:.1f} s, B {warm['b']:.1f} s")
    print(f"{'':<22} {'A ms':>9} {'B ms':>9} {'A / B':>7}")
    for name, (a, b) in rows.items():
        print(f"{name:<22} {a * 1e3:9.1f} {b * 1e3:9.1f} {a / b:7.2f}")
    result = {
        "a": args.a,
        "b": args.b,
        "preset": args.preset,
        "threads": args.threads,
        "warmup_s": warm,
        "median_s": {name: {"a": a, "b": b, "ratio": a / b} for name, (a, b) in rows.items()},
        "samples": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
