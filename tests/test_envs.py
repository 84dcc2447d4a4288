"""recipes.envs: one interface over dm_control, ALE and gymnasium with DreamerV2's step dict."""

import os

import gymnasium as gym
import numpy as np
import pytest

from recipes.envs import ensure_headless_gl, make_env
from recipes.envs import gl as envs

KEYS = {"obs", "action", "reward", "discount", "is_first", "is_last", "is_terminal"}


def _check(step: dict, env, *, first: bool) -> None:
    assert set(step) == KEYS
    assert step["obs"].shape == env.obs_shape
    assert step["obs"].dtype == (np.uint8 if env.pixels else np.float32)
    assert step["action"].shape == (env.action_dim,) and step["action"].dtype == np.float32
    assert isinstance(step["reward"], np.float32) and isinstance(step["discount"], np.float32)
    for key in ("is_first", "is_last", "is_terminal"):
        assert isinstance(step[key], bool)
    assert step["is_first"] is first
    if first:
        assert not step["action"].any() and step["reward"] == 0.0 and step["discount"] == 1.0


def _rollout(env, actions) -> list[dict]:
    out = [env.reset()]
    for a in actions:
        out.append(env.step(a))
    return out


def test_unknown_names_raise_value_error_naming_them():
    for name in (
        "cartpole_swingup",
        "mujoco:walker_walk",
        "dmc:walker_flyaway",
        "atari:notagame",
        "gym:NoSuchEnv-v0",
        "dmc:",
    ):
        with pytest.raises(ValueError, match="unknown environment") as info:
            make_env(name, seed=0)
        assert name in str(info.value)


def test_headless_gl_backend_renders():
    backend = ensure_headless_gl()
    assert backend != "disabled" and os.environ["MUJOCO_GL"] == backend
    assert envs._gl_renders(backend)


def test_headless_gl_falls_back_to_osmesa_then_disabled(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(envs, "_gl_renders", lambda backend, **_: backend == "osmesa")
    assert envs.ensure_headless_gl() == "osmesa" and os.environ["MUJOCO_GL"] == "osmesa"
    assert envs.ensure_headless_gl() == "osmesa"  # a set variable is left alone
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(envs, "_gl_renders", lambda backend, **_: False)
    with pytest.warns(RuntimeWarning, match="cannot render headless"):
        assert envs.ensure_headless_gl() == "disabled"


def test_dmc_proprio_shapes_and_defaults():
    with make_env("dmc:cartpole_swingup", seed=0, pixels=False) as env:
        assert env.obs_shape == (5,) and env.action_dim == 1 and not env.discrete and env.action_repeat == 2
        first = env.reset()
        _check(first, env, first=True)
        step = env.step(np.array([0.3]))
        _check(step, env, first=False)
        np.testing.assert_allclose(step["action"], [0.3], rtol=1e-6)
        assert 0.0 <= step["reward"] <= 2.0 and not step["is_last"]
        clipped = env.step(np.array([7.0]))  # actions live in [-1, 1]
        assert clipped["action"][0] == 1.0
        # Default episode: the suite's 1000 env steps = 500 agent steps, ended by time limit (discount 1).
        n, step = 2, clipped
        while not step["is_last"]:
            step = env.step(np.zeros(1))
            n += 1
        assert n == 500 and step["discount"] == 1.0 and not step["is_terminal"]
        with pytest.raises(RuntimeError):
            env.step(np.zeros(1))


@pytest.mark.parametrize("size", [64, 32])
def test_dmc_pixels(size):
    with make_env("dmc:cartpole_swingup", seed=0, pixels=True, size=size) as env:
        assert env.obs_shape == (3, size, size)
        first = env.reset()
        _check(first, env, first=True)
        step = env.step(np.ones(1))
        _check(step, env, first=False)
        assert step["obs"].std() > 5  # a scene, not a blank frame
        frame = env.render()
        assert frame.shape == (size, size, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, step["obs"].transpose(1, 2, 0))


def test_dmc_reward_is_summed_over_the_action_repeat():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(10, 1))
    twice = _rollout(make_env("dmc:cartpole_swingup", seed=3, action_repeat=2), actions)
    once = _rollout(make_env("dmc:cartpole_swingup", seed=3, action_repeat=1), np.repeat(actions, 2, axis=0))
    for k in range(1, 11):
        assert twice[k]["reward"] == pytest.approx(once[2 * k - 1]["reward"] + once[2 * k]["reward"], rel=1e-5)
        np.testing.assert_array_equal(twice[k]["obs"], once[2 * k]["obs"])


