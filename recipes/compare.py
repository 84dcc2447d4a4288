"""``reweigh compare``: runs (or reuses) several recipes over seeds and tests the first against the second as
TEMPO §3.1 does — a one-tailed Welch's t-test at every evaluation step, averaged over evaluations (Henderson et
al. 2018), plus the final return's mean ± std and one PNG of mean ± std curves.

A variant is ``RECIPE`` or ``RECIPE+key=value+...`` (e.g. ``tempo+convention=official``), so two settings of one
recipe compare the same way.  Run directories are ``DIR/<variant>-s<seed>``; a run whose metrics already reach
the requested steps is reused, an unfinished one is resumed, a missing one is started (``jobs`` at a time, each a
``reweigh run`` subprocess with ``threads`` torch threads; or on Ray with ``backend="ray"``), through the job
runner of ``reweigh sweep`` (``recipes.launch``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recipes.launch import Backend, Trial, run_trials
from recipes.run import rundir


@dataclass
class Variant:
    """One compared setting: a recipe and its overrides."""

    label: str
    recipe: str
    sets: list[str]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace("+", "_"))

    @staticmethod
    def parse(text: str) -> Variant:
        from recipes.registry import RECIPES

        recipe, *sets = text.strip().split("+")
        if recipe not in RECIPES:
            from recipes.suggest import did_you_mean

            raise ValueError(
                f"--recipes: unknown recipe {recipe!r} in {text.strip()!r}{did_you_mean(recipe, RECIPES)}; expected "
                f"RECIPE or RECIPE+key=value+... with RECIPE one of {', '.join(RECIPES)}"
            )
        for item in sets:
            if "=" not in item:
                raise ValueError(f"--recipes: {text!r}: expected RECIPE+key=value, got {item!r}")
        return Variant(text.strip(), recipe, sets)


def eval_curve(logdir: Path, metric: str = "eval_return") -> dict[int, float]:
    """``metric`` (default the evaluation return) by environment step (the last record wins if a resumed run logged
    a step twice)."""
    return {int(r["step"]): float(r[metric]) for r in rundir.read_metrics(logdir) if metric in r}


def _metric(variants: list[Variant]) -> tuple[str, bool]:
    """The metric the variants' recipes are compared on and whether higher is better; they must agree."""
    from recipes.registry import get_recipe

    found = {(get_recipe(v.recipe).metric, get_recipe(v.recipe).maximize) for v in variants}
    if len(found) != 1:
        raise ValueError(f"compare: these recipes are judged by different metrics {sorted(found)}; compare them apart")
    return found.pop()


@dataclass(frozen=True)
class Job:
    """One run of ``run_jobs``: a variant on an environment with a seed, in its run directory."""

    variant: Variant
    env: str
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant.label} on {self.env} seed {self.seed}"


def run_jobs(
    todo: list[Job],
    *,
    steps: int,
    preset: str,
    sets: list[str],
    jobs: int,
    threads: int,
    progress: bool = True,
    backend: Backend = "local",
    address: str | None = None,
) -> None:
    """Start or resume every job whose run is not finished (``steps`` evaluated and checkpointed) through the job
    runner ``recipes.launch.run_trials`` that ``reweigh sweep`` uses too: each a ``reweigh run`` subprocess
    with ``threads`` torch threads logging to ``RUN_DIR.log``, ``jobs`` at a time on the ``local`` backend, or
    one Ray task of ``threads`` CPUs per job on the ``ray`` backend (a private local Ray, or the cluster at
    ``address``).

    Raises:
        RuntimeError: naming every failed job and its log, after the others finished.
    """
    trials = [
        Trial(
            j.variant.recipe,
            j.env,
            j.seed,
            steps,
            j.run_dir,
            preset=preset,
            sets=(*sets, *j.variant.sets),
            threads=threads,
            num_cpus=threads,
            label=j.name,
        )
        for j in todo
    ]
    results = run_trials(
        trials, backend=backend, jobs=jobs, address=address, report=print if progress else None, prefix="compare"
    )
    failed = [r.describe() for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"runs failed: {'; '.join(failed)}")


