"""``reweigh sweep SWEEP.yaml``: recipes × envs × seeds × override grid, each trial one run directory, run by the
job runner of ``recipes.launch`` (Ray by default) and summarised per environment by ``reweigh compare``.

A sweep file (YAML; every key is checked, unknown keys and wrong types are refused with the file and the key):

    logdir: runs/sweep               # trials go to LOGDIR/<env>/<variant>-s<seed>, logs beside them
    recipes: [tempo, dreamerv2]      # RECIPE or RECIPE+key=value+... as in reweigh compare
    envs: [dmc:cartpole_swingup]
    seeds: [0, 1, 2]
    steps: 100000
    preset: cpu
    set: {eval_every: 5000}          # overrides for every trial
    grid: {model_lr: [3e-4, 1e-3]}   # crossed: every combination is its own variant
    resources: {num_cpus: 1, num_gpus: 0}

Each (recipe, grid point) is a variant labelled like a compare variant (``tempo+model_lr=0.001``), so
``LOGDIR/<env>/`` is a ``reweigh compare`` directory: the sweep writes ``<name>.md/.json/.png`` there when its
trials are done, and ``reweigh compare --no-run`` re-summarises it.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recipes.compare import Variant
from recipes.launch import Backend, Trial, TrialResult, run_trials

Scalar = bool | int | float | str | None


class Resources(BaseModel):
    """What every trial reserves on Ray, and its torch threads."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, gt=0, description="CPUs per trial (Ray schedules by them)")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per trial; a fraction shares one GPU (0.5: two trials per GPU)"
    )
    threads: int | None = Field(None, ge=1, description="torch threads per trial (default: num_cpus, at least 1)")
    retries: int = Field(1, ge=0, description="re-runs of a trial whose Ray worker or node died (it resumes)")


class SweepSpec(BaseModel):
    """A sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    logdir: str = Field(description="directory of the sweep; relative paths are relative to the current directory")
    recipes: list[str] = Field(min_length=1, description="RECIPE or RECIPE+key=value+... (as reweigh compare)")
    envs: list[str] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: int = Field(ge=1, description="environment steps per trial")
    preset: str = "cpu"
    sets: dict[str, Scalar | list[Any]] = Field(default_factory=dict, alias="set")
    grid: dict[str, list[Scalar | list[Any]]] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    jobs: int = Field(2, ge=1, description="trials at a time on the local backend")
    name: str = Field("sweep", description="basename of the summaries written in LOGDIR/<env>/")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key} has no values")
        return grid

    @field_validator("sets", "grid")
    @classmethod
    def _not_threads(cls, values: dict[str, Any]) -> dict[str, Any]:
        if "threads" in values:
            raise ValueError("threads is set by resources.threads")
        return values


def _value(v: Any) -> str:
    """A YAML value as a ``--set`` value (parsed back by JSON where it parses)."""
    return v if isinstance(v, str) else json.dumps(v)


def slug(text: str) -> str:
    """A file-name-safe form of an env or variant name."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text.replace("+", "_").replace(":", "_"))


def load(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file.

    Raises:
        ValueError: naming the file and the offending key (unknown keys, wrong types, bad YAML, a missing file).
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping of keys (logdir, recipes, envs, seeds, steps, ...)")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(x) for x in e["loc"]) or "sweep"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{key}: {msg}")
        raise ValueError(f"{path}: " + "; ".join(problems)) from None


