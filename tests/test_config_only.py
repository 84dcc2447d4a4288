"""Every number of a run lives in its config: each recipe builds the library's modules (weighters, world models,
ensembles, agents) with every defaulted argument given, so none silently keeps the constructor's own default."""

import functools
import inspect
from collections.abc import Callable

import pytest
import torch

from bilevel import MetaWeighter
from recipes.admrl.admrl import AdmrlTrainer
from recipes.admrl.config import AdmrlConfig
from recipes.agents.dreamer_ac import ActorCritic
from recipes.agents.ppo import PPO
from recipes.agents.sac import SAC
from recipes.agents.trpo import TRPO
from recipes.dreamer.dreamerv2 import DreamerAgent
from recipes.dreamer.tempo import TempoAgent
from recipes.envs import make_env
from recipes.examples import noisy_labels
from recipes.m3po.m3po import M3POLearner
from recipes.registry import resolve
from worldmodels import GaussianEnsemble, HistoryEnsemble, RSSMWorldModel

LIBRARY = (MetaWeighter, GaussianEnsemble, HistoryEnsemble, RSSMWorldModel, ActorCritic, SAC, PPO, TRPO)

#: arguments a recipe may leave at their default because the default switches the feature off: a weighter without
#: task groups has no group embedding to size
OFF_SWITCHES = {MetaWeighter: {"groups", "group_dim"}}


class _Stop(Exception):
    """Raised by the spy to end a run once the module under test is built."""


def _spy(monkeypatch: pytest.MonkeyPatch, stop_at: type | None = None) -> list[tuple[type, set[str]]]:
    """Record (class, the argument names given by keyword) of every construction of a ``LIBRARY`` class."""
    built: list[tuple[type, set[str]]] = []

    def spy(cls: type) -> Callable[..., None]:
        @functools.wraps(cls.__init__)  # the signature stays the constructor's (config_kwargs reads it)
        def init(self, *args, **kwargs):
            built.append((cls, set(kwargs)))
            original(self, *args, **kwargs)
            if cls is stop_at:
                raise _Stop

        original = cls.__init__
        return init

    for cls in LIBRARY:
        monkeypatch.setattr(cls, "__init__", spy(cls))
    return built


def _defaults_left(cls: type, given: set[str]) -> list[str]:
    """The defaulted keyword arguments of ``cls`` (its own signature) that a construction did not give."""
    params = inspect.signature(cls.__init__).parameters.values()
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    defaulted = {p.name for p in params if p.kind in keyword and p.default is not inspect.Parameter.empty}
    return sorted(defaulted - given - OFF_SWITCHES.get(cls, set()))


def _check(built: list[tuple[type, set[str]]], expect: set[type]) -> None:
    assert {cls for cls, _ in built} >= expect
    left = {cls.__name__: _defaults_left(cls, given) for cls, given in built}
    assert {k: v for k, v in left.items() if v} == {}


def _dreamer(recipe: str):
    cfg = resolve("dmc:cartpole_swingup", "cpu", {"deter": 8, "stoch": 3, "hidden": 8}, recipe=recipe)
    agent = {"dreamerv2": DreamerAgent, "tempo": TempoAgent}[recipe]
    agent(cfg, (5,), 1, False)


def _m3po(recipe: str):
    cfg = resolve("meta:halfcheetah-fwd-bwd", "cpu", {"weighting": recipe == "m3po"}, recipe=recipe)
    M3POLearner(cfg, 4, 2, 100)


def _admrl(policy_opt: str):
    cfg = AdmrlConfig(env="admrl:halfcheetah-vel", policy_opt=policy_opt)
    AdmrlTrainer(cfg, make_env(cfg.env, seed=0)).new_ppo()


@pytest.mark.parametrize(
    ("build", "arg", "expect"),
    [
        (_dreamer, "dreamerv2", {RSSMWorldModel, ActorCritic}),
        (_dreamer, "tempo", {RSSMWorldModel, ActorCritic, MetaWeighter}),
        (_m3po, "mbpo", {SAC, HistoryEnsemble, GaussianEnsemble}),
        (_m3po, "m3po", {SAC, HistoryEnsemble, GaussianEnsemble, MetaWeighter}),
        (_admrl, "ppo", {GaussianEnsemble, PPO}),
        (_admrl, "trpo", {GaussianEnsemble, TRPO}),
    ],
)
def test_recipes_give_every_argument_from_the_config(monkeypatch, build, arg, expect):
    torch.manual_seed(0)
    built = _spy(monkeypatch)
    build(arg)
    _check(built, expect)


def test_the_example_gives_every_weighter_argument_from_its_config(monkeypatch):
    built = _spy(monkeypatch, stop_at=MetaWeighter)
    with pytest.raises(_Stop):
        noisy_labels.run(noisy_labels.NoisyLabelsConfig(epochs=1))
    _check(built, {MetaWeighter})


def test_the_spy_sees_a_default_left_out(monkeypatch):
    built = _spy(monkeypatch)
    MetaWeighter(3, layers=1, hidden=4)
    assert _defaults_left(*built[0]) == ["activation", "norm", "output_norm", "scale", "shift"]
