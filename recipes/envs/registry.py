"""The environment families: one entry a family, everything ``make_env``, the configs and the CLI need of it.

A new family is one module (its ``Env`` subclass and a maker) plus one line here.  Recipes keep their presets per
family in their own configs; a family with ``presets_like`` set uses another family's presets wherever a recipe has
none of its own, so that it needs no entry in any recipe's tables (a test checks that every family a recipe runs on
has presets there, directly or so).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _load(target: str) -> Callable[..., Any]:
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class EnvFamily:
    """One environment family (the prefix of ``FAMILY:NAME``).

    Attributes:
        prefix: what comes before the colon, e.g. ``dmc``.
        maker: ``"module:function"`` of ``maker(name, *, seed, pixels, size, action_repeat, time_limit, **options)
            -> Env`` (``name`` is what comes after the colon); imported on use, so a family's dependencies load
            only when one of its environments is made.
        names: what comes after the colon, for help texts (``DOMAIN_TASK``).
        action_repeat: env steps per agent step when a config or caller gives none.
        pixels: whether observations are pixels when a caller gives none.
        options: keywords of ``make_env`` that only this family takes (``meta``: ``task_switch``, ``split``).
        presets_like: the family whose recipe presets apply where a recipe's preset table has no entry for this
            one (None: it needs its own).
        termination: ``"module:function"`` of ``termination(name) -> fn | None``, the termination function of
            ``prefix:name`` for model rollouts (``recipes.envs.terminations``); None: the family has none.
    """

    prefix: str
    maker: str
    names: str
    action_repeat: int
    pixels: bool
    options: tuple[str, ...] = ()
    presets_like: str | None = None
    termination: str | None = None

    def make(self, name: str, **kwargs: Any) -> Any:
        """``maker(name, **kwargs)``."""
        return _load(self.maker)(name, **kwargs)

    def termination_fn(self, name: str) -> Any:
        """The termination function of ``prefix:name`` for model rollouts (None: episodes end by time limit only).

        Raises:
            ValueError: the family or the name has none.
        """
        if self.termination is None:
            raise ValueError(
                f"env: no termination function is known for '{self.prefix}:{name}' (needed by model "
                f"rollouts): the {self.prefix} family declares none"
            )
        return _load(self.termination)(name)

    @property
    def usage(self) -> str:
        """``prefix:NAMES``, as help texts show it."""
        return f"{self.prefix}:{self.names}"


#: Every environment family, by prefix.
ENV_FAMILIES: dict[str, EnvFamily] = {
    f.prefix: f
    for f in (
        EnvFamily("dmc", "recipes.envs.dmc:DMCEnv", "DOMAIN_TASK", action_repeat=2, pixels=False),
        EnvFamily("atari", "recipes.envs.atari:make_atari_env", "GAME", action_repeat=4, pixels=True),
        EnvFamily("gym", "recipes.envs.gym:GymEnv", "ID", 1, False, termination="recipes.envs.gym:termination"),
        EnvFamily(
            "meta",
            "recipes.envs.metarl:make_meta_env",
            "FAMILY",
            1,
            False,
            options=("task_switch", "split"),
            termination="recipes.envs.metarl:termination",
        ),
        EnvFamily(
            "admrl",
            "recipes.envs.admrl:make_admrl_env",
            "FAMILY",
            1,
            False,
            termination="recipes.envs.admrl:termination",
        ),
        # Super Mario Bros: "We reuse all hyperparameters from the Atari experiments" (pre-training thesis §5.2)
        EnvFamily("mario", "recipes.envs.mario:make_mario_env", "WORLD-STAGE", 4, True, presets_like="atari"),
    )
}


def env_usage() -> str:
    """Every family's ``prefix:NAMES``, for help texts: ``dmc:DOMAIN_TASK, atari:GAME, ...``."""
    return ", ".join(f.usage for f in ENV_FAMILIES.values())


def termination_fn(env: str) -> Any:
    """The termination function of the environment ``env`` (``FAMILY:NAME``) for model rollouts: a function of
    next observations [..., O] to done [...] (bool), or None where episodes end by time limit only.

    Raises:
        ValueError: an unknown family, or an environment without a known termination function.
    """
    prefix, _, name = env.partition(":")
    if prefix not in ENV_FAMILIES:
        raise ValueError(f"env: unknown family {prefix!r} in {env!r}")
    return ENV_FAMILIES[prefix].termination_fn(name)
