"""Objective-mismatch options: distractor dimensions and observation noise (recipes.envs.mismatch)."""

import numpy as np
import pytest

from recipes.cli import main
from recipes.envs import make_env
from recipes.envs.mismatch import MismatchEnv
from recipes.envs.multitask import MultiTaskEnv


def _rollout(env, actions):
    steps = [env.reset()]
    for a in actions:
        steps.append(env.step(a))
        if steps[-1]["is_last"]:
            break
    return np.stack([s["obs"] for s in steps]), [s["reward"] for s in steps]


def test_distractors_are_appended_and_leave_the_env_as_it_was():
    plain = make_env("gym:Pendulum-v1", seed=3)
    env = make_env("gym:Pendulum-v1", seed=3, distractors=6)
    assert isinstance(env, MismatchEnv) and env.obs_shape == (3 + 6,) and env.action_dim == 1
    actions = np.random.default_rng(0).uniform(-1, 1, (50, 1))
    obs, rewards = _rollout(env, actions)
    want_obs, want_rewards = _rollout(plain, actions)
    np.testing.assert_array_equal(obs[:, :3], want_obs)  # the real dimensions first, unchanged
    assert rewards == want_rewards and obs.dtype == np.float32


def test_distractors_ignore_the_actions_and_repeat_with_the_seed():
    def distractors(seed, actions):
        return _rollout(make_env("gym:Pendulum-v1", seed=seed, distractors=4), actions)[0][:, 3:]

    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (40, 1)), rng.uniform(-1, 1, (40, 1))
    np.testing.assert_array_equal(distractors(5, a), distractors(5, b))
    assert not np.allclose(distractors(5, a), distractors(6, a))  # another seed: other noise


def test_distractors_are_predictable_at_unit_variance():
    """A linear map of d_t predicts d_{t+1} up to the injected noise: R² = mean ρ² ≥ 0.9; each coordinate keeps
    unit variance."""
    env = make_env("gym:Pendulum-v1", seed=0, distractors=8, time_limit=2000)
    obs, _ = _rollout(env, np.zeros((2000, 1)))
    d = obs[:, 3:].astype(np.float64)
    coef, *_ = np.linalg.lstsq(d[:-1], d[1:], rcond=None)
    residual = d[1:] - d[:-1] @ coef
    r2 = 1 - residual.var(0) / d[1:].var(0)
    assert (r2 > 0.85).all() and r2.mean() == pytest.approx(np.mean(env.rho**2), abs=0.05)
    assert np.abs(d.std(0) - 1).max() < 0.35  # long-memory processes: 2000 steps estimate the std loosely


def test_episodes_differ_and_training_and_evaluation_share_the_oscillators():
    env = make_env("gym:Pendulum-v1", seed=0, distractors=2)
    first = env.reset()["obs"][3:]
    second = env.reset()["obs"][3:]
    assert not np.allclose(first, second)
    other = make_env("gym:Pendulum-v1", seed=10_000, distractors=2)  # the run's evaluation env
    np.testing.assert_array_equal(other.rho, env.rho)
    np.testing.assert_array_equal(other.sin, env.sin)


@pytest.mark.parametrize(
    ("on", "noisy_state", "noisy_distractors"),
    [("state", True, False), ("distractors", False, True), ("all", True, True)],
)
def test_observation_noise_goes_where_asked(on, noisy_state, noisy_distractors):
    clean = make_env("gym:Pendulum-v1", seed=2, distractors=2)
    noisy = make_env("gym:Pendulum-v1", seed=2, distractors=2, obs_noise=0.5, obs_noise_on=on)
    actions = np.zeros((300, 1))
    a, _ = _rollout(clean, actions)
    b, _ = _rollout(noisy, actions)
    diff = b - a
    assert (diff[:, :3].std() == pytest.approx(0.5, rel=0.15)) == noisy_state
    assert (np.abs(diff[:, 3:]).max() > 0) == noisy_distractors


def test_noise_alone_on_the_state():
    env = make_env("gym:Pendulum-v1", seed=0, obs_noise=0.1)
    assert isinstance(env, MismatchEnv) and env.obs_shape == (3,)


def test_each_member_of_a_set_gets_the_distractors():
    env = make_env("dmc:walker_stand,walker_walk", seed=0, distractors=2)
    assert isinstance(env, MultiTaskEnv) and env.obs_shape == (24 + 2,)
    assert env.reset()["obs"].shape == (26,)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("gym:Pendulum-v1", {"distractors": 3}, "even"),
        ("gym:Pendulum-v1", {"distractors": -2}, "even"),
        ("gym:Pendulum-v1", {"obs_noise": -1.0}, "obs_noise"),
        ("gym:Pendulum-v1", {"obs_noise": 0.1, "obs_noise_on": "distractors"}, "needs distractors"),
        ("gym:Pendulum-v1", {"obs_noise": 0.1, "obs_noise_on": "pixels"}, "obs_noise_on"),
        ("dmc:cartpole_swingup", {"distractors": 2, "pixels": True}, "vector observations"),
        ("admrl:halfcheetah-vel", {"distractors": 2}, "vector observations"),
    ],
)
def test_options_that_cannot_apply_raise_one_line(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        make_env(name, seed=0, **kwargs)
    assert "\n" not in str(err.value)


def test_cli_refuses_odd_distractors_before_writing(tmp_path, capsys):
    logdir = tmp_path / "run"
    argv = ["run", "sac", "--env", "gym:Pendulum-v1", "--steps", "10", "--logdir", str(logdir), "--set"]
    assert main([*argv, "distractors=3"]) == 2
    assert "distractors" in capsys.readouterr().err and not logdir.exists()


@pytest.mark.parametrize("recipe", ["dreamerv2", "tempo"])
def test_dreamer_agents_report_their_reconstruction_on_state_and_distractors(recipe):
    import torch

    from recipes.dreamer.dreamerv2 import DreamerAgent
    from recipes.dreamer.tempo import TempoAgent
    from recipes.registry import resolve

    tiny = {"deter": 8, "stoch": 3, "hidden": 8, "mlp_units": 8, "ac_units": 8, "batch_size": 2, "seq_len": 4}
    cfg = resolve("dmc:cartpole_swingup", "cpu", {**tiny, "distractors": 2}, recipe=recipe)
    torch.manual_seed(0)
    agent = {"dreamerv2": DreamerAgent, "tempo": TempoAgent}[recipe](cfg, (5 + 2,), 1, False)
    batch = {
        "obs": torch.randn(2, 4, 7),
        "action": torch.rand(2, 4, 1) * 2 - 1,
        "reward": torch.rand(2, 4),
        "is_first": torch.tensor([[True, False, False, False]] * 2),
    }
    batch["obs"][..., 5:] *= 10  # the distractors far from the untrained decoder's outputs
    metrics = agent.train_step(batch)
    assert 0 < metrics["model/obs_mse_state"] < metrics["model/obs_mse_distractors"]
