"""Meta-RL task families on gymnasium MuJoCo v5 (M3PO §7) — interim: ``halfcheetah-fwd-bwd`` only.

``make_meta_env(family, *, seed, pixels, size, action_repeat, time_limit, task_switch, split)``; the env offers the
rand_param_envs convention ``sample_tasks(n)``, ``set_task(task)``, ``get_task()``.  The task is hidden from the
agent (observations are HalfCheetah-v5's own), resampled at every reset and every ``task_switch`` agent steps.

``halfcheetah-fwd-bwd``: task ``{"direction": d}``, d ∈ {+1, −1} uniformly; r = d·v_x − 0.05‖a‖² per env step with
v_x gymnasium's ``x_velocity`` (the root's x displacement over the step divided by dt) and a the env-scale action.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recipes.envs.gym import GymEnv

META_FAMILIES = ("halfcheetah-fwd-bwd",)


class HalfCheetahFwdBwd(GymEnv):
    """HalfCheetah-v5 running forward (d = +1) or backward (d = −1), the direction hidden and switching."""

    family = "meta"

    def __init__(
        self,
        *,
        seed: int,
        pixels: bool,
        size: int,
        action_repeat: int,
        time_limit: int | None,
        task_switch: int | None,
        split: str,
    ) -> None:
        super().__init__(
            "HalfCheetah-v5", seed=seed, pixels=pixels, size=size, action_repeat=action_repeat, time_limit=time_limit
        )
        self.name, self.task_switch, self.split = "meta:halfcheetah-fwd-bwd", task_switch, split
        self._rng = np.random.default_rng(seed)
        self._task: dict[str, Any] = {"direction": 1}
        self._agent_steps = 0

    def sample_tasks(self, n: int) -> list[dict[str, Any]]:
        return [{"direction": int(d)} for d in self._rng.choice([-1, 1], size=n)]

    def set_task(self, task: dict[str, Any]) -> None:
        if task.get("direction") not in (-1, 1):
            raise ValueError(f"halfcheetah-fwd-bwd: direction must be +1 or -1, got {task!r}")
        self._task = dict(task)

    def get_task(self) -> dict[str, Any]:
        return dict(self._task)

    def reset(self) -> dict[str, Any]:
        self.set_task(self.sample_tasks(1)[0])
        self._agent_steps = 0
        return super().reset()

    def step(self, action: np.ndarray) -> dict[str, Any]:
        out = super().step(action)
        self._agent_steps += 1
        if self.task_switch is not None and self._agent_steps % self.task_switch == 0:
            self.set_task(self.sample_tasks(1)[0])
        return out

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        env_action = np.asarray(env_action, self._act_dtype).reshape(self._act_shape)
        self._obs, _, terminated, truncated, info = self._env.step(env_action)
        reward = self._task["direction"] * float(info["x_velocity"]) - 0.05 * float(np.sum(env_action**2))
        return reward, bool(terminated), bool(truncated)


def make_meta_env(
    family: str,
    *,
    seed: int,
    pixels: bool = False,
    size: int = 64,
    action_repeat: int = 1,
    time_limit: int | None = None,
    task_switch: int | None = None,
    split: str = "train",
) -> GymEnv:
    """A meta-RL task family env (see the module docstring).

    Raises:
        ValueError: for an unknown family, a split other than train/test, or ``task_switch < 1``.
    """
    if family not in META_FAMILIES:
        raise ValueError(f"unknown environment 'meta:{family}': known families {', '.join(META_FAMILIES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if task_switch is not None and task_switch < 1:
        raise ValueError(f"task_switch must be at least 1, got {task_switch}")
    return HalfCheetahFwdBwd(
        seed=seed,
        pixels=pixels,
        size=size,
        action_repeat=action_repeat,
        time_limit=time_limit,
        task_switch=task_switch,
        split=split,
    )