def run_all(
    variants: list[Variant],
    seeds: list[int],
    *,
    env: str,
    steps: int,
    logdir: Path,
    preset: str,
    sets: list[str],
    jobs: int,
    threads: int,
    progress: bool = True,
    backend: Backend = "local",
    address: str | None = None,
) -> None:
    """Start or resume every missing run of ``variants`` × ``seeds`` on ``env`` in ``logdir/SLUG-sSEED``
    (``run_jobs``); raises RuntimeError if any run fails."""
    todo = [Job(v, env, s, logdir / f"{v.slug}-s{s}") for v in variants for s in seeds]
    run_jobs(
        todo,
        steps=steps,
        preset=preset,
        sets=sets,
        jobs=jobs,
        threads=threads,
        progress=progress,
        backend=backend,
        address=address,
    )


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """One-tailed Welch's t-test of mean(a) > mean(b): (t, p); NaN when both samples have zero variance."""
    from scipy.stats import ttest_ind

    res = ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(res.statistic), float(res.pvalue)


def mean_over_evaluations(a: list[float], b: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The test of a pre-registered comparison on each run's mean over its evaluations (one number per seed).

    Args:
        a: per-seed means over the evaluations of the variant H1 says is better (H1: mean(a) > mean(b)).
        b: the same of the other variant.
        resamples: bootstrap resamples.
        seed: the bootstrap's random seed (the interval is reproducible).

    Returns:
        ``a_mean``, ``a_std``, ``b_mean``, ``b_std`` (std over seeds, ddof 0 as the tables), ``diff`` = mean(a) −
        mean(b), one-tailed Welch's ``t`` and ``p``, and ``ci95``: the 95% percentile-bootstrap interval of the
        difference of the means (seeds resampled within each variant; scipy.stats.bootstrap).
    """
    from scipy.stats import bootstrap

    x, y = np.asarray(a, float), np.asarray(b, float)
    t, p = welch(list(x), list(y))
    ci = bootstrap(
        (x, y),
        lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
        n_resamples=resamples,
        method="percentile",
        random_state=seed,
    ).confidence_interval
    return {
        "a_mean": float(x.mean()),
        "a_std": float(x.std()),
        "b_mean": float(y.mean()),
        "b_std": float(y.std()),
        "diff": float(x.mean() - y.mean()),
        "t": t,
        "p": p,
        "ci95": [float(ci.low), float(ci.high)],
    }


def summarize(variants: list[Variant], seeds: list[int], logdir: Path, steps: int) -> dict[str, Any]:
    """Curves on the evaluation steps every run has, Welch's test of the first variant vs the second (H1: the first
    is better — higher, or lower for a metric to minimise such as AdMRL's worst-case gap) at every evaluation and on
    each run's mean over the evaluations (``mean_over_evaluations``, with a bootstrap CI), finals."""
    metric, maximize = _metric(variants)
    curves = {v.label: [eval_curve(logdir / f"{v.slug}-s{s}", metric) for s in seeds] for v in variants}
    common = sorted(set.intersection(*[set(c) for runs in curves.values() for c in runs]))
    common = [s for s in common if s <= steps]
    if not common:
        raise RuntimeError(f"no evaluation step is shared by all runs in {logdir}")
    table: dict[str, Any] = {"steps": common, "seeds": seeds, "variants": {}, "metric": metric, "maximize": maximize}
    for label, runs in curves.items():
        values = np.array([[c[s] for s in common] for c in runs])  # [seeds, evals]
        table["variants"][label] = {
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "final_mean": float(values[:, -1].mean()),
            "final_std": float(values[:, -1].std()),
            "per_seed_final": values[:, -1].tolist(),
        }
    if len(variants) >= 2:
        first, second = variants[0].label, variants[1].label
        ts, ps = [], []
        for step in common:
            a = [c[step] for c in curves[first]]
            b = [c[step] for c in curves[second]]
            t, p = welch(a, b) if maximize else welch(b, a)
            ts.append(t)
            ps.append(p)
        finite = [i for i, t in enumerate(ts) if math.isfinite(t)]
        table["welch"] = {
            "a": first,
            "b": second,
            "alternative": f"{first} {'>' if maximize else '<'} {second}",
            "t": ts,
            "p": ps,
            "mean_t": float(np.mean([ts[i] for i in finite])) if finite else float("nan"),
            "mean_p": float(np.mean([ps[i] for i in finite])) if finite else float("nan"),
            "evaluations": len(finite),
            "skipped": len(common) - len(finite),
        }
        if len(seeds) >= 2:  # H1: the first's mean is higher (lower for a metric to minimise)
            hi, lo = (first, second) if maximize else (second, first)
            means = {v: [float(np.mean([c[s] for s in common])) for c in curves[v]] for v in (hi, lo)}
            table["welch"]["over_evaluations"] = {"a": hi, "b": lo, **mean_over_evaluations(means[hi], means[lo])}
    return table


def format_table(table: dict[str, Any]) -> str:
    """A Markdown table: final return mean ± std per variant, and the Welch summary."""
    metric = table.get("metric", "eval_return")
    name = "eval return" if metric == "eval_return" else metric
    lines = [f"| variant | final {name} (mean ± std) | per seed |", "|---|---|---|"]
    for label, row in table["variants"].items():
        seeds = ", ".join(f"{x:.0f}" for x in row["per_seed_final"])
        lines.append(f"| {label} | {row['final_mean']:.1f} ± {row['final_std']:.1f} | {seeds} |")
    if "welch" in table:
        w = table["welch"]
        lines += [
            "",
            f"One-tailed Welch's t-test, H1: {w['alternative']}, at each of {w['evaluations']} evaluation "
            f"steps ({w['skipped']} skipped: zero variance): mean t = {w['mean_t']:.3f}, "
            f"mean p = {w['mean_p']:.3f}.",
        ]
        if "over_evaluations" in w:
            o = w["over_evaluations"]
            lines.append(
                f"On each run's mean over the evaluations: {o['a']} {o['a_mean']:.1f} ± {o['a_std']:.1f}, {o['b']} "
                f"{o['b_mean']:.1f} ± {o['b_std']:.1f}; difference {o['diff']:+.1f} (bootstrap 95% CI "
                f"{o['ci95'][0]:+.1f} … {o['ci95'][1]:+.1f}); one-tailed Welch's t-test of {o['a']} > {o['b']}: "
                f"t = {o['t']:.3f}, p = {o['p']:.3f}."
            )
    return "\n".join(lines)


def plot(table: dict[str, Any], path: Path, title: str) -> Path:
    """Mean ± std evaluation curves of every variant in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = np.array(table["steps"])
    for label, row in table["variants"].items():
        mean, std = np.array(row["mean"]), np.array(row["std"])
        ax.plot(steps, mean, marker="o", markersize=3, label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if "welch" in table:
        title += f"\nWelch one-tailed: mean t={table['welch']['mean_t']:.2f}, mean p={table['welch']['mean_p']:.3f}"
    ax.set_xlabel("environment steps")
    metric = table.get("metric", "eval_return")
    name = "eval return" if metric == "eval_return" else metric
    ax.set_ylabel(f"{name} (mean ± std, {len(table['seeds'])} seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(
    variants: list[Variant],
    seeds: list[int],
    *,
    env: str,
    steps: int,
    logdir: Path,
    preset: str = "cpu",
    sets: list[str] | None = None,
    jobs: int = 2,
    threads: int = 1,
    run: bool = True,
    name: str = "compare",
    backend: Backend = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Run or reuse the runs, then write ``<name>.png``, ``<name>.json`` and ``<name>.md`` in ``logdir``, and for
    every variant whose recipe has a report hook ``<name>-<variant>-diagnostics.png`` (tempo: TEMPO Fig. 9 over its
    seeds).  Missing runs go through ``run_jobs`` on ``backend`` (``local`` or ``ray``, see
    ``recipes.launch``)."""
    if len(variants) < 1 or not seeds:
        raise ValueError("compare needs at least one recipe and one seed")
    logdir.mkdir(parents=True, exist_ok=True)
    if run:
        run_all(
            variants,
            seeds,
            env=env,
            steps=steps,
            logdir=logdir,
            preset=preset,
            sets=sets or [],
            jobs=jobs,
            threads=threads,
            backend=backend,
            address=address,
        )
    table = summarize(variants, seeds, logdir, steps)
    table.update(env=env, preset=preset, requested_steps=steps)
    (logdir / f"{name}.json").write_text(json.dumps(table, indent=1))
    text = format_table(table)
    (logdir / f"{name}.md").write_text(text + "\n")
    plot(table, logdir / f"{name}.png", f"{' vs '.join(v.label for v in variants)} on {env} ({preset})")
    from recipes.registry import get_recipe

    for v in variants:  # each recipe's own figure over its seeds (tempo: TEMPO Fig. 9)
        get_recipe(v.recipe).make_report(
            [logdir / f"{v.slug}-s{s}" for s in seeds],
            logdir / f"{name}-{v.slug}-diagnostics.png",
            f"{v.label} on {env} ({preset})",
        )
    print(text)
    return table
