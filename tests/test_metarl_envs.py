"""recipes.envs.metarl: M3PO's meta-RL task families on gymnasium MuJoCo v5, checked against MuJoCo's own state."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from recipes.envs.gl import ensure_headless_gl
from recipes.envs.metarl import META_FAMILIES, make_meta_env

ENV_IDS = {
    "halfcheetah-fwd-bwd": "HalfCheetah-v5",
    "halfcheetah-pier": "HalfCheetah-v5",
    "ant-crippled-leg": "Ant-v5",
    "walker-randomparams": "Walker2d-v5",
}
WALKER_PARAMS = ("body_mass", "body_inertia", "dof_damping", "geom_friction")


def _original(env_id: str, field: str) -> np.ndarray:
    """``field`` of a freshly made model: the values before any task touched them."""
    env = gym.make(env_id)
    try:
        return np.array(getattr(env.unwrapped.model, field), np.float64, copy=True)
    finally:
        env.close()


def _dt(env) -> float:
    return float(env.unwrapped.model.opt.timestep) * env.unwrapped.frame_skip


def _actions(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, dim))


def _jsonable(task: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in task.items()}


# -- rewards against MuJoCo's state --------------------------------------------------------------------------


def test_fwd_bwd_reward_is_direction_times_finite_difference_velocity_minus_ctrl_cost():
    rewards, vels = {}, {}
    for d in (1, -1):
        with make_meta_env("halfcheetah-fwd-bwd", seed=3) as env:
            env.reset()
            env.set_task({"direction": d})
            data, dt = env.unwrapped.data, _dt(env)
            rewards[d], vels[d], qvel_differs = [], [], False
            for a in _actions(8, env.action_dim):
                x_before = float(data.qpos[0])
                step = env.step(a)
                a_sim = np.asarray(data.ctrl, np.float64)
                np.testing.assert_allclose(a_sim, a, rtol=1e-6)  # control range [-1, 1]: a is the env action
                v_x = (float(data.qpos[0]) - x_before) / dt
                expected = d * v_x - 0.05 * float(np.sum(a_sim**2))
                assert step["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
                qvel_differs |= abs(d * float(data.qvel[0]) - d * v_x) > 1e-3
                rewards[d].append(float(step["reward"]))
                vels[d].append(v_x)
            assert qvel_differs  # the velocity is the finite difference of qpos[0], not qvel[0] after the step
    # The direction changes the reward only: same seed and actions, same motion; the velocity term flips sign.
    np.testing.assert_allclose(vels[1], vels[-1], rtol=0, atol=0)
    diff = np.array(rewards[1]) - np.array(rewards[-1])
    np.testing.assert_allclose(diff, 2 * np.array(vels[1]), rtol=1e-4, atol=1e-4)
    assert np.abs(diff).max() > 0.01


def test_pier_scales_damping_from_the_original_without_compounding_and_keeps_halfcheetahs_reward():
    original = _original("HalfCheetah-v5", "dof_damping")
    with make_meta_env("halfcheetah-pier", seed=0) as env:
        model, data, dt = env.unwrapped.model, env.unwrapped.data, _dt(env)
        env.reset()
        first, second = env.sample_tasks(2)
        assert set(first) == {"dof_damping_scale"} and first["dof_damping_scale"].shape == original.shape
        for task in (first, second, first):  # no compounding: always original × scale
            env.set_task(task)
            assert np.array_equal(model.dof_damping, original * task["dof_damping_scale"])
            np.testing.assert_equal(env.get_task(), task)
        scales = np.stack([t["dof_damping_scale"] for t in env.sample_tasks(300)])
        assert scales.min() >= 1.5**-3 and scales.max() <= 1.5**3
        assert scales.min() < 1.5**-2.5 and scales.max() > 1.5**2.5  # base 1.5, per dof
        assert len(np.unique(scales[0])) == original.size
        for a in _actions(6, env.action_dim):
            x_before = float(data.qpos[0])
            step = env.step(a)
            expected = (float(data.qpos[0]) - x_before) / dt - 0.1 * float(np.sum(np.asarray(data.ctrl) ** 2))
            assert step["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_pier_damping_changes_the_dynamics():
    obs = []
    for scale in (0.3, 3.0):
        with make_meta_env("halfcheetah-pier", seed=5) as env:
            env.reset()
            env.set_task({"dof_damping_scale": np.full(env.unwrapped.model.nv, scale)})
            for a in _actions(5, env.action_dim):
                last = env.step(a)["obs"]
            obs.append(last)
    assert np.abs(obs[0] - obs[1]).max() > 1e-2


def test_walker_randomparams_scales_each_parameter_from_the_original_and_keeps_walkers_reward():
    originals = {p: _original("Walker2d-v5", p) for p in WALKER_PARAMS}
    with make_meta_env("walker-randomparams", seed=1) as env:
        model, data, dt = env.unwrapped.model, env.unwrapped.data, _dt(env)
        env.reset()
        tasks = env.sample_tasks(2)
        for task in (*tasks, tasks[0]):
            env.set_task(task)
            assert set(task) == {f"{p}_scale" for p in WALKER_PARAMS}
            for p in WALKER_PARAMS:
                assert np.array_equal(getattr(model, p), originals[p] * task[f"{p}_scale"]), p
            # derived constants follow the new masses (mj_setConst): subtree masses of the torso = total mass
            assert model.body_subtreemass[1] == pytest.approx(model.body_mass[1:].sum(), rel=1e-12)
        draws = env.sample_tasks(300)
        for p, base in (("body_mass", 1.5), ("body_inertia", 1.5), ("geom_friction", 1.5), ("dof_damping", 1.3)):
            scales = np.stack([t[f"{p}_scale"] for t in draws])
            assert scales.shape[1:] == originals[p].shape
            assert scales.min() >= base**-3 and scales.max() <= base**3, p
            assert scales.min() < base**-2.5 and scales.max() > base**2.5, p
        env.set_task(tasks[1])
        for a in _actions(10, env.action_dim):
            x_before = float(data.qpos[0])
            step = env.step(a)
            z, angle = float(data.qpos[1]), float(data.qpos[2])
            healthy = 0.8 < z < 2.0 and -1.0 < angle < 1.0
            v_x = (float(data.qpos[0]) - x_before) / dt
            expected = v_x + float(healthy) - 1e-3 * float(np.sum(np.asarray(data.ctrl) ** 2))
            assert step["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert step["is_terminal"] is (not healthy)
            if step["is_last"]:
                break


def test_ant_legs_are_read_from_the_model_and_match_learning_to_adapts_masks():
    with make_meta_env("ant-crippled-leg", seed=0) as env:
        model = env.unwrapped.model
        names = [
            [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(model.actuator_trnid[i, 0])) for i in leg]
            for leg in env.leg_actuators
        ]
        assert names == [[f"hip_{k}", f"ankle_{k}"] for k in (1, 2, 3, 4)]
        assert env.leg_actuators == ((2, 3), (4, 5), (6, 7), (0, 1))


@pytest.mark.parametrize("leg", [0, 1, 2, 3])
def test_ant_crippled_leg_gets_zero_control_and_ants_reward(leg):
    with make_meta_env("ant-crippled-leg", seed=2) as env:
        model, data, dt = env.unwrapped.model, env.unwrapped.data, _dt(env)
        env.reset()
        env.set_task({"leg": leg})
        crippled = list(env.leg_actuators[leg])
        others = [i for i in range(model.nu) if i not in crippled]
        for a in _actions(5, env.action_dim, seed=leg):
            a = np.sign(a) * np.maximum(np.abs(a), 0.2)  # every control clearly non-zero
            x_before = float(data.body("torso").xpos[0])
            step = env.step(a)
            ctrl = np.asarray(data.ctrl, np.float64)
            assert np.all(ctrl[crippled] == 0.0)
            np.testing.assert_allclose(ctrl[others], a[others], rtol=1e-6)
            assert np.all(ctrl[others] != 0.0)
            np.testing.assert_allclose(step["action"], a, rtol=1e-6)  # the agent's own action is what is stored
            healthy = bool(np.isfinite(data.qpos).all() and 0.2 <= data.qpos[2] <= 1.0)
            v_x = (float(data.body("torso").xpos[0]) - x_before) / dt
            contact = 5e-4 * float(np.sum(np.clip(data.cfrc_ext, -1.0, 1.0) ** 2))
            expected = v_x + float(healthy) - 0.5 * float(np.sum(ctrl**2)) - contact
            assert step["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_ant_splits_train_on_legs_0_to_2_and_test_on_leg_3():
    with make_meta_env("ant-crippled-leg", seed=0, split="train") as env:
        legs = [t["leg"] for t in env.sample_tasks(300)]
        assert set(legs) == {0, 1, 2}
        seen = set()
        for _ in range(6):
            env.reset()
            seen.add(env.get_task()["leg"])
        assert 3 not in seen
    with make_meta_env("ant-crippled-leg", seed=0, split="test", task_switch=2) as env:
        assert [t["leg"] for t in env.sample_tasks(20)] == [3] * 20
        env.reset()
        for _ in range(5):
            assert env.get_task() == {"leg": 3}
            env.step(np.zeros(env.action_dim))


# -- task switching -------------------------------------------------------------------------------------------


def test_fwd_bwd_task_switches_only_at_multiples_of_task_switch_and_the_reward_uses_the_task_in_force():
    with make_meta_env("halfcheetah-fwd-bwd", seed=0, task_switch=5) as env:
        assert env.task_switch == 5 and env.split == "train"
        data, dt = env.unwrapped.data, _dt(env)
        env.reset()
        tasks = [env.get_task()]
        for t, a in enumerate(_actions(60, env.action_dim), start=1):
            d = env.get_task()["direction"]
            x_before = float(data.qpos[0])
            step = env.step(a)
            expected = d * (float(data.qpos[0]) - x_before) / dt - 0.05 * float(np.sum(np.asarray(data.ctrl) ** 2))
            assert step["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-5), t
            tasks.append(env.get_task())
        changes = [t for t in range(1, len(tasks)) if tasks[t] != tasks[t - 1]]
        assert changes and all(t % 5 == 0 for t in changes)


def test_continuous_tasks_change_at_every_multiple_of_task_switch_and_only_there():
    with make_meta_env("walker-randomparams", seed=0, task_switch=5, time_limit=50) as env:
        model = env.unwrapped.model
        env.reset()
        masses = [model.body_mass.copy()]
        tasks = [env.get_task()]
        for t in range(1, 21):
            step = env.step(np.zeros(env.action_dim))
            assert not step["is_last"]
            tasks.append(env.get_task())
            masses.append(model.body_mass.copy())
            same = all(np.array_equal(tasks[t][k], tasks[t - 1][k]) for k in tasks[t])
            assert same is (t % 5 != 0), t
            assert np.array_equal(masses[t], masses[t - 1]) is (t % 5 != 0), t


def test_without_task_switch_the_task_is_constant_in_an_episode_and_resampled_at_reset():
    for family in ("halfcheetah-fwd-bwd", "walker-randomparams"):
        with make_meta_env(family, seed=4, time_limit=12) as env:
            assert env.task_switch is None
            per_episode = []
            for _ in range(6):
                step = env.reset()
                task = env.get_task()
                while not step["is_last"]:
                    step = env.step(np.zeros(env.action_dim))
                    np.testing.assert_equal(env.get_task(), task)
                per_episode.append(json.dumps(_jsonable(task)))
            assert len(set(per_episode)) > 1, family


# -- observations, determinism, bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("family", META_FAMILIES)
def test_observation_is_the_base_envs_and_tasks_round_trip_through_json(family):
    base = gym.make(ENV_IDS[family])
    shape = base.observation_space.shape
    base.close()
    with make_meta_env(family, seed=0) as env:
        assert env.family == "meta" and env.name == f"meta:{family}" and env.split == "train"
        assert env.obs_shape == shape and not env.pixels
        first = env.reset()
        assert first["is_first"] and first["obs"].dtype == np.float32
        np.testing.assert_array_equal(first["obs"], env.unwrapped._get_obs().astype(np.float32))
        step = env.step(np.full(env.action_dim, 0.3))
        np.testing.assert_array_equal(step["obs"], env.unwrapped._get_obs().astype(np.float32))
        task = env.sample_tasks(1)[0]
        env.set_task(json.loads(json.dumps(_jsonable(task))))
        np.testing.assert_equal(env.get_task(), task)
        assert env.sample_tasks(0) == []


def test_pixels_and_render_give_rgb_frames():
    if (os.environ.get("MUJOCO_GL") or ensure_headless_gl()) == "disabled":
        pytest.skip("no headless GL backend here")
    with make_meta_env("ant-crippled-leg", seed=0, pixels=True, size=32) as env:
        assert env.obs_shape == (3, 32, 32)
        first = env.reset()
        step = env.step(np.zeros(env.action_dim))
        for obs in (first["obs"], step["obs"]):
            assert obs.shape == (3, 32, 32) and obs.dtype == np.uint8 and obs.max() > 0
        frame = env.render()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("family", META_FAMILIES)
def test_same_seed_and_actions_give_the_same_observations_rewards_and_tasks(family):
    def run(seed: int) -> tuple[list, list, list]:
        obs, rewards, tasks = [], [], []
        with make_meta_env(family, seed=seed, task_switch=3, time_limit=7) as env:
            for _ in range(3):
                step = env.reset()
                obs.append(step["obs"])
                tasks.append(json.dumps(_jsonable(env.get_task())))
                for a in _actions(7, env.action_dim, seed=len(obs)):
                    step = env.step(a)
                    obs.append(step["obs"])
                    rewards.append(float(step["reward"]))
                    tasks.append(json.dumps(_jsonable(env.get_task())))
                    if step["is_last"]:
                        break
        return obs, rewards, tasks

    a, b, c = run(11), run(11), run(12)
    assert len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert a[1] == b[1] and a[2] == b[2]
    assert a[2] != c[2] or a[1] != c[1]


def test_train_and_test_splits_draw_separate_task_streams():
    with (
        make_meta_env("walker-randomparams", seed=0, split="train") as train,
        make_meta_env("walker-randomparams", seed=0, split="test") as test,
    ):
        assert test.split == "test"
        a, b = train.sample_tasks(1)[0], test.sample_tasks(1)[0]
        assert not np.array_equal(a["body_mass_scale"], b["body_mass_scale"])


@pytest.mark.parametrize(
    ("family", "kwargs", "named"),
    [
        ("halfcheetah-sideways", {}, "halfcheetah-sideways"),
        ("halfcheetah-fwd-bwd", {"split": "val"}, "val"),
        ("ant-crippled-leg", {"task_switch": 0}, "task_switch"),
        ("walker-randomparams", {"task_switch": -2}, "task_switch"),
    ],
)
def test_bad_input_raises_value_error_naming_it(family, kwargs, named):
    with pytest.raises(ValueError, match=named) as info:
        make_meta_env(family, seed=0, **kwargs)
    if named == family:
        assert all(known in str(info.value) for known in META_FAMILIES)


def test_bad_tasks_raise_value_error_naming_the_field():
    with make_meta_env("halfcheetah-fwd-bwd", seed=0) as env:
        with pytest.raises(ValueError, match="direction"):
            env.set_task({"direction": 0})
        with pytest.raises(ValueError, match="direction"):
            env.set_task({"leg": 1})
    with make_meta_env("ant-crippled-leg", seed=0) as env:
        with pytest.raises(ValueError, match="leg"):
            env.set_task({"leg": 4})
    with make_meta_env("walker-randomparams", seed=0) as env:
        task = env.sample_tasks(1)[0]
        with pytest.raises(ValueError, match="dof_damping_scale"):
            env.set_task({**task, "dof_damping_scale": np.ones(3)})
        with pytest.raises(ValueError, match="body_mass_scale"):
            env.set_task({**task, "body_mass_scale": -task["body_mass_scale"]})
        with pytest.raises(ValueError, match="sample_tasks"):
            env.sample_tasks(-1)


@pytest.mark.parametrize(
    ("family", "split", "labels"),
    [
        ("halfcheetah-fwd-bwd", "test", ["fwd", "bwd"]),
        ("ant-crippled-leg", "test", ["leg3"]),
        ("ant-crippled-leg", "train", ["leg0", "leg1", "leg2"]),
        ("walker-randomparams", "test", [f"params{i}" for i in range(10)]),
    ],
)
def test_the_evaluation_list_is_fixed_balanced_and_forced_at_reset(family, split, labels):
    envs = [make_meta_env(family, seed=s, split=split) for s in (0, 7)]
    lists = [env.evaluation_tasks() for env in envs]
    assert [label for label, _ in lists[0]] == labels
    assert json.dumps(lists[0], default=np.ndarray.tolist) == json.dumps(lists[1], default=np.ndarray.tolist)
    env = envs[0]
    for _, task in lists[0]:
        env.force_task(task)
        for _ in range(2):  # every reset starts in the forced task
            env.reset()
            got = env.get_task()
            assert all(np.array_equal(got[k], task[k]) for k in task)
    env.force_task(None)
    if family == "walker-randomparams":  # drawn again: not the last forced task
        env.reset()
        assert not np.array_equal(env.get_task()["body_mass_scale"], lists[0][-1][1]["body_mass_scale"])


def test_the_run_evaluates_each_task_of_the_list_equally_often():
    from recipes.run import loop

    class Probe:
        """A learner as evaluation sees it (``act`` only): records the task of each episode's first step."""

        def __init__(self, env):
            self.env, self.seen = env, []

        def act(self, step, state, *, explore):
            if step["is_first"]:
                self.seen.append(self.env.get_task()["direction"])
            return np.zeros(6, np.float32), None

    env = make_meta_env("halfcheetah-fwd-bwd", seed=0, split="test", time_limit=3)
    probe = Probe(env)
    mean, metrics = loop.evaluate_tasks(probe, env, 3)
    assert sorted(metrics) == ["eval_return", "eval_return/bwd", "eval_return/fwd"]
    assert probe.seen == [1, 1, -1, -1]  # ⌈3 / 2⌉ episodes per task
    assert mean == pytest.approx((metrics["eval_return/fwd"] + metrics["eval_return/bwd"]) / 2)
    assert env._forced is None  # the list's tasks are no longer forced afterwards
