"""The recipe registry: adding a recipe is one ``Recipe`` entry in ``RECIPES``.

The CLI (``reweigh run NAME``), ``reweigh compare`` and the benchmarks look recipes up here; nothing else lists
them.  Training functions and report hooks are named as ``module:function`` and imported on use, so the CLI starts
without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.admrl.config import PRESETS as ADMRL_PRESETS
from recipes.admrl.config import AdmrlConfig, GaussTaskConfig, UniformTaskConfig
from recipes.dreamer.config import PRESETS as DREAMER_PRESETS
from recipes.dreamer.config import TEMPO_PRESETS, DreamerConfig, TempoConfig
from recipes.m3po.config import PRESETS as M3PO_PRESETS
from recipes.m3po.config import SAC_PRESETS, M3POConfig, MBPOConfig, SACConfig
from recipes.run.config import Presets, RunConfig
from recipes.run.config import resolve as resolve_config


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Tool:
    """An after-run subcommand of a recipe: ``reweigh NAME DIR`` computes, then prints.

    Attributes:
        compute: ``"module:function"`` of ``compute(logdir, **options) -> dict`` (data, no printing).
        text: ``"module:function"`` of ``text(result, **options) -> list[str]``, the lines the CLI prints.
        compute_options, text_options: which of the subcommand's options each takes.
    """

    compute: str
    text: str
    compute_options: tuple[str, ...] = ()
    text_options: tuple[str, ...] = ()

    def run(self, logdir: Path, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The result for ``logdir`` and its lines, each function given its own ``options``."""
        result = _load(self.compute)(logdir, **{k: options[k] for k in self.compute_options})
        return result, _load(self.text)(result, **{k: options[k] for k in self.text_options})


#: ``reweigh inspect-actor``: the actor's saturation and its deterministic vs sampled returns (Dreamer family).
INSPECT_ACTOR = Tool(
    "recipes.dreamer.actor_report:inspect_actor",
    "recipes.dreamer.actor_report:actor_lines",
    compute_options=("episodes", "sequences", "seed"),
)


