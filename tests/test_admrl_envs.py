"""admrl: reward families: rewards recomputed from MuJoCo's own state, the goal box, torch = numpy, ∂r/∂ψ, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recipes.envs import make_env
from recipes.envs.admrl import ADMRL_FAMILIES, FAMILIES, check_psi

DT = {"Ant-v5": 0.05, "Hopper-v5": 0.008, "Walker2d-v5": 0.008, "HalfCheetah-v5": 0.05}


def _independent_reward(family: str, spec, before, after, z_after, action, psi, obs):
    """The family's reward from the simulator's positions (module docstring of recipes.envs.admrl)."""
    dt = DT[spec.env_id]
    v = (after - before) / dt
    goal = np.asarray(spec.low) + (psi + 1) / 2 * (np.asarray(spec.high) - np.asarray(spec.low))
    ctrl = spec.ctrl * float(np.sum(action**2))
    if family == "ant2d":
        return 5.05 - ctrl - abs(v[0] - goal[0]) - abs(v[1] - goal[1])
    if family == "ant3d":
        return 5.05 - ctrl - abs(v[0] - goal[0]) - abs(v[1] - goal[1]) - 30 * abs(z_after - goal[2])
    if family in ("hopper2d", "walker2d"):
        return 10.0 - ctrl - abs(v[0] - goal[0]) - 5 * abs(z_after - goal[1])
    if family == "halfcheetah-vel":
        return -ctrl - abs(v[0] - goal[0])
    return None


@pytest.mark.parametrize("family", ADMRL_FAMILIES)
def test_reward_matches_the_simulator_state(family):
    env = make_env(f"admrl:{family}", seed=3)
    spec = FAMILIES[family]
    rng = np.random.default_rng(0)
    psi = rng.uniform(-1, 1, spec.dim)
    env.set_task(psi)
    np.testing.assert_array_equal(env.get_task(), psi)
    out = env.reset()
    assert out["obs"].shape == env.obs_shape
    data = env._env.unwrapped.data
    height_index = 1 if spec.env_id in ("Hopper-v5", "Walker2d-v5") else 2
    checked = 0
    # Ant-v5's velocities difference the torso body's xpos (kinematics from the start of MuJoCo's last substep);
    # Hopper, Walker2d and HalfCheetah difference qpos[0].
    ant = spec.env_id == "Ant-v5"

    def xy():
        return data.body("torso").xpos[:2].copy() if ant else data.qpos[:2].copy()

    for _ in range(30):
        action = rng.uniform(-1, 1, env.action_dim)
        before = xy()
        out = env.step(action)
        after, z = xy(), float(data.qpos[height_index])
        expect = _independent_reward(family, spec, before, after, z, action, psi, out["obs"])
        if expect is None:  # cheetah-highdim: ψᵀ normalised s′ with s′ = (qpos, qvel) including x
            s1 = np.concatenate([data.qpos, data.qvel])
            np.testing.assert_allclose(out["obs"], s1, rtol=1e-5, atol=1e-5)
            expect = float(psi @ ((s1 - env.state_mean) / env.state_std)) - 0.05 * float(np.sum(action**2))
        assert float(out["reward"]) == pytest.approx(expect, rel=1e-4, abs=1e-4)
        checked += 1
        if out["is_last"]:
            break
    assert checked >= 5
    env.close()


def test_features_are_in_the_observation_and_the_goal_box_is_affine():
    env = make_env("admrl:ant3d", seed=0)
    assert env.obs_shape == (27 + 3,)  # Ant-v5 without cfrc_ext: 27, then (v_x, v_y, z)
    out = env.reset()
    assert out["obs"][-1] == pytest.approx(float(env._env.unwrapped.data.qpos[2]), abs=1e-6)
    np.testing.assert_allclose(env.goal(np.array([-1.0, -1.0, -1.0])), [-3.0, -3.0, 0.4])
    np.testing.assert_allclose(env.goal(np.array([1.0, 1.0, 1.0])), [3.0, 3.0, 0.6])
    np.testing.assert_allclose(env.goal(np.zeros(3)), [0.0, 0.0, 0.5])
    env.close()


@pytest.mark.parametrize("family", ["hopper2d", "cheetah-highdim"])
def test_torch_reward_equals_numpy_and_is_differentiable_in_psi(family):
    env = make_env(f"admrl:{family}", seed=1)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(5, env.obs_shape[0]))
    act = rng.uniform(-1, 1, (5, env.action_dim))
    psi = rng.uniform(-1, 1, env.task_dim)
    r_np = env.reward(obs, act, psi)
    p = torch.tensor(psi, requires_grad=True)
    r_t = env.reward(torch.tensor(obs), torch.tensor(act), p)
    np.testing.assert_allclose(r_t.detach().numpy(), r_np, rtol=1e-12)
    (grad,) = torch.autograd.grad(r_t.sum(), p)
    h = 1e-6
    fd = [
        (env.reward(obs, act, psi + h * e).sum() - env.reward(obs, act, psi - h * e).sum()) / (2 * h)
        for e in np.eye(env.task_dim)
    ]
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5, atol=1e-7)
    env.close()


def test_sample_tasks_are_seeded_and_in_the_box():
    a, b = make_env("admrl:walker2d", seed=7), make_env("admrl:walker2d", seed=7)
    ta, tb = a.sample_tasks(20), b.sample_tasks(20)
    assert all(np.array_equal(x, y) for x, y in zip(ta, tb, strict=True))
    assert all(np.all(np.abs(t) <= 1) and t.shape == (2,) for t in ta)
    a.close()
    b.close()


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"unknown environment 'admrl:ant9d'.*ant2d"):
        make_env("admrl:ant9d", seed=0)
    with pytest.raises(ValueError, match=r"psi\[1\] = 1.5 is outside \[-1, 1\]"):
        check_psi("hopper2d", [0.0, 1.5])
    with pytest.raises(ValueError, match="psi must have 2 entries"):
        check_psi("hopper2d", [0.0])
    with pytest.raises(ValueError, match="outside"):
        check_psi("halfcheetah-vel", [float("nan")])
    env = make_env("admrl:halfcheetah-vel", seed=0)
    with pytest.raises(ValueError, match="outside"):
        env.set_task([-1.01])
    env.set_task([-1.5], out_of_box=True)  # evaluation's out-of-distribution tasks: goal −3 (beyond the box's −2)
    np.testing.assert_allclose(env.goal(env.get_task()), [-3.0])
    with pytest.raises(ValueError, match=r"outside \[-1.5, 1.5\]"):
        env.set_task([1.6], out_of_box=True)
    env.close()
