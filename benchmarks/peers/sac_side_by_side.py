"""Our ``sac`` beside Stable-Baselines3's SAC at equal settings on a gymnasium task: the same network sizes, batch,
learning rates, updates per env step, target entropy, warm-up and evaluation protocol, the same seeds and env steps.

    python benchmarks/peers/sac_side_by_side.py --env Hopper-v5 --seeds 0,1,2 --steps 50000 --logdir runs/peers/sac
    python benchmarks/peers/sac_side_by_side.py ... --no-run         # the table from the runs already there

Our runs are ``reweigh run sac --preset paper --set history_len=0`` (SACConfig's paper values: 2 × 256 ReLU, batch
256, Adam 3e-4 for actor, critics and temperature, τ 0.005, γ 0.99, one update per env step, 5,000 random steps,
α₀ = 1, target entropy −|A|; 3 deterministic evaluation episodes every 5,000 steps), SB3's are
``benchmarks/peers/sb3_sac.sh`` with the same numbers (its module docstring maps each).  Runs go two at a time with
one torch thread each, in ``LOGDIR/ours-sS`` and ``LOGDIR/sb3-sS``; a finished run is not run again.

The test (issue's target): at every evaluation a two-sided Welch p > 0.1 and means within 20% of the peer's (of
the larger magnitude), and on each run's mean over the evaluations the difference with its bootstrap 95% CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from recipes.compare import eval_curve, mean_over_evaluations  # noqa: E402

#: SACConfig's paper values that sb3_sac.py takes as flags (ours: the recipe's own fields).
SHARED = {
    "batch": 256,
    "lr": 3e-4,
    "units": 256,
    "layers": 2,
    "tau": 0.005,
    "gamma": 0.99,
    "learning-starts": 5_000,
    "train-every": 1,
    "updates": 1,
    "init-alpha": 1.0,
    "eval-every": 5_000,
    "eval-episodes": 3,
}


def commands(env: str, seed: int, steps: int, logdir: Path) -> dict[str, list[str]]:
    """The two runs of one seed: ours and SB3's, at the settings of ``SHARED``."""
    ours = [
        sys.executable,  # this tree's recipes (run from its root), e.g. a frozen git worktree
        "-m",
        "recipes.cli",
        "run",
        "sac",
        "--env",
        f"gym:{env}",
        "--preset",
        "paper",
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        "--logdir",
        str(logdir / f"ours-s{seed}"),
        "--no-progress",
    ]
    for key, value in {"history_len": 0, "threads": 1}.items():
        ours += ["--set", f"{key}={value}"]
    sb3 = ["bash", str(ROOT / "benchmarks/peers/sb3_sac.sh"), "--env", env, "--seed", str(seed), "--steps", str(steps)]
    sb3 += ["--logdir", str(logdir / f"sb3-s{seed}"), "--threads", "1"]
    for key, value in SHARED.items():
        sb3 += [f"--{key}", str(value)]
    return {"ours": ours, "sb3": sb3}


def finished(run: Path, steps: int) -> bool:
    return run.exists() and max(eval_curve(run), default=0) >= steps


def run_all(env: str, seeds: list[int], steps: int, logdir: Path, jobs: int) -> None:
    """Every run not finished yet, ``jobs`` at a time, each logging to ``RUN.log``."""
    todo = []
    for seed in seeds:
        for name, cmd in commands(env, seed, steps, logdir).items():
            run = logdir / f"{name}-s{seed}"
            if not finished(run, steps):
                todo.append((run, cmd))
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


def table(seeds: list[int], steps: int, logdir: Path) -> dict[str, Any]:
    """Per evaluation step the two means ± std over seeds, the two-sided Welch p and whether the means are within
    20%; and the test on each run's mean over its evaluations."""
    from scipy.stats import ttest_ind

    curves = {name: [eval_curve(logdir / f"{name}-s{s}") for s in seeds] for name in ("ours", "sb3")}
    shared = sorted(set.intersection(*(set(c) for runs in curves.values() for c in runs)))
    rows = []
    for step in shared:
        a = [c[step] for c in curves["ours"]]
        b = [c[step] for c in curves["sb3"]]
        p = float(ttest_ind(a, b, equal_var=False).pvalue) if len(seeds) > 1 else float("nan")
        within = abs(np.mean(a) - np.mean(b)) <= 0.2 * max(abs(np.mean(a)), abs(np.mean(b)))
        rows.append({"step": step, "ours": a, "sb3": b, "p_two_sided": p, "within_20pct": bool(within)})
    means = {name: [float(np.mean([c[s] for s in shared])) for c in runs] for name, runs in curves.items()}
    return {"rows": rows, "mean_over_evaluations": mean_over_evaluations(means["ours"], means["sb3"]), "steps": steps}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| env steps | ours | SB3 | Welch p (two-sided) | within 20% |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b = np.array(r["ours"]), np.array(r["sb3"])
        lines.append(
            f"| {r['step']} | {a.mean():.0f} ± {a.std():.0f} | {b.mean():.0f} ± {b.std():.0f} "
            f"| {r['p_two_sided']:.2f} | {'yes' if r['within_20pct'] else 'no'} |"
        )
    m = result["mean_over_evaluations"]
    lines.append(
        f"\nMean over the evaluations: ours {m['a_mean']:.0f} ± {m['a_std']:.0f}, SB3 {m['b_mean']:.0f} ± "
        f"{m['b_std']:.0f}; difference {m['diff']:+.0f} (bootstrap 95% CI {m['ci95'][0]:+.0f} … {m['ci95'][1]:+.0f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Hopper-v5", help="a gymnasium id (ours runs it as gym:ID)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--logdir", type=Path, default=Path("runs/peers/sac"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--no-run", action="store_true", help="only the table, from the runs already there")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.no_run:
        run_all(args.env, seeds, args.steps, args.logdir, args.jobs)
    result = table(seeds, args.steps, args.logdir)
    print(markdown(result))
    (args.logdir / "side_by_side.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
