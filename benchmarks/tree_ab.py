"""One Dreamer-family variant from two source trees (before and after a change), timed alternately.

One process per tree builds the variant from that tree (``tempo_overhead.build``: same seed, the preset's
synthetic batch) and runs ``--warmup`` train steps (compiling; the trees share the inductor cache, so identical
graphs compile once).  Then the two processes take turns, ``--rounds`` times: A times ``--steps`` train steps, then
B does (B first in every other round, so that going first or second favours neither), so that a change in the
machine's load between rounds hits both alike.  Reported: the median step time per
tree over all timed steps and the ratio B / A, and each round's medians.  Make the "before" tree with
``git worktree add``:

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
variant, preset, env, warmup, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
from tempo_overhead import build
agent, batch, _ = build(variant, preset, env)
for _ in range(int(warmup)):
    agent.train_step(batch)
print("ready", flush=True)
for line in sys.stdin:
    times = []
    for _ in range(int(line)):
        t0 = time.perf_counter()
        agent.train_step(batch)
        times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)
"""


def start(tree: Path, args: argparse.Namespace) -> subprocess.Popen[str]:
    """A child process that builds ``args.variant`` from ``tree``, warms it up and waits for step counts."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'benchmarks'}"}
    argv = [args.variant, args.preset, args.env, args.warmup, args.threads]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, argv)],
        cwd=tree,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        raise SystemExit(f"{tree}: the child failed to build or warm up {args.variant}")
    return child


def timed(child: subprocess.Popen[str], steps: int) -> list[float]:
    """Per-step seconds of ``steps`` train steps in ``child``."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"{steps}\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the tree before the change")
    ap.add_argument("--b", type=Path, required=True, help="the tree after it")
    ap.add_argument("--variant", default="tempo+compile=true")
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed train steps per turn")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    children = {key: start(getattr(args, key).resolve(), args) for key in "ab"}
    times: dict[str, list[float]] = {"a": [], "b": []}
    try:
        for r in range(args.rounds):
            turn = {key: timed(children[key], args.steps) for key in ("ab" if r % 2 == 0 else "ba")}
            for key in "ab":
                times[key] += turn[key]
            a, b = statistics.median(turn["a"]), statistics.median(turn["b"])
            print(f"round {r + 1}: A {a:.4f} s, B {b:.4f} s, B / A {b / a:.3f}")
    finally:
        for child in children.values():
            child.kill()
    a, b = statistics.median(times["a"]), statistics.median(times["b"])
    result = {"variant": args.variant, "preset": args.preset, "a_s": a, "b_s": b, "ratio_b_over_a": b / a}
    print(f"{args.variant} ({args.preset}): A {a:.4f} s, B {b:.4f} s per train step, B / A = {b / a:.3f}")
    if args.out is not None:
        args.out.write_text(json.dumps({**result, "times": times}, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
