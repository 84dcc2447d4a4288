"""The weighter's effective step under each hypergradient scale (docs/results.md, TEMPO's meta update, study A).

Runs (or reuses) one short ``tempo`` run per option at make run's settings with ``meta_every=1`` — 5k random prefill,
then 500 model and weighter updates — one after another with one torch thread, then prints the table of
docs/results.md (median ‖Δα‖/(lr·√P) over the logged weighter updates, the weights' std) and draws
``weighter_step.png`` in ``--logdir``::

    python benchmarks/weighter_step.py --logdir ~/runs/stepsize            # run what is missing, then report
    python benchmarks/weighter_step.py --logdir ~/runs/stepsize --no-run   # report only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

#: (run directory, label, --set items): the options compared
OPTIONS = (
    ("exact", "exact (before)", ["hypergradient_scale=exact", "weighter_output_norm=false"]),
    (
        "no_eta",
        "exact, meta_lr=1 (η dropped)",
        ["hypergradient_scale=exact", "meta_lr=1.0", "weighter_output_norm=false"],
    ),
    (
        "eps1e-12",
        "exact, weighter_eps=1e-12",
        ["hypergradient_scale=exact", "weighter_eps=1e-12", "weighter_output_norm=false"],
    ),
    ("unit_norm", "unit_norm", ["hypergradient_scale=unit_norm", "weighter_output_norm=false"]),
    (
        "unit_norm+outnorm",
        "unit_norm + output norm (default)",
        ["hypergradient_scale=unit_norm", "weighter_output_norm=true"],
    ),
    ("exact+outnorm", "exact + output norm", ["hypergradient_scale=exact", "weighter_output_norm=true"]),
)
#: make run's training settings, the weighter updated at every model update, a record every 25 updates
COMMON = [
    "compile=true", "ac_precision=auto", "train_every=10", "batch_size=40", "seq_len=20", "compile_chunk=5",
    "imag_chunk=5", "threads=1", "meta_every=1", "log_every=250", "eval_every=100000",
]  # fmt: skip


def run(logdir: Path, name: str, sets: list[str], seed: int) -> None:
    """One option's run (resumed or reused if its directory has one)."""
    argv = ["run", "tempo", "--env", "dmc:cartpole_swingup", "--preset", "cpu", "--steps", "10000", "--seed", str(seed)]
    argv += ["--logdir", str(logdir / name), "--no-progress"]
    for item in [*COMMON, *sets]:
        argv += ["--set", item]
    subprocess.run([sys.executable, "-m", "recipes.cli", *argv], check=True)


def records(path: Path) -> list[dict]:
    """The run's records of weighter updates."""
    return [
        r
        for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
        if "model/weighter_step_vs_lr" in r
    ]


def report(logdir: Path) -> None:
    """The table, and ``weighter_step.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    print("| option | median ‖Δα‖/(lr·√P) | first / last | weights' std, mean (first → last) | ‖g‖ median |")
    print("|---|---|---|---|---|")
    for name, label, _ in OPTIONS:
        if not (logdir / name / "metrics.jsonl").exists():
            continue
        recs = records(logdir / name)
        step = [r["model/weighter_step_vs_lr"] for r in recs]
        std = [r["model/weight_std"] for r in recs]
        g = statistics.median(r["model/hypergrad_norm"] for r in recs)
        print(
            f"| {label} | {statistics.median(step):.3f} | {step[0]:.2f} / {step[-1]:.3f} | "
            f"{statistics.mean(std):.3f} ({std[0]:.3f} → {std[-1]:.3f}) | {g:.1e} |"
        )
        updates = [(r["step"] - recs[0]["step"]) / 10 for r in recs]
        axes[0].plot(updates, step, marker="o", markersize=3, label=label)
        axes[1].plot(updates, std, marker="o", markersize=3, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("‖Δα‖ / (lr·√P)")
    axes[0].set_title("the weighter's effective step (1 = Adam's full step)", fontsize=9)
    axes[1].set_ylabel("std of the batch's weights")
    axes[1].set_title("the weights' spread", fontsize=9)
    for ax in axes:
        ax.set_xlabel("model updates after the first logged one (meta_every=1)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(logdir / "weighter_step.png", dpi=100)
    print(f"wrote {logdir / 'weighter_step.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-run", action="store_true", help="only report the runs in --logdir")
    args = parser.parse_args()
    if not args.no_run:
        for name, _, sets in OPTIONS:
            run(args.logdir, name, sets, args.seed)
    report(args.logdir)


if __name__ == "__main__":
    main()