@dataclass(frozen=True)
class Recipe:
    """One runnable recipe.

    Attributes:
        name: what ``reweigh run NAME`` takes.
        config: its pydantic config class (a ``recipes.run.config.RunConfig``).
        presets: preset layers applied in order by ``recipes.run.config.resolve``.
        train: ``"module:function"`` of ``train(cfg, logdir, *, force, progress, recipe) -> summary`` (``recipe``
            is this entry's name, so one function may serve several entries).
        report: optional ``"module:function"`` of ``report(logdirs, path, title) -> Path | None``, a recipe's own
            figure over several seeds' run directories; ``reweigh compare`` calls it for every variant.
        tools: the recipe's after-run subcommands, ``reweigh NAME DIR`` for one of its runs, by NAME (tempo:
            ``inspect-weights``, TEMPO Table 2; the Dreamer family: ``inspect-actor``).
        summary: one line for ``reweigh run --help``.
        metric: the ``metrics.jsonl`` key ``reweigh compare`` judges runs by (``eval_return``; AdMRL: ``worst_gap``).
        maximize: whether a higher ``metric`` is better.
    """

    name: str
    config: type[RunConfig]
    presets: tuple[Presets, ...]
    train: str
    report: str | None = None
    tools: dict[str, Tool] = field(default_factory=dict)
    summary: str = ""
    metric: str = "eval_return"
    maximize: bool = True

    def resolve(self, env: str, preset: str, overrides: dict[str, Any] | None = None, **run: Any) -> RunConfig:
        """This recipe's config for ``env`` and ``preset`` (see ``recipes.run.config.resolve``)."""
        return resolve_config(self.config, self.presets, env, preset, overrides, **run)

    def run(self, cfg: RunConfig, logdir: Path, *, force: bool = False, progress: bool = True) -> dict[str, Any]:
        """Train (or resume) one run; returns ``{"env_steps", "updates", "eval_return"}``."""
        return _load(self.train)(cfg, logdir, force=force, progress=progress, recipe=self.name)

    def tool(self, name: str, logdir: Path) -> Tool:
        """The after-run subcommand ``name`` for one of this recipe's runs in ``logdir``.

        Raises:
            ValueError: the recipe has no such subcommand (names the recipes that do).
        """
        if name not in self.tools:
            have = [r.name for r in RECIPES.values() if name in r.tools]
            raise ValueError(f"{name}: {logdir} is a {self.name} run, not a {' or '.join(have)} run")
        return self.tools[name]

    def make_report(self, logdirs: Sequence[Path], path: Path, title: str) -> Path | None:
        """The recipe's own figure over ``logdirs`` at ``path`` (``None`` without a report hook or data)."""
        return None if self.report is None else _load(self.report)(list(logdirs), path, title)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "dreamerv2",
            DreamerConfig,
            (DREAMER_PRESETS,),
            "recipes.dreamer.dreamerv2:train",
            tools={"inspect-actor": INSPECT_ACTOR},
            summary="DreamerV2: RSSM world model (uniform weights) + actor-critic in imagination",
        ),
        Recipe(
            "tempo",
            TempoConfig,
            (DREAMER_PRESETS, TEMPO_PRESETS),
            "recipes.dreamer.tempo:train",
            report="recipes.dreamer.analysis:plot_diagnostics",
            tools={
                "inspect-weights": Tool(
                    "recipes.dreamer.analysis:inspect_weights",
                    "recipes.dreamer.analysis:inspection_lines",
                    compute_options=("sequences", "seed", "gain"),
                    text_options=("show",),
                ),
                "inspect-actor": INSPECT_ACTOR,
            },
            summary="TEMPO: DreamerV2 with a meta-weighted world model (V-VAML upper loss)",
        ),
        Recipe(
            "m3po",
            M3POConfig,
            (M3PO_PRESETS,),
            "recipes.m3po.m3po:train",
            summary="M3PO: history-conditioned ensemble meta-model, SAC meta-policy, branched rollouts",
        ),
        Recipe(
            "mbpo",
            MBPOConfig,
            (M3PO_PRESETS,),
            "recipes.m3po.m3po:train",
            summary="MBPO: M3PO without histories (L = 0) and with a constant real share",
        ),
        Recipe(
            "sac",
            SACConfig,
            (M3PO_PRESETS, SAC_PRESETS),
            "recipes.m3po.m3po:train",
            summary="SAC: model-free, with M3PO's history-conditioned networks",
        ),
        Recipe(
            "admrl",
            AdmrlConfig,
            (ADMRL_PRESETS,),
            "recipes.admrl.run:train",
            summary="AdMRL: adversarial task search by implicit task gradients over a learned model",
            metric="worst_gap",
            maximize=False,
        ),
        Recipe(
            "mb-unif",
            UniformTaskConfig,
            (ADMRL_PRESETS,),
            "recipes.admrl.run:train",
            summary="AdMRL's baseline: the same model-based loop on uniformly drawn tasks",
            metric="worst_gap",
            maximize=False,
        ),
        Recipe(
            "mb-gauss",
            GaussTaskConfig,
            (ADMRL_PRESETS,),
            "recipes.admrl.run:train",
            summary="AdMRL's baseline: the same model-based loop on Gaussian-drawn tasks",
            metric="worst_gap",
            maximize=False,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``.

    Raises:
        ValueError: naming the field ``recipe`` and listing the known names.
    """
    if name not in RECIPES:
        from recipes.suggest import did_you_mean

        raise ValueError(f"recipe: unknown {name!r}{did_you_mean(name, RECIPES)} (choose one of {', '.join(RECIPES)})")
    return RECIPES[name]


def settings_help(name: str, env: str | None, preset: str, width: int = 100) -> str:
    """The settings of recipe ``name`` — every ``--set`` key — with its value for ``env`` and ``preset`` (where that
    differs from the field's default, the default too) and its description, as ``reweigh run NAME --help`` prints
    them.  An ``env`` or ``preset`` that does not resolve shows the field defaults.

    Raises:
        ValueError: an unknown recipe.
    """
    import textwrap

    recipe = get_recipe(name)
    try:
        cfg: Any = recipe.resolve(env or "dmc:cartpole_swingup", preset)
        where = f"with --env {cfg.env} --preset {preset}"
    except ValueError:
        cfg, where = None, "(field defaults: --env or --preset did not resolve)"
    lines = [f"settings of {name} {where} (--set KEY=VALUE):"]
    for key, spec in recipe.config.model_fields.items():
        default = None if spec.is_required() else spec.get_default(call_default_factory=True)
        value = getattr(cfg, key) if cfg is not None else default
        note = f"  (default {default!r})" if value != default else ""
        lines.append(f"  {key} = {value!r}{note}")
        if spec.description:
            lines += textwrap.wrap(spec.description, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def resolve(
    env: str, preset: str, overrides: dict[str, Any] | None = None, *, recipe: str = "dreamerv2", **run: Any
) -> RunConfig:
    """The config of ``recipe`` (see ``Recipe.resolve``).

    Raises:
        ValueError: naming the offending field (or ``recipe``).
    """
    return get_recipe(recipe).resolve(env, preset, overrides, **run)