def test_time_limit_truncates_with_discount_one():
    with make_env("dmc:walker_walk", seed=0, time_limit=4) as env:
        for _ in range(2):  # and again after a reset
            steps = _rollout(env, [np.zeros(env.action_dim)] * 4)
            assert [s["is_last"] for s in steps] == [False] * 4 + [True]
            assert steps[-1]["discount"] == 1.0 and not steps[-1]["is_terminal"]


def test_terminal_has_discount_zero():
    with make_env("gym:CartPole-v1", seed=0) as env:  # pushing right always topples the pole: a true terminal
        assert env.discrete and env.action_dim == 2 and env.obs_shape == (4,)
        _check(env.reset(), env, first=True)
        for _ in range(100):
            step = env.step(np.array([0.0, 1.0], np.float32))
            if step["is_last"]:
                break
        assert step["is_last"] and step["is_terminal"] and step["discount"] == 0.0


def test_same_seed_same_observations():
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, size=(8, 1))
    for kwargs in ({"pixels": False}, {"pixels": True, "size": 32}):
        a = _rollout(make_env("dmc:cartpole_swingup", seed=7, **kwargs), actions)
        b = _rollout(make_env("dmc:cartpole_swingup", seed=7, **kwargs), actions)
        c = _rollout(make_env("dmc:cartpole_swingup", seed=8, **kwargs), actions)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x["obs"], y["obs"])
            assert x["reward"] == y["reward"]
        assert not np.array_equal(a[0]["obs"], c[0]["obs"])


def test_atari_pong_one_hot_grayscale():
    env = make_env("atari:pong", seed=0)
    assert env.discrete and env.action_dim == 6 and env.obs_shape == (1, 64, 64) and env.action_repeat == 4
    assert env.time_limit == 27000
    rng = np.random.default_rng(0)
    onehots = np.eye(env.action_dim, dtype=np.float32)[rng.integers(0, env.action_dim, size=30)]
    steps = _rollout(env, onehots)
    _check(steps[0], env, first=True)
    for s, a in zip(steps[1:], onehots, strict=True):
        _check(s, env, first=False)
        np.testing.assert_array_equal(s["action"], a)
    assert steps[-1]["obs"].std() > 5
    assert env.render().shape == (210, 160, 3)
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.zeros(3))
    again = _rollout(make_env("atari:pong", seed=0), onehots)  # sticky actions and no-ops are seeded
    for x, y in zip(steps, again, strict=True):
        np.testing.assert_array_equal(x["obs"], y["obs"])
    env.close()


def test_atari_time_limit():
    with make_env("atari:pong", seed=1, time_limit=3) as env:
        steps = _rollout(env, [np.eye(6, dtype=np.float32)[0]] * 3)
        assert [s["is_last"] for s in steps] == [False, False, False, True]
        assert steps[-1]["discount"] == 1.0


def test_gym_pendulum_rescales_actions_and_sums_rewards():
    with make_env("gym:Pendulum-v1", seed=5) as env:
        assert env.obs_shape == (3,) and env.action_dim == 1 and not env.discrete and env.action_repeat == 1
        first = env.reset()
        _check(first, env, first=True)
        raw = gym.make("Pendulum-v1")
        obs, _ = raw.reset(seed=5)
        np.testing.assert_allclose(first["obs"], obs, rtol=1e-6)
        for a in (0.5, -1.0, 1.0):  # [-1, 1] → Pendulum's [-2, 2]
            step = env.step(np.array([a]))
            obs, reward, *_ = raw.step(np.array([2.0 * a], np.float32))
            np.testing.assert_allclose(step["obs"], obs, rtol=1e-6)
            assert step["reward"] == pytest.approx(reward, rel=1e-6)
        # Default episode: the id's own 200 steps, a truncation.
        n = 3
        while not step["is_last"]:
            step = env.step(np.zeros(1))
            n += 1
        assert n == 200 and step["discount"] == 1.0 and not step["is_terminal"]
    actions = np.linspace(-1, 1, 6)[:, None]
    twice = _rollout(make_env("gym:Pendulum-v1", seed=2, action_repeat=2), actions)
    once = _rollout(make_env("gym:Pendulum-v1", seed=2), np.repeat(actions, 2, axis=0))
    for k in range(1, 7):
        assert twice[k]["reward"] == pytest.approx(once[2 * k - 1]["reward"] + once[2 * k]["reward"], rel=1e-5)
    short = _rollout(make_env("gym:Pendulum-v1", seed=2, time_limit=3), actions[:3])
    assert [s["is_last"] for s in short] == [False, False, False, True] and short[-1]["discount"] == 1.0
