"""Summarise learning runs: evaluation curve, final return, wall clock and overall throughput per run, and the
final return's mean ± std over runs.  Usage: ``python benchmarks/learning_report.py RUN_DIR [RUN_DIR ...]
[--out report.json]``.  Wall clock comes from the records' ``time`` stamps when present, else from the run
directory's file times (config.json written → last metrics line)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.run.rundir import read_metrics  # noqa: E402


def summarize(run: Path) -> dict:
    records = read_metrics(run)
    evals = {int(r["step"]): float(r["eval_return"]) for r in records if "eval_return" in r}
    times = [r["time"] for r in records if "time" in r]
    if times:
        wall = max(times) - min(times)
    else:
        wall = (run / "metrics.jsonl").stat().st_mtime - (run / "config.json").stat().st_mtime
    steps = max(evals) if evals else 0
    config = json.loads((run / "config.json").read_text())
    updates = max(0, (steps - config["prefill"]) // config["train_every"]) * config["train_steps"]
    return {
        "run": str(run),
        "recipe": config.get("recipe"),
        "seed": config["seed"],
        "env_steps": steps,
        "eval_curve": evals,
        "final_eval_return": evals.get(steps),
        "wall_clock_min": wall / 60,
        "updates": updates,
        "env_steps_per_s_overall": steps / wall if wall else None,
        "updates_per_s_overall": updates / wall if wall else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [summarize(Path(r)) for r in args.runs]
    for row in rows:
        curve = " ".join(f"{v:.0f}" for _, v in sorted(row["eval_curve"].items()))
        print(
            f"{row['run']}: seed {row['seed']}, {row['env_steps']} env steps, final {row['final_eval_return']:.1f}, "
            f"{row['wall_clock_min']:.1f} min, {row['env_steps_per_s_overall']:.1f} env steps/s and "
            f"{row['updates_per_s_overall']:.2f} updates/s overall\n    eval curve: {curve}"
        )
    finals = [r["final_eval_return"] for r in rows if r["final_eval_return"] is not None]
    summary = {
        "runs": rows,
        "final_mean": statistics.mean(finals),
        "final_std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
    }
    print(f"final eval return: {summary['final_mean']:.1f} ± {summary['final_std']:.1f} over {len(finals)} runs")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
