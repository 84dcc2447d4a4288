"""The config every online recipe shares (``RunConfig``), presets as data, and ``resolve``.

The config is the only place a number lives.  A recipe's presets are dicts of overrides keyed by preset name
(``cpu``, ``paper``) and environment family (``dmc``, ``atari``, ``gym``, ``meta``, ``*`` for every family;
``dmc_pixels`` applies on top of ``dmc`` when ``pixels`` is true); a recipe may stack several layers (``tempo`` =
DreamerV2's presets, then its own).  The families a recipe runs on are those of its first layer
(``preset_families``).
``--set key=value`` overrides come last.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recipes.envs.registry import ENV_FAMILIES
from recipes.run.heap import HeapMode

#: preset name → env family (or ``dmc_pixels``) → field overrides.
Presets = dict[str, dict[str, dict[str, Any]]]


class RunConfig(BaseModel):
    """What every online recipe's run needs, whatever the algorithm: the environment, the budget, the seed, the
    device and the cadences of the run loop (``recipes.run.loop``).  Environment steps (agent steps × action
    repeat) everywhere."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # run
    env: str = "dmc:cartpole_swingup"
    steps: int = Field(100_000, ge=1, description="environment steps to train for")
    seed: int = 0
    preset: Literal["cpu", "paper"] = "cpu"
    device: str = "cpu"
    threads: int = Field(1, ge=1, description="torch threads (count env workers and renderers too)")
    heap: HeapMode = Field(
        "retain",
        description="glibc malloc: 'retain' serves large tensors from the heap and keeps freed memory for the next "
        "step (no kernel page faults on every step's large tensors: faster paper-preset steps for a higher peak RSS, "
        "docs/results.md), 'system' leaves the C library as it is (recipes.run.heap)",
    )

    # environment
    pixels: bool = False
    image_size: Literal[32, 64] = 64
    action_repeat: int = Field(2, ge=1)
    time_limit: int | None = Field(None, ge=1, description="agent steps per episode (default: the env own limit)")
    task_weights: list[float] | None = Field(
        None, description="a set of environments (env = a comma list): each member's draw probability per episode"
    )
    distractors: int = Field(
        0,
        ge=0,
        description="extra observation dimensions (an even number) from noise-driven damped oscillators the agent "
        "cannot move and the reward ignores: objective mismatch for vector dmc/gym/meta envs (recipes.envs.mismatch)",
    )
    obs_noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to the observations")
    obs_noise_on: Literal["state", "distractors", "all"] = Field(
        "state", description="the dimensions obs_noise goes on: the env's own, the distractors, or all"
    )

    # loop cadences
    prefill: int = Field(5_000, ge=0, description="env steps of random actions before training")
    train_every: int = Field(10, ge=1, description="env steps between training calls")
    train_steps: int = Field(1, ge=1, description="gradient updates per training call")
    eval_every: int = Field(10_000, ge=1)
    eval_episodes: int = Field(1, ge=1)
    log_every: int = Field(1_000, ge=1)
    checkpoint_every: int = Field(10_000, ge=1)
    video: bool = True
    random_episodes: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of the training episodes after prefill acted by the uniform random policy: replay of "
        "mixed relevance, for reweighting to sort (their returns are logged as random_return)",
    )

    # faults and logging (run control: a resumed run may change these without --force)
    max_nonfinite: int = Field(
        10,
        ge=1,
        description="updates in a row with a NaN/inf loss or gradient (each skipped, nothing written into the model) "
        "after which the run stops, its last checkpoint from before the first of them",
    )
    wandb: bool = Field(False, description="also log metrics to Weights & Biases (needs: pip install wandb)")
    wandb_project: str = Field("reweigh", min_length=1, description="the W&B project of wandb=true")

    @model_validator(mode="after")
    def _check_env(self) -> RunConfig:
        from recipes.envs.multitask import split_names

        members = split_names(self.env) if "," in self.env else [self.env]
        for member in members:
            family = member.split(":", 1)[0]
            if family not in ENV_FAMILIES:
                from recipes.suggest import did_you_mean

                raise ValueError(
                    f"env: unknown family {family!r} in {member!r}{did_you_mean(family, ENV_FAMILIES)} (use "
                    + ", ".join(f"{f}:" for f in ENV_FAMILIES)
                    + ")"
                )
        if len({m.split(":", 1)[0] for m in members}) > 1:
            raise ValueError(f"env: the members of {self.env!r} must share one family")
        if self.distractors or self.obs_noise:
            from recipes.envs.mismatch import check_mismatch

            check_mismatch(members[0], self.pixels, self.distractors, self.obs_noise, self.obs_noise_on)
        if self.task_weights is not None and len(self.task_weights) != len(members):
            raise ValueError(
                f"task_weights: expected {len(members)} numbers, one per member of {self.env!r}, "
                f"got {self.task_weights}"
            )
        return self

    @model_validator(mode="after")
    def _check_wandb(self) -> RunConfig:
        if self.wandb and importlib.util.find_spec("wandb") is None:  # looked up, not imported
            from recipes.run.rundir import WANDB_MISSING

            raise ValueError(WANDB_MISSING)
        return self

    @property
    def num_tasks(self) -> int:
        """Members of ``env``: 1 for one environment, N for a comma list of N (a multi-task set)."""
        return len(self.env.split(","))

    def env_kwargs(self, *, evaluation: bool = False) -> dict[str, Any]:
        """Keyword arguments of ``recipes.envs.make_env`` for the training (or evaluation) environment."""
        return {
            "pixels": self.pixels,
            "size": self.image_size,
            "action_repeat": self.action_repeat,
            "time_limit": self.time_limit,
            **({"task_weights": self.task_weights} if self.task_weights is not None else {}),
            **(
                {"distractors": self.distractors, "obs_noise": self.obs_noise, "obs_noise_on": self.obs_noise_on}
                if self.distractors or self.obs_noise
                else {}
            ),
        }


