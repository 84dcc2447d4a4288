"""Pre-trained + fine-tuned against from-scratch at equal total environment steps (issue 13).

"Pre-training world models on related tasks" §4: one agent pre-trained for P env steps on a set of M tasks (one
drawn per episode), then fine-tuned on each task; baseline: one agent per task from scratch.  Their accounting
(§4.2, §7.2): M fine-tuned agents plus the pre-training cost M·T steps in all when each is fine-tuned for
T − P/M steps, so a fine-tuned agent at its step t is compared with a scratch agent at step t + P/M — we plot the
fine-tuned curve shifted right by that *charge*.  An unseen task (transfer, §4.3) is fine-tuned for T steps and
compared at equal steps (charge 0), as the paper does; the pre-training was paid for by the seen tasks.

For every seed: ``pretrain-sS`` (``reweigh pretrain``), ``finetune-TASK-sS`` (``reweigh run --init``) and
``scratch-TASK-sS``, all ordinary resumable run directories under ``--logdir``, run two at a time with one torch
thread each (``recipes.compare.run_jobs``'s runner).  Writes ``study.md``, ``study.json`` and ``study.png``:
per task the curves (mean ± std over seeds), Welch's t at T, and the world model's observation and reward losses
during fine-tuning against the scratch runs':

    python benchmarks/pretrain_study.py --envs dmc:cartpole_balance,cartpole_swingup \\
        --unseen dmc:cartpole_swingup_sparse --seeds 0,1,2 --task-steps 30000 --logdir ~/runs/pretrain-study
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.compare import eval_curve, welch  # noqa: E402
from recipes.envs.multitask import split_names  # noqa: E402
from recipes.launch import Trial, run_trials  # noqa: E402
from recipes.run.rundir import read_metrics  # noqa: E402

#: what the study adds to every run unless --set says otherwise: the fast CPU path of docs/performance.md
#: and the replay ratio it was measured at (the cpu preset moved from train_every=10 to 2 afterwards).
DEFAULT_SETS = ("compile=true", "ac_precision=auto", "eval_every=5000", "train_every=10")


def slug(env: str) -> str:
    return env.replace("dmc:", "").replace(":", "_")


def plan(args: argparse.Namespace) -> tuple[list[Trial], list[Trial], dict[str, Any]]:
    """(pre-training and scratch trials, fine-tuning trials, the study's layout)."""
    seen = split_names(args.envs)
    unseen = split_names(args.unseen) if args.unseen else []
    m = len(seen)
    T, P = args.task_steps, args.pretrain_steps or args.task_steps
    charge = {**{t: P // m for t in seen}, **{t: 0 for t in unseen}}
    if any(T - c <= 0 for c in charge.values()):
        raise SystemExit(f"--pretrain-steps {P} / {m} tasks leaves no fine-tuning budget within --task-steps {T}")
    sets = tuple(s for s in (*DEFAULT_SETS, *args.set) if s)
    logdir = Path(args.logdir).expanduser().resolve()
    first, second = [], []

    def trial(env: str, seed: int, steps: int, name: str, extra: tuple[str, ...] = ()) -> Trial:
        return Trial(args.recipe, env, seed, steps, logdir / name, args.preset, (*sets, *extra), threads=args.threads)

    for seed in args.seeds:
        first.append(trial(",".join(seen), seed, P, f"pretrain-s{seed}"))
    for seed in args.seeds:
        for task in [*seen, *unseen]:
            first.append(trial(task, seed, T, f"scratch-{slug(task)}-s{seed}"))
            init = (f"init={logdir / f'pretrain-s{seed}'}", f"init_parts={args.parts}")
            second.append(trial(task, seed, T - charge[task], f"finetune-{slug(task)}-s{seed}", init))
    layout = {"seen": seen, "unseen": unseen, "T": T, "P": P, "charge": charge, "logdir": str(logdir)}
    return first, second, layout


def _at(curve: dict[int, float], step: int) -> float | None:
    near = [s for s in curve if step * 0.95 <= s <= step]
    return curve[max(near)] if near else None


def _loss_curve(run: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run) if key in r}


def summarize(layout: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Per task: final returns (scratch at T, fine-tuned at T − charge), Welch's t, curves."""
    logdir, T = Path(layout["logdir"]), layout["T"]
    out: dict[str, Any] = {"layout": layout, "tasks": {}}
    for task in [*layout["seen"], *layout["unseen"]]:
        charge = layout["charge"][task]
        rows: dict[str, Any] = {"charge": charge, "seen": task in layout["seen"]}
        for kind, end in (("scratch", T), ("finetune", T - charge)):
            runs = [logdir / f"{kind}-{slug(task)}-s{s}" for s in seeds]
            curves = [eval_curve(r) for r in runs]
            finals = [_at(c, end) for c in curves]
            rows[kind] = {
                "final": [f for f in finals if f is not None],
                "curves": [{str(k): v for k, v in c.items()} for c in curves],
                "obs_loss": [{str(k): v for k, v in _loss_curve(r, "model/obs").items()} for r in runs],
                "reward_loss": [{str(k): v for k, v in _loss_curve(r, "model/reward").items()} for r in runs],
            }
        a, b = rows["finetune"]["final"], rows["scratch"]["final"]
        rows["welch_t"], rows["p"] = welch(a, b) if len(a) >= 2 and len(b) >= 2 else (float("nan"), float("nan"))
        out["tasks"][task] = rows
    pre = [logdir / f"pretrain-s{s}" for s in seeds]
    out["pretrain"] = [{str(k): v for k, v in eval_curve(r).items()} for r in pre]
    return out


def _ms(xs: list[float]) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.0f} ± {sd:.0f} (n={len(xs)})"


def table(summary: dict[str, Any]) -> str:
    lay = summary["layout"]
    lines = [
        f"Pre-training on {', '.join(lay['seen'])} for P = {lay['P']} env steps; every task's budget T = {lay['T']}; "
        "a seen task's fine-tuning is charged P/M, an unseen one's nothing.",
        "",
        "| task | seen | charge | scratch at T | pre-trained + fine-tuned at T | Welch t | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, r in summary["tasks"].items():
        lines.append(
            f"| {task} | {'yes' if r['seen'] else 'no'} | {r['charge']} | {_ms(r['scratch']['final'])} | "
            f"{_ms(r['finetune']['final'])} | {r['welch_t']:.2f} | {r['p']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(summary["tasks"])
    fig, axes = plt.subplots(3, len(tasks), figsize=(4.2 * len(tasks), 9), squeeze=False)
    for j, task in enumerate(tasks):
        r = summary["tasks"][task]
        for kind, shift, color in (("scratch", 0, "tab:gray"), ("finetune", r["charge"], "tab:blue")):
            for row, key, label in (
                (0, "curves", "eval return"),
                (1, "obs_loss", "obs loss"),
                (2, "reward_loss", "reward loss"),
            ):
                series = [{int(k): v for k, v in c.items()} for c in r[kind][key]]
                steps = sorted(set.intersection(*[set(s) for s in series])) if series and all(series) else []
                if not steps:
                    continue
                vals = np.array([[s[t] for t in steps] for s in series])
                x = np.array(steps) + (shift if row == 0 else 0)
                ax = axes[row, j]
                name = (
                    "scratch" if kind == "scratch" else f"fine-tuned (+{shift} charged)" if row == 0 else "fine-tuned"
                )
                ax.plot(x, vals.mean(0), color=color, label=name)
                ax.fill_between(x, vals.mean(0) - vals.std(0), vals.mean(0) + vals.std(0), color=color, alpha=0.2)
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
        axes[0, j].set_title(f"{task} ({'seen' if r['seen'] else 'unseen'})")
        axes[0, j].legend(fontsize=7)
        axes[2, j].set_xlabel("env steps of this task's run (top: total charged)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", required=True, help="the pre-training set (comma list); its tasks are the seen ones")
    parser.add_argument("--unseen", default="", help="comma list of tasks outside the set (transfer)")
    parser.add_argument("--recipe", default="dreamerv2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--task-steps", type=int, default=30_000, help="T: every task's env-step budget")
    parser.add_argument("--pretrain-steps", type=int, default=0, help="P (default T)")
    parser.add_argument("--parts", default="wm+ac", choices=["wm", "wm+ac"])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run (repeatable)")
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-run", action="store_true", help="only summarise what exists")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    first, second, layout = plan(args)
    if not args.no_run:
        failed = [r for r in run_trials(first, jobs=args.jobs, prefix="study") if not r.ok]
        failed += [r for r in run_trials(second, jobs=args.jobs, prefix="study") if not r.ok]
        for r in failed:
            print(f"study: failed {r.describe()}")
    summary = summarize(layout, args.seeds)
    logdir = Path(layout["logdir"])
    (logdir / "study.json").write_text(json.dumps(summary, indent=1))
    (logdir / "study.md").write_text(table(summary))
    plot(summary, logdir / "study.png")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
