"""Objective mismatch as environment options: distracting observation dimensions and observation noise.

Task-aware model learning pays where a model cannot fit everything and must choose what to fit (VaGraM, Voelcker
et al. 2022, §5: MLE-trained MBPO degrades with distracting dimensions while the value-gradient loss does not).
``MismatchEnv`` wraps any vector-observation environment:

* ``distractors = N`` appends N dimensions from N/2 independent noise-driven damped oscillators, each a position
  and a velocity: ``[x, v]_{t+1} = ρ R(θ) [x, v]_t + sqrt(1 − ρ²) ε_t`` with R(θ) a rotation by θ and
  ε_t ~ N(0, I), one step per agent step.  The agent's actions do not move them and the reward ignores them, yet
  they are predictable (a linear map plus noise of known size), so a model that predicts them well spends capacity
  on them.  The oscillators' ρ ∈ [0.95, 0.995] and θ ∈ [0.05, 0.5] rad are fixed for a given N (part of the
  environment, the same in training and evaluation); every coordinate starts and stays at unit variance.
* ``obs_noise = σ`` adds N(0, σ²) noise to the real dimensions (``obs_noise_on="state"``), to the distractors
  (``"distractors"``) or to all (``"all"``).

The oscillators' states and the noise come from the environment's seed and its episode count, so the same seed
gives the same episodes.  The real dimensions stay first, at their indices (termination functions read them).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from recipes.envs.base import Env

NoiseOn = Literal["state", "distractors", "all"]

#: the families with vector observations a distractor can be appended to
FAMILIES = ("dmc", "gym", "meta")


def check_mismatch(name: str, pixels: bool, distractors: int, obs_noise: float, obs_noise_on: str) -> None:
    """One-line errors for options that cannot apply to the environment ``name``.

    Raises:
        ValueError: a negative, odd or non-integer ``distractors``, a negative ``obs_noise``, an unknown
            ``obs_noise_on``, noise on distractors there are none of, pixel observations, or a family outside
            ``FAMILIES``.
    """
    if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0 or distractors % 2:
        raise ValueError(f"distractors: an even number >= 0 (position and velocity per oscillator), got {distractors}")
    if not obs_noise >= 0.0:
        raise ValueError(f"obs_noise: a standard deviation >= 0, got {obs_noise}")
    if obs_noise_on not in ("state", "distractors", "all"):
        raise ValueError(f"obs_noise_on: 'state', 'distractors' or 'all', got {obs_noise_on!r}")
    if obs_noise > 0 and obs_noise_on == "distractors" and distractors == 0:
        raise ValueError("obs_noise_on='distractors' needs distractors > 0")
    if distractors or obs_noise:
        family = name.split(":", 1)[0]
        if pixels or family not in FAMILIES:
            raise ValueError(
                f"distractors and obs_noise apply to vector observations of {', '.join(f + ':' for f in FAMILIES)} "
                f"environments, not {name!r}" + (" with pixels" if pixels else "")
            )


class MismatchEnv(Env):
    """``inner`` with ``distractors`` extra observation dimensions and observation noise (module docstring).

    Shapes: observations [O + N] float32, the inner env's O dimensions first.  Every other attribute (the action
    space, ``task_names``, ``set_task``, ...) is the inner env's.

    Raises:
        ValueError: as ``check_mismatch``.
    """

    def __init__(
        self, inner: Env, *, seed: int, distractors: int = 0, obs_noise: float = 0.0, obs_noise_on: NoiseOn = "state"
    ) -> None:
        check_mismatch(inner.name, inner.pixels, distractors, obs_noise, obs_noise_on)
        self.inner, self.seed, self.episodes = inner, seed, 0
        self.distractors, self.obs_noise, self.obs_noise_on = distractors, obs_noise, obs_noise_on
        self.state_dim = int(np.prod(inner.obs_shape))
        params = np.random.default_rng([distractors, 0x0DD])  # fixed for a given N: part of the environment
        k = distractors // 2
        self.rho = params.uniform(0.95, 0.995, k)
        theta = params.uniform(0.05, 0.5, k)
        self.cos, self.sin = np.cos(theta), np.sin(theta)
        self.osc = np.zeros((k, 2))
        self.rng = self.noise_rng = np.random.default_rng([seed, 0])
        # the Env attributes of the interface, without Env.__init__'s action handling (the inner env does it)
        self.family, self.name, self.pixels = inner.family, inner.name, inner.pixels
        self.obs_shape, self.obs_dtype = (self.state_dim + distractors,), np.dtype(np.float32)
        self.action_dim, self.discrete = inner.action_dim, inner.discrete
        self.action_repeat, self.time_limit = inner.action_repeat, inner.time_limit

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not yet set (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self) -> dict[str, Any]:
        # this episode's streams, one for the oscillators and one for the observation noise: the distractors do
        # not depend on whether there is noise
        self.rng = np.random.default_rng([self.seed, 1, self.episodes])
        self.noise_rng = np.random.default_rng([self.seed, 2, self.episodes])
        self.episodes += 1
        self.osc = self.rng.standard_normal(self.osc.shape)  # the stationary distribution
        return self._augment(self.inner.reset())

    def step(self, action: np.ndarray) -> dict[str, Any]:
        x, v = self.osc[:, 0], self.osc[:, 1]
        rotated = np.stack([self.cos * x - self.sin * v, self.sin * x + self.cos * v], -1)
        noise = np.sqrt(1.0 - self.rho**2)[:, None] * self.rng.standard_normal(self.osc.shape)
        self.osc = self.rho[:, None] * rotated + noise
        return self._augment(self.inner.step(action))

    def render(self) -> np.ndarray:
        return self.inner.render()

    def close(self) -> None:
        self.inner.close()

    def _augment(self, step: dict[str, Any]) -> dict[str, Any]:
        obs = np.concatenate([np.asarray(step["obs"], np.float32).reshape(-1), self.osc.reshape(-1)])
        if self.obs_noise > 0:
            lo = self.state_dim if self.obs_noise_on == "distractors" else 0
            hi = self.state_dim if self.obs_noise_on == "state" else obs.shape[0]
            obs[lo:hi] += self.obs_noise * self.noise_rng.standard_normal(hi - lo)
        return {**step, "obs": obs.astype(np.float32)}
