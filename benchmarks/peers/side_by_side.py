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

The module also holds what the learning-curve side-by-sides share (``sac_side_by_side.py``: our ``sac`` beside
Stable-Baselines3; ``mbpo_side_by_side.py``: our ``mbpo`` beside mbrl-lib): ``finished``, ``run_pending`` (the runs
not finished yet, a few at a time), ``table`` (per evaluation the two-sided Welch test and the 20% band, and the test
on each run's mean over its evaluations) and ``markdown``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

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


# -- learning curves beside a peer's: the runs and the test (sac_side_by_side.py, mbpo_side_by_side.py) -----------


def _compare() -> Any:
    """``recipes.compare`` of this tree (imported on first use: the timing child above does not load it)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import recipes.compare

    return recipes.compare


def finished(run: Path, steps: int) -> bool:
    """Whether the run directory ``run`` holds an evaluation at ``steps`` env steps or later."""
    return run.exists() and max(_compare().eval_curve(run), default=0) >= steps


def run_pending(commands: dict[str, list[str]], steps: int, logdir: Path, jobs: int) -> None:
    """Every run of ``commands`` (run name -> command; it writes ``LOGDIR/NAME``) not finished at ``steps`` yet,
    ``jobs`` at a time from the repository root, each logging to ``LOGDIR/NAME.log``.

    Raises:
        SystemExit: a run failed (after all of them ended), naming how many.
    """
    todo = [(logdir / name, cmd) for name, cmd in commands.items() if not finished(logdir / name, steps)]
    logdir.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[Path, list[str]]) -> int:
        run, cmd = item
        with open(f"{run}.log", "a") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        print(f"{'finished' if code == 0 else f'FAILED (exit {code})'} {run.name}", flush=True)
        return code

    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, todo))
    if any(codes):
        raise SystemExit(f"{sum(c != 0 for c in codes)} run(s) failed; see their .log files in {logdir}")


def table(seeds: list[int], steps: int, logdir: Path, peer: str) -> dict[str, Any]:
    """Per evaluation step every run has (runs ``LOGDIR/ours-sS`` and ``LOGDIR/PEER-sS``) the returns of each seed,
    the two-sided Welch p and whether the two means are within 20% (of the larger magnitude); and the test on each
    run's mean over those evaluations (``recipes.compare.mean_over_evaluations``: ours as ``a``, the peer as ``b``).
    """
    from scipy.stats import ttest_ind

    compare = _compare()
    curves = {name: [compare.eval_curve(logdir / f"{name}-s{s}") for s in seeds] for name in ("ours", peer)}
    shared = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    rows = []
    for step in shared:
        a = [c[step] for c in curves["ours"]]
        b = [c[step] for c in curves[peer]]
        p = float(ttest_ind(a, b, equal_var=False).pvalue) if len(seeds) > 1 else float("nan")
        within = abs(np.mean(a) - np.mean(b)) <= 0.2 * max(abs(np.mean(a)), abs(np.mean(b)))
        rows.append({"step": step, "ours": a, peer: b, "p_two_sided": p, "within_20pct": bool(within)})
    means = {name: [float(np.mean([c[s] for s in shared])) for c in runs] for name, runs in curves.items()}
    return {
        "peer": peer,
        "rows": rows,
        "mean_over_evaluations": compare.mean_over_evaluations(means["ours"], means[peer]),
        "steps": steps,
    }


def markdown(result: dict[str, Any], label: str) -> str:
    """``table``'s result as a markdown table (mean ± std over seeds per evaluation) and the mean-over-evaluations
    line; ``label`` names the peer."""
    peer = result["peer"]
    lines = [f"| env steps | ours | {label} | Welch p (two-sided) | within 20% |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b = np.array(r["ours"]), np.array(r[peer])
        lines.append(
            f"| {r['step']} | {a.mean():.0f} ± {a.std():.0f} | {b.mean():.0f} ± {b.std():.0f} "
            f"| {r['p_two_sided']:.2f} | {'yes' if r['within_20pct'] else 'no'} |"
        )
    m = result["mean_over_evaluations"]
    lines.append(
        f"\nMean over the evaluations: ours {m['a_mean']:.0f} ± {m['a_std']:.0f}, {label} {m['b_mean']:.0f} ± "
        f"{m['b_std']:.0f}; difference {m['diff']:+.0f} (bootstrap 95% CI {m['ci95'][0]:+.0f} … {m['ci95'][1]:+.0f})"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
