"""What the weights did in a set of `tempo` runs, beside a control: the diagnostics that explain a comparison's outcome.

Per arm (a name and its run directories; a glob is expanded), over training in equal spans of env steps, the median
over the arm's runs (one diverged run does not carry the arm) of: the weights' std, their correlation with the
reward and with ‖∂V/∂s‖, the weighter's effective step ‖Δα‖/(lr·√P) and the upper loss (which a `strategy=uniform`
run logs too, never trained on). With ``--gain K`` also, per run with a trained weighter, ``reweigh inspect-weights
--gain K``'s question at its latest checkpoint: do the weights lower the upper loss after a virtual step more than w
= 1, their own shuffle and the naive weights (``recipes.dreamer.analysis.weighting_gain_of_run``). Prints Markdown
tables; ``--plot`` draws the spans; ``--out`` writes JSON.

    python benchmarks/weighting_report.py --arm 'tempo=runs/r/tempo-s*' --arm 'uniform=runs/r/uniform-s*' \\
        --gain 16 --plot report.png --out report.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.dreamer.analysis import training_history, weighting_gain_of_run  # noqa: E402

#: The columns of the span table: (key of ``training_history``, header).
SPAN_KEYS = (
    ("weight_std", "weights' std"),
    ("weight_corr/reward", "r(w, reward)"),
    ("weight_corr/value_grad_norm", "r(w, ‖∂V/∂s‖)"),
    ("weighter_step_vs_lr", "‖Δα‖/(lr·√P)"),
    ("upper_loss", "upper loss"),
)


def parse_arm(text: str) -> tuple[str, list[Path]]:
    """``NAME=PATTERN[,PATTERN...]`` → the name and its run directories (globs expanded, sorted).

    Raises:
        ValueError: no ``=``, or a pattern that matches no directory with a ``metrics.jsonl``.
    """
    name, sep, patterns = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--arm: expected NAME=DIR[,DIR...], got {text!r}")
    runs: list[Path] = []
    for pattern in patterns.split(","):
        found = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser())) if Path(p, "metrics.jsonl").exists())
        if not found:
            raise ValueError(f"--arm {name}: no run directory matches {pattern!r}")
        runs += found
    return name, runs


def arm_spans(runs: list[Path], spans: int) -> list[dict[str, float]]:
    """The median over ``runs`` of each span's ``training_history`` row (spans aligned by index)."""
    histories = [training_history(run, spans) for run in runs]
    rows = []
    for i in range(min(len(h) for h in histories)):
        row = {"start": min(h[i]["start"] for h in histories), "end": max(h[i]["end"] for h in histories)}
        for key, _ in SPAN_KEYS:
            values = [h[i][key] for h in histories if key in h[i]]
            if values:
                row[key] = float(np.median(values))
        rows.append(row)
    return rows


def span_table(arms: dict[str, list[dict[str, float]]]) -> list[str]:
    """The spans of every arm as one Markdown table."""
    lines = ["| arm | env steps | " + " | ".join(h for _, h in SPAN_KEYS) + " |", "|---|---|" + "---|" * len(SPAN_KEYS)]
    for name, rows in arms.items():
        for row in rows:
            cells = [f"{row[k]:.3g}" if k in row else "–" for k, _ in SPAN_KEYS]
            lines.append(f"| {name} | {row['start'] / 1e3:.0f}k–{row['end'] / 1e3:.0f}k | " + " | ".join(cells) + " |")
    return lines


def gain_table(gains: dict[str, dict[str, Any]]) -> list[str]:
    """Per run, the meta and naive weights' gain over w = 1, the shuffle's, and the alignment (mean ± s.e.)."""
    lines = [
        "| run | upper loss | step with w = 1 | meta: gain | meta: shuffled | meta: alignment "
        "| naive: gain | naive: alignment |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(d: dict[str, float]) -> str:
        return f"{d['mean']:+.2e} ± {d['se']:.1e}"

    for run, g in gains.items():
        m, n = g["meta"], g["naive"]
        lines.append(
            f"| {run} | {g['upper']['mean']:.4f} | {-m['step_gain']['mean']:+.2e} | {cell(m['gain'])} "
            f"| {cell(m['shuffled_gain'])} | {m['alignment']['mean']:+.3f} ± {m['alignment']['se']:.3f} "
            f"| {cell(n['gain'])} | {n['alignment']['mean']:+.3f} ± {n['alignment']['se']:.3f} |"
        )
    return lines


def plot(arms: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    """One panel per span column that any arm logged, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, h) for k, h in SPAN_KEYS if any(k in r for rows in arms.values() for r in rows)]  # logged ones
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    axes = axes[0]
    for ax, (key, header) in zip(axes, keys, strict=True):
        for name, rows in arms.items():
            pts = [((r["start"] + r["end"]) / 2e3, r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_title(header)
        ax.set_xlabel("env steps (k)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gain_runs(runs: dict[str, list[Path]]) -> dict[str, Path]:
    """The runs with a trained weighter (not ``strategy`` uniform or naive), keyed ``"ARM RUN"``.

    Raises:
        ValueError: one of them has no checkpoint.
    """
    asked = {}
    for name, dirs in runs.items():
        for run in dirs:
            if json.loads((run / "config.json").read_text()).get("strategy") in ("uniform", "naive"):
                continue
            if not any((run / "checkpoints").glob("*.pt")):
                raise ValueError(f"--gain: {run} has no checkpoint")
            asked[f"{name} {run.name}"] = run
    return asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, help="NAME=DIR_OR_GLOB[,...] (repeatable)")
    parser.add_argument("--spans", type=int, default=5)
    parser.add_argument("--gain", type=int, default=0, help="replayed batches per run for the gain (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--title", default="")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        runs = dict(parse_arm(a) for a in args.arm)
        asked = gain_runs(runs) if args.gain else {}
        if args.gain and args.gain < 2:
            raise ValueError(f"--gain: 0 (off) or >= 2 batches, got {args.gain}")
    except ValueError as err:
        print(f"weighting_report: {err}", file=sys.stderr)
        return 2
    arms = {name: arm_spans(dirs, args.spans) for name, dirs in runs.items()}
    print("\n".join(span_table(arms)))
    gains = {key: weighting_gain_of_run(run, batches=args.gain, seed=args.seed) for key, run in asked.items()}
    if gains:
        print()
        print("\n".join(gain_table(gains)))
    if args.plot:
        plot(arms, Path(args.plot), args.title)
    if args.out:
        result = {"spans": arms, "gain": gains, "runs": {k: [str(p) for p in v] for k, v in runs.items()}}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
