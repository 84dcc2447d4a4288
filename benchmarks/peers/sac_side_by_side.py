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
import sys
from pathlib import Path
from typing import Any

import side_by_side
from side_by_side import run_pending

ROOT = Path(__file__).resolve().parents[2]

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


def run_all(env: str, seeds: list[int], steps: int, logdir: Path, jobs: int) -> None:
    """Every run not finished yet, ``jobs`` at a time, each logging to ``RUN.log`` (``side_by_side.run_pending``)."""
    runs = {f"{name}-s{seed}": cmd for seed in seeds for name, cmd in commands(env, seed, steps, logdir).items()}
    run_pending(runs, steps, logdir, jobs)


def table(seeds: list[int], steps: int, logdir: Path) -> dict[str, Any]:
    """Per evaluation step the two means ± std over seeds, the two-sided Welch p and whether the means are within
    20%; and the test on each run's mean over its evaluations (``side_by_side.table``)."""
    return side_by_side.table(seeds, steps, logdir, "sb3")


def markdown(result: dict[str, Any]) -> str:
    """``table``'s result as markdown (``side_by_side.markdown``)."""
    return side_by_side.markdown(result, "SB3")


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
