"""DeepMind Control Suite tasks as ``dmc:DOMAIN_TASK`` (see ``recipes.envs`` for the conventions)."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from recipes.envs.base import Env
from recipes.envs.gl import ensure_headless_gl


def _dmc_task(task: str) -> tuple[str, str]:
    from dm_control import suite

    alias = {"cup_catch": "ball_in_cup_catch"}
    task = alias.get(task, task)
    for domain, name in suite.ALL_TASKS:
        if f"{domain}_{name}" == task:
            return domain, name
    from recipes.suggest import did_you_mean

    known = [f"{domain}_{name}" for domain, name in suite.ALL_TASKS]
    raise ValueError(
        f"unknown environment 'dmc:{task}'{did_you_mean(task, known)}: not a dm_control suite DOMAIN_TASK "
        "(e.g. dmc:walker_walk)"
    )


class DMCEnv(Env):
    """dm_control suite task.  Pixels come from a persistent ``dm_control.mujoco.Camera`` on a rendering context
    created with ``model.vis.quality.shadowsize = 0`` and ``offsamples = 0`` plus the ``shadow`` render flag off:
    no shadow pass and no multisampling.  The frames lose the soft shadows and edge smoothing (thin geoms such as
    cartpole's rail can drop out at 64×64); otherwise they are the same scene, rendered about ten times faster on a
    CPU renderer (llvmpipe; docs/results.md).  Floor reflections are kept: they show in walker and quadruped."""

    family = "dmc"

    def __init__(
        self, task: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None
    ) -> None:
        if os.environ.get("MUJOCO_GL") is None and "dm_control._render" not in sys.modules:
            ensure_headless_gl()
        from dm_control import suite

        domain, task_name = _dmc_task(task)
        task_kwargs: dict[str, Any] = {"random": seed}
        if time_limit is not None:
            task_kwargs["time_limit"] = float("inf")  # ours is the only limit
        self._env = suite.load(domain, task_name, task_kwargs=task_kwargs)
        self._size = size
        self._camera_id = 2 if domain == "quadruped" else 0
        self._camera: Any = None
        self._camera_physics: Any = None
        self._closed = False
        self._fast_render = True
        physics = self._env.physics
        quality = physics.model.vis.quality
        # Context-level settings: read when the GL context is created, i.e. on the first render.
        quality.shadowsize = 0
        quality.offsamples = 0
        spec = self._env.action_spec()
        if pixels:
            shape: tuple[int, ...] = (3, size, size)
        else:
            shape = (sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()),)
        self._time_step: Any = None
        super().__init__(
            f"dmc:{task}",
            obs_shape=shape,
            obs_dtype=np.uint8 if pixels else np.float32,
            action_dim=int(np.prod(spec.shape)),
            discrete=False,
            pixels=pixels,
            action_repeat=action_repeat,
            time_limit=time_limit,
            low=np.broadcast_to(spec.minimum, spec.shape).reshape(-1),
            high=np.broadcast_to(spec.maximum, spec.shape).reshape(-1),
        )
        self._action_shape = spec.shape

    def _reset_inner(self) -> np.ndarray:
        self._time_step = self._env.reset()
        return self._observe()

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        ts = self._env.step(np.asarray(env_action).reshape(self._action_shape))
        self._time_step = ts
        if not ts.last():
            return float(ts.reward or 0.0), False, False
        terminated = ts.discount is not None and float(ts.discount) == 0.0
        return float(ts.reward or 0.0), terminated, not terminated

    def _observe(self) -> np.ndarray:
        if self.pixels:
            return np.ascontiguousarray(self.render().transpose(2, 0, 1))
        values = self._time_step.observation.values()
        return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in values])

    def render(self) -> np.ndarray:
        from dm_control.mujoco import Camera

        physics = self._env.physics
        if self._camera is None or self._camera_physics is not physics:  # a task may swap its physics
            self._camera = Camera(physics, height=self._size, width=self._size, camera_id=self._camera_id)
            self._camera_physics = physics
        flags = {"shadow": False} if self._fast_render else None
        return np.array(self._camera.render(render_flag_overrides=flags), dtype=np.uint8)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._camera is not None:
            self._camera.scene.free()
            self._camera = None
        self._env.close()
        self._env.physics.free()  # and its GL context now, not at interpreter exit (OSMesa complains there)
