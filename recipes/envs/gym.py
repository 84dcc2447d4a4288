"""Any registered gymnasium id as ``gym:ID`` (see ``recipes.envs`` for the conventions)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from recipes.envs.base import Env
from recipes.envs.gl import ensure_headless_gl
from recipes.envs.terminations import TerminationFn, healthy_z, hopper, lookup, walker


class GymEnv(Env):
    """A registered gymnasium environment with Box or Discrete actions."""

    family = "gym"

    def __init__(
        self,
        env_id: str,
        *,
        seed: int,
        pixels: bool,
        size: int,
        action_repeat: int,
        time_limit: int | None,
        make_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import gymnasium as gym
        from gymnasium.envs.registration import load_env_creator

        try:
            spec = gym.spec(env_id)
        except gym.error.Error as e:
            raise ValueError(f"unknown environment 'gym:{env_id}': {e}") from e
        entry = spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
        is_mujoco = "mujoco" in str(entry)
        if is_mujoco and os.environ.get("MUJOCO_GL") is None:
            ensure_headless_gl()
        kwargs: dict[str, Any] = dict(make_kwargs or {})
        creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
        if "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", []):
            kwargs["render_mode"] = "rgb_array"
            if is_mujoco:
                kwargs.update(width=size, height=size)
        elif pixels:
            raise ValueError(f"gym:{env_id} cannot render rgb_array frames, so pixels=True is not possible")
        if time_limit is not None:
            kwargs["max_episode_steps"] = time_limit * action_repeat
        self._env = gym.make(env_id, **kwargs)
        model = getattr(self._env.unwrapped, "model", None)
        if is_mujoco and model is not None and hasattr(model, "vis"):
            # Read when the renderer's GL context is made (first render): no shadow map, no multisampling.
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        self._size = size
        self._seed: int | None = seed
        self._env.action_space.seed(seed)
        obs_space, act_space = self._env.observation_space, self._env.action_space
        self._obs_space = obs_space
        if isinstance(act_space, gym.spaces.Discrete):
            discrete, action_dim, low, high = True, int(act_space.n), None, None
            self._start = int(act_space.start)
        elif isinstance(act_space, gym.spaces.Box):
            discrete, action_dim = False, int(np.prod(act_space.shape))
            low, high = act_space.low.reshape(-1), act_space.high.reshape(-1)
            self._act_shape = act_space.shape
            self._act_dtype = act_space.dtype
        else:
            self._env.close()
            raise ValueError(f"gym:{env_id} has a {type(act_space).__name__} action space; only Box or Discrete")
        shape = (3, size, size) if pixels else (int(gym.spaces.flatdim(obs_space)),)
        self._obs: Any = None
        super().__init__(
            f"gym:{env_id}",
            obs_shape=shape,
            obs_dtype=np.uint8 if pixels else np.float32,
            action_dim=action_dim,
            discrete=discrete,
            pixels=pixels,
            action_repeat=action_repeat,
            time_limit=time_limit,
            low=low,
            high=high,
        )

    def _reset_inner(self) -> np.ndarray:
        self._obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        return self._observe()

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        if self.discrete:
            env_action = self._start + int(env_action)
        else:
            env_action = np.asarray(env_action, self._act_dtype).reshape(self._act_shape)
        self._obs, reward, terminated, truncated, _ = self._env.step(env_action)
        return float(reward), bool(terminated), bool(truncated)

    def _observe(self) -> np.ndarray:
        if self.pixels:
            return np.ascontiguousarray(self.render().transpose(2, 0, 1))
        import gymnasium as gym

        return np.asarray(gym.spaces.flatten(self._obs_space, self._obs), np.float32)

    def render(self) -> np.ndarray:
        frame = self._env.render()
        if frame is None:
            raise RuntimeError(f"{self.name} returned no rgb_array frame")
        frame = np.asarray(frame, np.uint8)[..., :3]
        if frame.shape[:2] != (self._size, self._size):
            import cv2

            frame = cv2.resize(frame, (self._size, self._size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        self._env.close()


#: The gymnasium ids with a known termination function for model rollouts (``recipes.envs.terminations``).
TERMINATIONS: dict[str, TerminationFn | None] = {
    "HalfCheetah-v5": None,
    "Ant-v5": healthy_z(0.2, 1.0),
    "Walker2d-v5": walker,
    "Hopper-v5": hopper,
    "Hopper-v4": hopper,  # mbrl-lib 0.2.0's gymnasium has no v5: the peer comparison runs v4, whose health test is v5's
}


def termination(env_id: str) -> TerminationFn | None:
    """``gym:ID``'s termination function (``TERMINATIONS``).

    Raises:
        ValueError: an id without one.
    """
    return lookup(TERMINATIONS, "gym", env_id)
