"""The environment-family registry: one module plus one registry line make a family that every part accepts, and
every recipe has presets for every family it runs on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipes.cli import build_parser, main
from recipes.envs import make_env
from recipes.envs.base import Env
from recipes.envs.registry import ENV_FAMILIES, EnvFamily
from recipes.registry import RECIPES, resolve
from recipes.run.config import preset_families


class ToyEnv(Env):
    """A one-dimensional random walk: the family's whole module."""

    family = "toy"

    def __init__(self, name: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None):
        self.name, self.rng, self.repeat = name, np.random.default_rng(seed), action_repeat
        self.obs_shape, self.action_dim, self.discrete = (1,), 1, False

    def reset(self) -> dict:
        return {"obs": np.zeros(1, np.float32), "action": np.zeros(1, np.float32), "reward": np.float32(0.0)}

    def close(self) -> None:
        pass


@pytest.fixture
def toy_family(monkeypatch):
    """The registry line of the toy family, sharing gym's presets."""
    monkeypatch.setitem(
        ENV_FAMILIES, "toy", EnvFamily("toy", f"{__name__}:ToyEnv", "NAME", 3, False, presets_like="gym")
    )


def test_a_new_family_is_one_module_and_one_registry_line(toy_family):
    env = make_env("toy:walk", seed=0)
    assert isinstance(env, ToyEnv) and env.name == "walk" and env.repeat == 3  # the family's default repeat
    assert make_env("toy:walk", seed=0, action_repeat=1).repeat == 1
    cfg = resolve("toy:walk", "cpu", recipe="sac")  # sac runs on gym, so on toy: gym's cpu presets
    assert cfg.sac_updates == resolve("gym:Pendulum-v1", "cpu", recipe="sac").sac_updates == 1
    assert "toy" in preset_families(RECIPES["sac"].presets) and "toy" in preset_families(RECIPES["dreamerv2"].presets)
    assert "toy" not in preset_families(RECIPES["admrl"].presets)
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    assert "toy:NAME" in next(a.help for a in run._actions if "--env" in a.option_strings)


def test_a_recipe_refuses_a_family_it_has_no_presets_for(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"env: 'dmc:cartpole_swingup' is not an environment this recipe runs on"):
        resolve("dmc:cartpole_swingup", "cpu", recipe="m3po")
    assert main(["run", "admrl", "--env", "gym:Pendulum-v1", "--logdir", str(tmp_path / "r")]) == 2
    assert "(admrl)" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_family_options_are_refused_for_other_families():
    with pytest.raises(ValueError, match=r"task_switch apply to meta: environments only, not 'gym:Pendulum-v1'"):
        make_env("gym:Pendulum-v1", seed=0, task_switch=10)
    with pytest.raises(ValueError, match=r"unknown environment 'toy:walk'.*mario:WORLD-STAGE"):
        make_env("toy:walk", seed=0)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_family_a_recipe_runs_on_has_its_presets_in_every_layer(name):
    """No family falls silently to the field defaults: every non-empty preset layer of every preset has an entry
    for every family the recipe runs on (its own, ``*`` or that of the family it shares presets with)."""
    recipe = RECIPES[name]
    families = preset_families(recipe.presets)
    assert families, name
    for layer in recipe.presets:
        for preset, entries in layer.items():
            if layer is not recipe.presets[0] and not entries:
                continue  # a layer that changes nothing under this preset
            for family in families:
                own = family in entries or "*" in entries or ENV_FAMILIES[family].presets_like in entries
                assert own, f"{name}: preset {preset!r} has no entry for {family}"


#: Recipes whose model rollouts need each environment's termination function.
MODEL_BASED = ("m3po", "mbpo", "admrl", "mb-unif", "mb-gauss")


@pytest.mark.parametrize("name", MODEL_BASED)
def test_every_family_a_model_based_recipe_runs_on_declares_its_terminations(name):
    for family in preset_families(RECIPES[name].presets):
        assert ENV_FAMILIES[family].termination is not None, f"{name} runs on {family}: no termination functions"


def test_termination_functions_come_from_the_family_modules(toy_family):
    from recipes.envs.registry import termination_fn

    assert termination_fn("meta:halfcheetah-fwd-bwd") is None  # episodes end by time limit only
    walker = termination_fn("gym:Walker2d-v5")
    assert walker(torch.tensor([[1.2, 0.0], [0.5, 0.0], [1.2, 1.5]])).tolist() == [False, True, True]
    assert termination_fn("admrl:hopper2d") is not None
    with pytest.raises(ValueError, match=r"'gym:Humanoid-v5'.*known: gym:HalfCheetah-v5"):
        termination_fn("gym:Humanoid-v5")
    with pytest.raises(ValueError, match="the toy family declares none"):
        termination_fn("toy:walk")
