"""One Dreamer-family variant from two source trees (before and after a change), timed alternately.

Each round starts one process per tree, A then B: it builds the variant from that tree (``tempo_overhead.build``:
same seed, the preset's synthetic batch), runs ``--warmup`` train steps (compiling; both trees share the inductor
cache, so identical graphs compile once) and times ``--steps`` train steps.  Reported: the median step time per
tree over all timed steps of all rounds and the ratio B / A.  Make the "before" tree with ``git worktree add``:

    git worktree add ../before HEAD~1
    python benchmarks/tree_ab.py --a ../before --b . --variant tempo+compile=true+meta_every=1 [--preset cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
import torch
variant, preset, env, warmup, steps, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
from tempo_overhead import build
agent, batch, _ = build(variant, preset, env)
for _ in range(int(warmup)):
    agent.train_step(batch)
times = []
for _ in range(int(steps)):
    t0 = time.perf_counter()
    agent.train_step(batch)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def run_tree(tree: Path, args: argparse.Namespace) -> list[float]:
    """Per-step seconds of ``args.steps`` train steps of ``args.variant`` built from ``tree``."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'benchmarks'}"}
    argv = [args.variant, args.preset, args.env, args.warmup, args.steps, args.threads]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, argv)], cwd=tree, env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the tree before the change")
    ap.add_argument("--b", type=Path, required=True, help="the tree after it")
    ap.add_argument("--variant", default="tempo+compile=true")
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for key in "ab":
            times[key] += run_tree(getattr(args, key).resolve(), args)
        print(f"round {r + 1}: A {statistics.median(times['a']):.4f} s, B {statistics.median(times['b']):.4f} s")
    a, b = statistics.median(times["a"]), statistics.median(times["b"])
    result = {"variant": args.variant, "preset": args.preset, "a_s": a, "b_s": b, "ratio_b_over_a": b / a}
    print(f"{args.variant} ({args.preset}): A {a:.4f} s, B {b:.4f} s per train step, B / A = {b / a:.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps({**result, "times": times}, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