def variants(spec: SweepSpec) -> list[Variant]:
    """Every recipe crossed with every grid point, as compare variants (``RECIPE+key=value+...``)."""
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys))) or [()]
    out = []
    for text in spec.recipes:
        base = Variant.parse(text)
        for point in points:
            extra = [f"{k}={_value(v)}" for k, v in zip(keys, point, strict=True)]
            out.append(Variant("+".join([base.label, *extra]), base.recipe, [*base.sets, *extra]))
    labels = [v.slug for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recipes: two variants share a run directory name: {sorted(labels)}")
    return out


def trials(spec: SweepSpec, source: str = "sweep") -> list[Trial]:
    """The sweep's trials, every config resolved first so that a bad key or value stops the sweep before anything
    runs.

    Raises:
        ValueError: naming ``source`` (the file), the trial and the field.
    """
    from recipes.envs import make_env
    from recipes.registry import get_recipe
    from recipes.run.config import parse_sets

    res = spec.resources
    threads = res.threads or max(1, int(res.num_cpus))
    common = [f"{k}={_value(v)}" for k, v in spec.sets.items()]
    if res.num_gpus > 0 and "device" not in spec.sets and "device" not in spec.grid:
        common.insert(0, "device=cuda")  # a trial that reserves a GPU uses it
    try:
        found = variants(spec)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    out = []
    for env in spec.envs:
        checked = False
        for variant in found:
            sets = (*common, *variant.sets)
            for seed in spec.seeds:
                try:
                    cfg = get_recipe(variant.recipe).resolve(
                        env, spec.preset, parse_sets([*sets, f"threads={threads}"]), steps=spec.steps, seed=seed
                    )
                    if not checked:  # the env name as reweigh run checks it, before any trial starts
                        make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs()).close()
                        checked = True
                except ValueError as err:
                    raise ValueError(f"{source}: {variant.label} on {env}: {err}") from None
                run_dir = Path(spec.logdir).resolve() / slug(env) / f"{variant.slug}-s{seed}"
                out.append(
                    Trial(
                        variant.recipe,
                        env,
                        seed,
                        spec.steps,
                        run_dir,
                        preset=spec.preset,
                        sets=sets,
                        threads=threads,
                        num_cpus=res.num_cpus,
                        num_gpus=res.num_gpus,
                        label=f"{variant.label} on {env} seed {seed}",
                    )
                )
    return out


def summarize(spec: SweepSpec, results: list[TrialResult]) -> list[Path]:
    """For every env, ``reweigh compare --no-run`` over the variants whose trials all succeeded: writes
    ``LOGDIR/<env>/<name>.md/.json/.png``; returns the ``.md`` paths.  An env whose summary is impossible (no
    successful variant, recipes judged by different metrics) is skipped with a note."""
    from recipes.compare import compare

    status = {r.trial.run_dir: r.ok for r in results}
    written = []
    for env in spec.envs:
        where = Path(spec.logdir).resolve() / slug(env)
        keep = [v for v in variants(spec) if all(status.get(where / f"{v.slug}-s{s}") for s in spec.seeds)]
        if not keep:
            print(f"sweep: no summary for {env}: no variant finished every seed")
            continue
        print(f"sweep: summary of {env} ({len(keep)} variant(s)) in {where}")
        try:
            compare(
                keep, spec.seeds, env=env, steps=spec.steps, logdir=where, preset=spec.preset, run=False, name=spec.name
            )
        except (ValueError, RuntimeError) as err:
            print(f"sweep: no summary for {env}: {err}")
            continue
        written.append(where / f"{spec.name}.md")
    return written


def run_sweep(
    path: str | Path,
    *,
    backend: Backend = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    dry_run: bool = False,
) -> list[TrialResult]:
    """Run (or resume) every trial of the sweep file at ``path``, then summarise each env.

    Args:
        path: the sweep file.
        backend: ``ray`` (default) or ``local``.
        address: a running Ray cluster (``HOST:PORT``, ``auto``); ``None``: a private local Ray for this call.
        num_cpus: CPUs of the private local Ray (default: this machine's).
        num_gpus: GPUs of the private local Ray (default: detected).
        dry_run: print the trials and their commands and run nothing.

    Returns:
        One result per trial (empty for a dry run).

    Raises:
        ValueError: for a bad sweep file or a config error in any trial (before anything runs).
        RuntimeError: after every other trial finished and the summaries were written, naming each failed trial
            and its log.
    """
    spec = load(path)
    todo = trials(spec, str(path))
    if dry_run:
        for t in todo:
            print(f"{t.name}: reweigh {' '.join(t.argv())}")
        print(f"sweep: {len(todo)} trial(s), {spec.resources.num_cpus:g} CPU and {spec.resources.num_gpus:g} GPU each")
        return []
    results = run_trials(
        todo,
        backend=backend,
        jobs=spec.jobs,
        address=address,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        retries=spec.resources.retries,
        prefix="sweep",
    )
    summarize(spec, results)
    failed = [r for r in results if not r.ok]
    print(f"sweep: {len(results) - len(failed)} of {len(results)} trial(s) finished")
    if failed:
        raise RuntimeError(
            f"{len(failed)} trial(s) failed (the others finished): " + "; ".join(r.describe() for r in failed)
        )
    return results
