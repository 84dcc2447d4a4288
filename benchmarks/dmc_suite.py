"""The DMC proprio development suite against DreamerV3's published scores (issue 12).

Runs (or resumes) one variant on every suite task × seed, two runs at a time with one torch thread each by default
(``recipes.compare.run_jobs``: every run is an ordinary resumable run directory), then writes the table: per task
the evaluation return at ``--steps`` (mean over seeds) against DreamerV3's at the same step, their ratio and whether
it reaches ``--task-target`` (0.6), and the suite's mean against theirs (``--suite-target``, 0.8):

    python benchmarks/dmc_suite.py --variant dreamerv2 --seeds 0,1 --steps 100000 --logdir ~/runs/dmc-suite
    python benchmarks/dmc_suite.py --variant dreamerv2+return_norm=true --no-run     # the table only

Measure the DreamerV3 options one at a time with ``--variant dreamerv2+OPTION=VALUE``; each variant gets its own
folder ``LOGDIR/SLUG/TASK-sSEED``.  Writes ``LOGDIR/SLUG/suite.json``, ``suite.md`` and ``suite.png`` (curves).

Reference: DreamerV3's proprio DMC scores (Hafner et al. 2023; the danijar/dreamerv3 repository's
``scores/dmc_proprio-dreamerv3.json.gz``, mean over 5 seeds, value at step T = mean of the points within ±10% of
T), as ``../shared/reference/dreamerv3_dmc_proprio_suite.csv`` has them; ``--reference`` reads another CSV of the
same columns.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.compare import Job, Variant, eval_curve, run_jobs  # noqa: E402

SUITE = ["cartpole_swingup", "walker_walk", "cheetah_run", "reacher_easy", "pendulum_swingup"]

#: DreamerV3 proprio DMC, evaluation return by env step (see the module docstring for the source).
DREAMERV3: dict[str, dict[int, float]] = {
    "cartpole_swingup": {50_000: 321.6, 100_000: 512.6, 250_000: 816.4, 500_000: 850.8},
    "walker_walk": {50_000: 289.2, 100_000: 518.4, 250_000: 884.4, 500_000: 940.8},
    "cheetah_run": {50_000: 227.5, 100_000: 307.6, 250_000: 476.1, 500_000: 599.9},
    "reacher_easy": {50_000: 630.8, 100_000: 727.4, 250_000: 904.2, 500_000: 943.7},
    "pendulum_swingup": {50_000: 182.4, 100_000: 716.1, 250_000: 841.7, 500_000: 779.3},
}


def read_reference(path: Path) -> dict[str, dict[int, float]]:
    """``task,50k,100k,...`` rows (``#`` comments allowed) → task → step → score."""
    rows = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(rows)
    out: dict[str, dict[int, float]] = {}
    for row in reader:
        task = row.pop("task")
        out[task] = {int(float(k.rstrip("k")) * 1000): float(v) for k, v in row.items()}
    return out


def score_at(curve: dict[int, float], step: int) -> float | None:
    """The evaluation return logged at ``step`` (or the last one before it within 5%), None if the run is short."""
    near = [s for s in curve if step * 0.95 <= s <= step]
    return curve[max(near)] if near else None


def table(
    logdir: Path, tasks: list[str], seeds: list[int], steps: int, reference: dict[str, dict[int, float]]
) -> dict[str, Any]:
    """Per-task scores at ``steps`` (per seed and mean), the reference, ratios, and the suite means."""
    rows: dict[str, Any] = {}
    for task in tasks:
        scores = [
            score_at(eval_curve(logdir / f"{task}-s{s}"), steps) if (logdir / f"{task}-s{s}").exists() else None
            for s in seeds
        ]
        done = [x for x in scores if x is not None]
        ref = reference.get(task, {}).get(steps)
        mean = statistics.fmean(done) if done else None
        rows[task] = {
            "per_seed": scores,
            "mean": mean,
            "std": statistics.stdev(done) if len(done) > 1 else None,
            "dreamerv3": ref,
            "ratio": None if mean is None or not ref else mean / ref,
        }
    complete = [r for r in rows.values() if r["mean"] is not None and r["dreamerv3"]]
    ours = statistics.fmean(r["mean"] for r in complete) if complete else None
    theirs = statistics.fmean(r["dreamerv3"] for r in complete) if complete else None
    return {
        "steps": steps,
        "seeds": seeds,
        "tasks": rows,
        "suite_mean": ours,
        "suite_mean_dreamerv3": theirs,
        "suite_ratio": None if ours is None or not theirs else ours / theirs,
        "complete": len(complete) == len(tasks),
    }


def markdown(result: dict[str, Any], variant: str, task_target: float, suite_target: float) -> str:
    def f(x: float | None, fmt: str = ".0f") -> str:
        return "—" if x is None else format(x, fmt)

    lines = [
        f"`{variant}`, {len(result['seeds'])} seeds, evaluation return at {result['steps']:,} env steps",
        "",
        "| task | ours (mean ± std) | per seed | DreamerV3 | ratio | ≥ " + f"{task_target}× |",
        "|---|---|---|---|---|---|",
    ]
    for task, r in result["tasks"].items():
        ok = "—" if r["ratio"] is None else ("yes" if r["ratio"] >= task_target else "no")
        seeds = ", ".join(f(x) for x in r["per_seed"])
        lines.append(
            f"| {task} | {f(r['mean'])} ± {f(r['std'])} | {seeds} | {f(r['dreamerv3'], '.1f')} | "
            f"{f(r['ratio'], '.2f')} | {ok} |"
        )
    ratio = result["suite_ratio"]
    missing = "" if result["complete"] else " — incomplete: some runs missing"
    lines += [
        "",
        f"Suite mean: ours {f(result['suite_mean'])}, DreamerV3 {f(result['suite_mean_dreamerv3'], '.1f')}, ratio "
        f"{f(ratio, '.2f')} (target ≥ {suite_target}){missing}",
    ]
    return "\n".join(lines) + "\n"


def plot(logdir: Path, tasks: list[str], seeds: list[int], reference: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 2.8), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for s in seeds:
            run = logdir / f"{task}-s{s}"
            curve = eval_curve(run) if run.exists() else {}
            if curve:
                xs = sorted(curve)
                ax.plot(xs, [curve[x] for x in xs], lw=1, label=f"seed {s}")
        ref = reference.get(task, {})
        if ref:
            xs = sorted(ref)
            ax.plot(xs, [ref[x] for x in xs], "k--", lw=1, label="DreamerV3")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("env steps", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("eval return")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="dreamerv2", help="RECIPE[+key=value...] as in reweigh compare")
    ap.add_argument("--tasks", default=",".join(SUITE), help="DMC tasks (dmc: is prepended)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--logdir", type=Path, default=Path.home() / "runs" / "dmc-suite")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--reference", type=Path, default=None, help="a CSV like ../shared/reference/...suite.csv")
    ap.add_argument("--task-target", type=float, default=0.6)
    ap.add_argument("--suite-target", type=float, default=0.8)
    ap.add_argument("--no-run", action="store_true", help="only write the table of what exists")
    args = ap.parse_args(argv)

    variant = Variant.parse(args.variant)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    reference = read_reference(args.reference) if args.reference else DREAMERV3
    out = args.logdir / variant.slug
    if not args.no_run:
        jobs = [Job(variant, f"dmc:{t}", s, out / f"{t}-s{s}") for s in seeds for t in tasks]
        run_jobs(jobs, steps=args.steps, preset=args.preset, sets=[], jobs=args.jobs, threads=args.threads)
    result = table(out, tasks, seeds, args.steps, reference)
    result["variant"] = args.variant
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps(result, indent=1))
    text = markdown(result, args.variant, args.task_target, args.suite_target)
    (out / "suite.md").write_text(text)
    plot(out, tasks, seeds, reference, out / "suite.png")
    print(text)
    print(f"wrote {out / 'suite.json'}, suite.md, suite.png")
    return result


if __name__ == "__main__":
    main()