def parse_value(raw: str) -> Any:
    """``--set`` values: JSON when it parses (numbers, true/false, null, lists), else the raw string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` → ``{key: parsed value}``.

    Raises:
        ValueError: for an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=16")
        out[key.strip()] = parse_value(raw)
    return out


def explain(err: ValidationError, cls: type[BaseModel]) -> str:
    """One line for the first error of ``err`` (validating ``cls``): the field, what it expected and what it got;
    for an unknown key the closest known ones."""
    first = err.errors()[0]
    field = ".".join(str(x) for x in first["loc"])
    msg = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(field, list(cls.model_fields), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"{field}: unknown setting{hint} (the settings are the fields of {cls.__module__}.{cls.__name__})"
    if not field:  # a model validator: its message names the field
        return msg
    expected = msg.replace("Input should be ", "", 1)
    if expected.startswith(("greater", "less")):
        expected = "a number " + expected
    return f"{field}: expected {expected}, got {first.get('input')!r}"


#: ``bilevel.MetaWeighter``'s arguments as the recipes' config fields name them.
WEIGHTER_FIELDS = {
    "layers": "weighter_layers",
    "hidden": "weighter_units",
    "activation": "weighter_activation",
    "norm": "weighter_norm",
    "output_norm": "weighter_output_norm",
    "scale": "weighter_scale",
    "shift": "weighter_shift",
    "group_dim": "task_embed_dim",
}

#: ``worldmodels.GaussianEnsemble``'s arguments as the recipes' config fields name them.
MODEL_FIELDS = {"layers": "model_layers", "units": "model_units", "activation": "model_activation"}


def config_kwargs(
    cfg: BaseModel,
    fn: Callable[..., Any],
    rename: dict[str, str] | None = None,
    *,
    exclude: Collection[str] = (),
    **given: Any,
) -> dict[str, Any]:
    """The keyword-only arguments of ``fn`` (a function or a class) from ``cfg``: each from the config field of its
    name, or of ``rename[name]``; those in ``given`` as given; those in ``exclude`` left out (a subclass sets them
    itself).  A sub-module built so takes every number from the config: none silently keeps ``fn``'s own default.

    Raises:
        TypeError: a keyword-only argument of ``fn`` that neither the config nor ``given`` sets, or a ``given``
            one that ``fn`` does not take.
    """
    rename = rename or {}
    params = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in exclude
    ]
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise TypeError(f"{getattr(fn, '__name__', fn)} takes no argument {unknown}")
    fields = type(cfg).model_fields
    missing = [p for p in params if p not in given and rename.get(p, p) not in fields]
    if missing:
        raise TypeError(f"{type(cfg).__name__} has no field for {getattr(fn, '__name__', fn)}'s {missing}")
    return {p: given[p] if p in given else getattr(cfg, rename.get(p, p)) for p in params}


def family_entries(entries: dict[str, dict[str, Any]], family: str) -> dict[str, Any]:
    """One preset layer's overrides for ``family``: its ``"*"`` entry (every family), then the family's own or, where
    it has none, those of the family it shares presets with (``recipes.envs.registry.EnvFamily.presets_like``)."""
    own = entries.get(family)
    if own is None:
        prefix, _, pixels = family.partition("_")
        like = ENV_FAMILIES[prefix].presets_like if prefix in ENV_FAMILIES else None
        own = entries.get(f"{like}_{pixels}" if pixels else like, {}) if like else {}
    return {**(entries.get("*", {}) if "_" not in family else {}), **own}


def preset_families(presets: Sequence[Presets]) -> list[str]:
    """The environment families a recipe runs on: those its first preset layer has an entry for under some preset,
    and those that share presets with one of them (``presets_like``)."""
    named = {f for entries in (presets[0].values() if presets else []) for f in entries if "_" not in f and f != "*"}
    return [f for f, spec in ENV_FAMILIES.items() if f in named or spec.presets_like in named]


def resolve(
    cls: type[RunConfig],
    presets: Sequence[Presets],
    env: str,
    preset: str,
    overrides: dict[str, Any] | None = None,
    **run: Any,
) -> RunConfig:
    """Build a config: ``cls`` defaults ← each preset layer for the env family ← run arguments ← ``overrides``.

    Args:
        cls: the recipe's config class.
        presets: layers of ``Presets``, applied in order; the first layer's keys are the valid preset names.
        env: the environment name (its family selects the preset entries).
        preset: the preset name.
        overrides: ``--set`` values, applied last.
        run: further fields (``steps``, ``seed``, ...), applied before ``overrides``.

    Raises:
        ValueError: naming the offending field, for unknown keys, bad values, an unknown preset or an environment
            family the presets have no entry for.
    """
    names = sorted(presets[0]) if presets else []
    if preset not in names:
        raise ValueError(f"preset: unknown {preset!r}; choose one of {names}")
    family = env.split(":", 1)[0]
    accepted = preset_families(presets)
    if presets and family not in accepted and family in ENV_FAMILIES:  # an unknown one: the config's error
        raise ValueError(f"env: {env!r} is not an environment this recipe runs on ({', '.join(accepted)})")
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    for layer in presets:
        entries = layer.get(preset, {})
        values.update(family_entries(entries, family))
        if overrides.get("pixels", values.get("pixels", False)):
            values.update(family_entries(entries, f"{family}_pixels"))
    values.update({"env": env, "preset": preset, **run})
    values.update(overrides)
    try:
        return cls(**values)
    except ValidationError as err:
        raise ValueError(explain(err, cls)) from None
