"""Ours vs sheeprl 0.8.4 at one DreamerV2 config: seconds per gradient step and peak RSS, same threads.

Our side runs in a fresh process (so its peak RSS is one agent's, as sheeprl's is one run's): the agent of
``benchmarks/roofline.py``'s ``sheeprl`` config (gym CartPole-v1 sizes: 4 observations, 2 discrete actions) is fed a
synthetic batch of 16 × 50; ``--warmup`` train steps run untimed, then ``--steps`` are timed one by one (world-model
update + actor-critic update: what sheeprl's ``train`` does); peak RSS is the process's ``VmHWM`` at the end.
Unlike sheeprl's process ours holds no environment and no replay buffer (a few MiB at this size).

sheeprl's side is ``benchmarks/peers/sheeprl_dreamerv2.sh``'s JSON (run it first, same ``THREADS``):

    THREADS=2 bash benchmarks/peers/sheeprl_dreamerv2.sh
    python benchmarks/peers/side_by_side.py --threads 2 [--set compile=true] [--peer benchmarks/results/...json]

Prints one table row per side and the ratios; writes ``benchmarks/results/side_by_side.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _ours(threads: int, warmup: int, steps: int, sets: list[str], queue: Any) -> None:
    import torch

    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from roofline import CONFIGS
    from tempo_overhead import build

    torch.set_num_threads(threads)
    env, preset, overrides, sizes = CONFIGS["sheeprl"]
    variant = "dreamerv2" + overrides + "".join(f"+{s}" for s in sets)
    agent, batch, _ = build(variant, preset, env, **sizes)
    t0 = time.perf_counter()
    for _ in range(warmup):
        agent.train_step(batch)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        agent.train_step(batch)
        times.append(time.perf_counter() - t0)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    queue.put(
        {
            "variant": variant,
            "threads": torch.get_num_threads(),
            "warmup_s": warm,
            "s_per_grad_step": statistics.mean(times),
            "median_s": statistics.median(times),
            "peak_rss_mib": peak,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="our config override")
    ap.add_argument("--peer", type=Path, default=ROOT / "benchmarks" / "results" / "sheeprl_dreamerv2.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "side_by_side.json")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_ours, args=(args.threads, args.warmup, args.steps, args.set, queue))
    proc.start()
    ours = queue.get()
    proc.join()
    result: dict[str, Any] = {"ours": ours}
    print(f"{'':<10} {'s/grad step':>12} {'peak RSS MiB':>13} {'threads':>8}")
    print(f"{'ours':<10} {ours['s_per_grad_step']:12.3f} {ours['peak_rss_mib']:13.0f} {ours['threads']:>8}")
    if args.peer.exists():
        peer = json.loads(args.peer.read_text())
        result["sheeprl"] = peer
        s, rss = peer["s_per_grad_step"], peer["peak_rss_mib"]
        print(f"{'sheeprl':<10} {s:12.3f} {rss:13.0f} {peer.get('torch_threads_seen', '?')!s:>8}")
        result["time_ratio"] = ours["s_per_grad_step"] / s
        result["rss_ratio"] = ours["peak_rss_mib"] / rss
        print(f"ours / sheeprl: time {result['time_ratio']:.2f}x, peak RSS {result['rss_ratio']:.2f}x")
    else:
        print(f"(no sheeprl result at {args.peer}: run benchmarks/peers/sheeprl_dreamerv2.sh first)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
