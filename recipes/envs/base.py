"""The environment interface every recipe sees: DreamerV2's step dict (see ``recipes.envs``)."""

from __future__ import annotations

from typing import Any

import numpy as np


class Env:
    """An environment with DreamerV2's step-dict interface (see the module docstring).

    Subclasses implement ``_reset_inner() -> obs``, ``_step_inner(env_action) -> (reward, terminated, truncated)``
    for one env step, ``_observe() -> obs`` and ``render()``; this class does the action conversion, the action
    repeat, the time limit and the dict.
    """

    family: str = ""

    def __init__(
        self,
        name: str,
        *,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
        action_dim: int,
        discrete: bool,
        pixels: bool,
        action_repeat: int,
        time_limit: int | None,
        low: np.ndarray | None = None,
        high: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        self.action_dim = int(action_dim)
        self.discrete = bool(discrete)
        self.pixels = bool(pixels)
        self.action_repeat = int(action_repeat)
        self.time_limit = time_limit
        self._repeat = self.action_repeat  # env steps per agent step done by this class (Atari: 1, ALE repeats)
        if not self.discrete:
            assert low is not None and high is not None
            low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
            self._finite = np.isfinite(low) & np.isfinite(high)
            self._low = np.where(self._finite, low, -1.0)
            self._high = np.where(self._finite, high, 1.0)
        self._steps: int | None = None  # agent steps since reset; None → reset() is due

    # -- public ---------------------------------------------------------------------------------------------

    def reset(self) -> dict[str, Any]:
        obs = self._reset_inner()
        self._steps = 0
        zeros = np.zeros(self.action_dim, np.float32)
        return self._transition(obs, zeros, 0.0, first=True, last=False, terminal=False)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        if self._steps is None:
            raise RuntimeError(f"{self.name}: call reset() before step() (at the start and after is_last)")
        stored, env_action = self._convert_action(action)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self._repeat):
            r, terminated, truncated = self._step_inner(env_action)
            reward += r
            if terminated or truncated:
                break
        self._steps += 1
        if self.time_limit is not None and self._steps >= self.time_limit:
            truncated = True
        last = bool(terminated or truncated)
        obs = self._observe()
        if last:
            self._steps = None
        return self._transition(obs, stored, reward, first=False, last=last, terminal=bool(terminated))

    def render(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "discrete" if self.discrete else "continuous"
        return (
            f"{type(self).__name__}({self.name!r}, obs_shape={self.obs_shape}, action_dim={self.action_dim} "
            f"{kind}, action_repeat={self.action_repeat}, time_limit={self.time_limit})"
        )

    # -- helpers --------------------------------------------------------------------------------------------

    def _convert_action(self, action: Any) -> tuple[np.ndarray, Any]:
        """Return (the float32 action stored in the step dict, the action handed to the wrapped env)."""
        a = np.asarray(action)
        if self.discrete:
            if a.ndim == 0 and np.issubdtype(a.dtype, np.integer):
                index = int(a)
            elif a.shape == (self.action_dim,):
                index = int(np.argmax(a))
            else:
                raise ValueError(
                    f"{self.name}: expected a one-hot action of shape ({self.action_dim},), got shape {a.shape}"
                )
            if not 0 <= index < self.action_dim:
                raise ValueError(f"{self.name}: action index {index} outside [0, {self.action_dim})")
            onehot = np.zeros(self.action_dim, np.float32)
            onehot[index] = 1.0
            return onehot, index
        a = a.astype(np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            raise ValueError(f"{self.name}: expected an action of shape ({self.action_dim},), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"{self.name}: non-finite action {a}")
        a = np.clip(a, -1.0, 1.0)
        scaled = np.where(self._finite, self._low + (a + 1.0) / 2.0 * (self._high - self._low), a)
        return a.astype(np.float32), scaled

    def _transition(
        self, obs: np.ndarray, action: np.ndarray, reward: float, *, first: bool, last: bool, terminal: bool
    ) -> dict[str, Any]:
        return {
            "obs": obs,
            "action": action,
            "reward": np.float32(reward),
            "discount": np.float32(0.0 if terminal else 1.0),
            "is_first": first,
            "is_last": last,
            "is_terminal": terminal,
        }

    def _reset_inner(self) -> np.ndarray:
        raise NotImplementedError

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        raise NotImplementedError
