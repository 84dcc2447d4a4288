"""Time to score: per run directory, the wall time and env steps at which the evaluation return first reaches
DreamerV3's published score on the task at ``--at`` env steps (100k by default), and per setting the median over
seeds — so a user can choose between a fast setting and a sample-efficient one.

    python benchmarks/time_to_score.py ~/runs/dmc-suite ~/runs/make-run [--at 100000] [--out tts.json]

Each argument is a run directory or a folder searched for them (a folder with ``config.json`` and
``metrics.jsonl``); DMC runs only.  A setting is the run directory's name without ``-s<seed>`` and the task
(``tempo_meta_every=1-s0`` → ``tempo_meta_every=1``), or the parent folder's name where nothing is left
(``dmc_suite.py``'s ``SLUG/TASK-sSEED``).  Wall time: the run's own ``wall_s`` (logged with every evaluation:
set-up and compilation included, time between an interruption and its resume not); for runs from before it was
logged, the sum of the gaps between consecutive records, gaps over ``--max-gap`` seconds left out (marked ``≈``).
The CPU is each run's ``machine.jsonl`` (``unrecorded`` for older runs).

Reference: ``benchmarks/dmc_suite.py``'s ``DREAMERV3`` (DreamerV3's proprio DMC scores, mean over 5 seeds), or
``--reference`` a CSV of the same columns.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dmc_suite import DREAMERV3, read_reference  # noqa: E402

from recipes.run.rundir import read_config, read_metrics  # noqa: E402


def find_runs(paths: list[Path]) -> list[Path]:
    """Every run directory at or under ``paths`` (sorted)."""
    runs: set[Path] = set()
    for path in paths:
        for config in [path / "config.json", *path.rglob("*/config.json")]:
            if config.exists() and (config.parent / "metrics.jsonl").exists():
                runs.add(config.parent)
    return sorted(runs)


def setting_name(run: Path, task: str) -> str:
    """The run's setting: its directory name without the seed suffix and the task, else its parent's name."""
    name = re.sub(r"-s\d+$", "", run.name).replace(task, "").strip("-_")
    return name or run.parent.name


def wall_times(records: list[dict[str, Any]], max_gap: float) -> tuple[dict[int, float], bool]:
    """Wall seconds at each evaluation's env step: the logged ``wall_s``, or (``estimated`` = True) the summed
    gaps between consecutive records' time stamps, gaps over ``max_gap`` (the run was not running) left out."""
    evals = [r for r in records if "eval_return" in r]
    if evals and all("wall_s" in r for r in evals):
        return {int(r["step"]): float(r["wall_s"]) for r in evals}, False
    out: dict[int, float] = {}
    total, last = 0.0, None
    for r in records:
        if "time" not in r:
            continue
        if last is not None and 0 <= r["time"] - last <= max_gap:
            total += r["time"] - last
        last = r["time"]
        if "eval_return" in r:
            out[int(r["step"])] = total
    return out, True


def machine(run: Path) -> str:
    """The CPU of the run's processes (``machine.jsonl``), ``unrecorded`` where it has none."""
    path = run / "machine.jsonl"
    if not path.exists():
        return "unrecorded"
    cpus = {json.loads(line)["cpu"] for line in path.read_text().splitlines() if line.strip()}
    return " + ".join(sorted(cpus))


def time_to_score(run: Path, target: float, max_gap: float) -> dict[str, Any]:
    """One run's first evaluation at or above ``target``: its env step and wall seconds (None if never), the final
    evaluation, the run's wall seconds to it and its CPU."""
    records = read_metrics(run)
    curve = sorted((int(r["step"]), float(r["eval_return"])) for r in records if "eval_return" in r)
    walls, estimated = wall_times(records, max_gap)
    hit = next(((s, ret) for s, ret in curve if ret >= target), None)
    return {
        "run": str(run),
        "steps_to_target": hit[0] if hit else None,
        "wall_to_target_s": walls.get(hit[0]) if hit else None,
        "final_step": curve[-1][0] if curve else None,
        "final_return": curve[-1][1] if curve else None,
        "wall_s": walls.get(curve[-1][0]) if curve else None,
        "wall_estimated": estimated,
        "cpu": machine(run),
    }


def table(paths: list[Path], reference: dict[str, dict[int, float]], at: int, max_gap: float) -> list[dict]:
    """One row per (setting, task): the target, every seed's result, and the medians over the seeds that reach it."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in find_runs(paths):
        env = str(read_config(run).get("env", ""))
        task = env.removeprefix("dmc:")
        if not env.startswith("dmc:") or at not in reference.get(task, {}):
            continue
        result = time_to_score(run, reference[task][at], max_gap)
        groups.setdefault((setting_name(run, task), task), []).append(result)
    rows = []
    for (setting, task), runs in sorted(groups.items()):
        reached = [r for r in runs if r["steps_to_target"] is not None]
        finals = [r["final_return"] for r in runs if r["final_return"] is not None]
        rows.append(
            {
                "setting": setting,
                "task": task,
                "target": reference[task][at],
                "seeds": len(runs),
                "reached": len(reached),
                "median_steps": statistics.median(r["steps_to_target"] for r in reached) if reached else None,
                "median_wall_s": statistics.median(r["wall_to_target_s"] for r in reached) if reached else None,
                "final_mean": statistics.fmean(finals) if finals else None,
                "final_std": statistics.stdev(finals) if len(finals) > 1 else None,
                "estimated": any(r["wall_estimated"] for r in runs),
                "cpu": " / ".join(sorted({r["cpu"] for r in runs})),
                "runs": runs,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], at: int) -> str:
    """The table as Markdown: per setting and task, seeds reaching the target, median steps and minutes."""
    lines = [
        f"| setting | task | target (DreamerV3 @ {at // 1000}k) | reached | median env steps | median wall min "
        "| per seed (k steps / min) | final return | CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = "≈" if row["estimated"] else ""
        seeds = ", ".join(
            f"{r['steps_to_target'] // 1000}k/{mark}{r['wall_to_target_s'] / 60:.0f}" if r["steps_to_target"] else "—"
            for r in row["runs"]
        )
        steps = f"{row['median_steps'] / 1000:.0f}k" if row["median_steps"] is not None else "—"
        wall = f"{mark}{row['median_wall_s'] / 60:.1f}" if row["median_wall_s"] is not None else "—"
        final = f"{row['final_mean']:.0f}" + (f" ± {row['final_std']:.0f}" if row["final_std"] is not None else "")
        lines.append(
            f"| {row['setting']} | {row['task']} | {row['target']:.0f} | {row['reached']}/{row['seeds']} | {steps} "
            f"| {wall} | {seeds} | {final} | {row['cpu']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run directories, or folders searched for them")
    ap.add_argument("--at", type=int, default=100_000, help="the reference's env step whose score is the target")
    ap.add_argument("--reference", type=Path, default=None, help="a CSV like dmc_suite.py's --reference")
    ap.add_argument("--max-gap", type=float, default=600.0, help="seconds between records that count as a stop")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        ap.error(f"no such path: {', '.join(missing)}")
    reference = read_reference(args.reference) if args.reference else DREAMERV3
    rows = table(args.paths, reference, args.at, args.max_gap)
    print(markdown(rows, args.at))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
