"""AdMRL's parameterised reward families on gymnasium MuJoCo v5 (``admrl:FAMILY``), differentiable in ψ.

Lin et al. 2020 (AdMRL) §5; numbers from the official code (``slbo/envs/mujoco/*_task_env.py``, ``rllab/…``).  A
task is ψ ∈ [−1, 1]^k, mapped affinely onto the family's goal box: goal = lo + (ψ + 1)/2 · (hi − lo).  Every reward
is a function of the *next observation*, the action and ψ only — ``AdmrlEnv.reward`` — so a learned model that
predicts observations predicts rewards, for any ψ, and ∂r/∂ψ exists (eq. 3 and 6 of the paper).  To make that true
the observation ends with the reward's features f (v5 hides some of them, e.g. Ant's velocities are only
instantaneous qvel, not the step's displacement):

* ``ant2d`` — Ant-v5 (``include_cfrc_ext_in_observation=False``), f = (v_x, v_y), goal velocity in [−3, 3]²;
  r = 5.05 − |v_x − g_x| − |v_y − g_y| − 0.005‖a‖² (the code's entry bonus 5 + survive 0.05; ctrl ½·10⁻²).
* ``ant3d`` — as ant2d with f = (v_x, v_y, z), z the torso height, g_z ∈ [0.4, 0.6], and −30·|z − g_z|.
* ``hopper2d`` — Hopper-v5, f = (v_x, h), v_x ∈ [−2, 2], h ∈ [1.2, 2.0]; r = 10 − 0.001‖a‖² − |v_x − g₁| − 5|h − g₂|.
* ``walker2d`` — Walker2d-v5, the same with h ∈ [1.0, 1.8].
* ``halfcheetah-vel`` — HalfCheetah-v5, f = (v_x,), g ∈ [−2, 2]; r = −|v_x − g| − 0.05‖a‖² (CPU-sized runs).
* ``cheetah-highdim`` — HalfCheetah-v5 with x kept in the observation (18 = 9 qpos + 9 qvel, as rllab's), f = the
  normalised next observation (s′ − μ)/σ, r = ψᵀf − 0.05‖a‖², ψ ∈ [−1, 1]¹⁸ used as is (the code's
  ``scale_psi=False``).  μ, σ: the code loads them from a pickled state dataset we do not have; here they are the
  mean and standard deviation of 4000 states of uniformly random actions (fixed seed, computed once per process),
  with σ floored at 10⁻³.

v_x, v_y are the torso's displacement over the env step divided by dt — gymnasium's own ``x_velocity`` /
``y_velocity`` (Ant-v5 differences the torso body's ``xpos``, whose kinematics date from the start of MuJoCo's last
substep; Hopper, Walker2d and HalfCheetah difference ``qpos[0]``) — and z, h the root's height ``qpos`` after the
step.  Terminations are the v5 envs' own (Ant: torso
z outside [0.2, 1.0], as the code's; Hopper, Walker2d: their health checks; HalfCheetah: none).  v5's frame skips and
models differ from the rllab ones the paper used, so returns are not comparable with its plots.

The task is the env's state, not part of the observation (AdMRL adapts one policy per task).  Convention as
``recipes.envs.metarl``: ``sample_tasks(n)`` (uniform on the box, seeded), ``set_task(psi)``, ``get_task()``;
a task set stays until the next ``set_task`` (no resampling at reset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recipes.envs.gym import GymEnv
from recipes.envs.terminations import TerminationFn, healthy_z, hopper, lookup, walker
from recipes.suggest import did_you_mean


@dataclass(frozen=True)
class RewardFamily:
    """One AdMRL family's reward r(f, a, ψ) = bonus − ctrl‖a‖² − Σ coef_i |f_i − goal_i(ψ)|  (``form="abs"``)
    or ψᵀ(coef·f) − ctrl‖a‖² (``form="linear"``), f = the last ``features`` entries of the next observation (or,
    ``normalise``, the whole observation standardised)."""

    env_id: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    coef: tuple[float, ...]
    ctrl: float
    bonus: float = 0.0
    form: str = "abs"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    normalise: bool = False

    @property
    def dim(self) -> int:
        """k, the dimension of ψ."""
        return len(self.low)


FAMILIES: dict[str, RewardFamily] = {
    "ant2d": RewardFamily(
        "Ant-v5", (-3.0, -3.0), (3.0, 3.0), (1.0, 1.0), 0.005, 5.05,
        env_kwargs={"include_cfrc_ext_in_observation": False},
    ),
    "ant3d": RewardFamily(
        "Ant-v5", (-3.0, -3.0, 0.4), (3.0, 3.0, 0.6), (1.0, 1.0, 30.0), 0.005, 5.05,
        env_kwargs={"include_cfrc_ext_in_observation": False},
    ),
    "hopper2d": RewardFamily("Hopper-v5", (-2.0, 1.2), (2.0, 2.0), (1.0, 5.0), 0.001, 10.0),
    "walker2d": RewardFamily("Walker2d-v5", (-2.0, 1.0), (2.0, 1.8), (1.0, 5.0), 0.001, 10.0),
    "halfcheetah-vel": RewardFamily("HalfCheetah-v5", (-2.0,), (2.0,), (1.0,), 0.05),
    "cheetah-highdim": RewardFamily(
        "HalfCheetah-v5", (-1.0,) * 18, (1.0,) * 18, (1.0,) * 18, 0.05, form="linear",
        env_kwargs={"exclude_current_positions_from_observation": False}, normalise=True,
    ),
}  # fmt: skip
ADMRL_FAMILIES = tuple(FAMILIES)
#: cheetah-highdim's state statistics: random-action states, this many env steps (episodes of 200), this seed.
NORM_STEPS, NORM_EPISODE, NORM_SEED = 4000, 200, 0
_NORM_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}
#: Out-of-distribution tasks (AdMRL §5.3) may reach this far outside the training box [−1, 1]^k.
OOD_BOUND = 1.5


def _like(value: Any, ref: Any) -> Any:
    """``value`` as an array of ``ref``'s kind (a torch tensor of its dtype and device, or a numpy array)."""
    if type(ref).__module__.startswith("torch"):
        import torch

        return torch.as_tensor(np.asarray(value), dtype=ref.dtype, device=ref.device)
    return np.asarray(value, np.float64)


class AdmrlEnv(GymEnv):
    """An AdMRL family: a v5 MuJoCo env whose reward is set by ψ ∈ [−1, 1]^k (module docstring).

    Attributes:
        admrl_family: the family's name; ``spec``: its ``RewardFamily``; ``task_dim``: k;
        ``feature_dim``: the number of trailing observation entries that are reward features (0 for
        cheetah-highdim, whose features are the whole observation).
    """

    family = "admrl"

    def __init__(
        self,
        admrl_family: str,
        *,
        seed: int,
        pixels: bool = False,
        size: int = 64,
        action_repeat: int = 1,
        time_limit: int | None = None,
    ) -> None:
        if admrl_family not in FAMILIES:
            raise ValueError(
                f"unknown environment 'admrl:{admrl_family}'{did_you_mean(admrl_family, FAMILIES)}: known families "
                f"are {', '.join(FAMILIES)}"
            )
        if pixels:
            raise ValueError(f"admrl:{admrl_family}: pixels=True is not supported (the reward reads the state)")
        self.admrl_family, self.spec = admrl_family, FAMILIES[admrl_family]
        super().__init__(
            self.spec.env_id,
            seed=seed,
            pixels=False,
            size=size,
            action_repeat=action_repeat,
            time_limit=time_limit,
            make_kwargs=self.spec.env_kwargs,
        )
        self.name = f"admrl:{admrl_family}"
        self.task_dim = self.spec.dim
        self.feature_dim = 0 if self.spec.normalise else self.spec.dim
        self.obs_shape = (self.obs_shape[0] + self.feature_dim,)
        self._features = np.zeros(self.feature_dim)
        self._rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2,)))
        self._psi = np.zeros(self.task_dim)
        self.state_mean, self.state_std = self._state_statistics() if self.spec.normalise else (np.zeros(0), np.ones(0))

    # -- tasks ----------------------------------------------------------------------------------------------

    def sample_tasks(self, n: int) -> list[np.ndarray]:
        """``n`` tasks ψ ~ U[−1, 1]^k from the env's seeded generator (AdMRL's ``mb-unif`` distribution)."""
        if int(n) < 0:
            raise ValueError(f"sample_tasks: n must be non-negative, got {n}")
        return [self._rng.uniform(-1.0, 1.0, self.task_dim) for _ in range(int(n))]

    def set_task(self, psi: Any, *, out_of_box: bool = False) -> None:
        """Make ψ the task from the next step on; ``out_of_box`` allows |ψ_i| up to ``OOD_BOUND`` (evaluation
        of out-of-distribution tasks, AdMRL §5.3: the goal map extends affinely beyond the box).

        Raises:
            ValueError: if ψ is not k finite numbers in [−1, 1] (or the OOD bound; the message names the family
                and the entry).
        """
        self._psi = check_psi(self.admrl_family, psi, bound=OOD_BOUND if out_of_box else 1.0)

    def get_task(self) -> np.ndarray:
        """A copy of ψ."""
        return self._psi.copy()

    def goal(self, psi: Any) -> Any:
        """The goal lo + (ψ + 1)/2·(hi − lo) (numpy or torch, as ψ; [..., k]); ψ itself for the linear form."""
        if self.spec.form == "linear":
            return psi
        lo, hi = _like(self.spec.low, psi), _like(self.spec.high, psi)
        return lo + (psi + 1.0) / 2.0 * (hi - lo)

    # -- the reward as a function of (next obs, action, ψ) --------------------------------------------------

    def features(self, next_obs: Any) -> Any:
        """f [..., m] from next observations [..., obs_dim] (numpy or torch)."""
        if self.spec.normalise:
            return (next_obs - _like(self.state_mean, next_obs)) / _like(self.state_std, next_obs)
        return next_obs[..., -self.feature_dim :]

    def reward(self, next_obs: Any, action: Any, psi: Any) -> Any:
        """r(s′, a, ψ) for batches ([..., obs_dim], [..., action_dim], [k] or [..., k]); numpy or torch alike,
        differentiable in ψ (and s′) under torch.  ``action`` is the env-scale action (= the agent's here)."""
        f = self.features(next_obs)
        coef = _like(self.spec.coef, f)
        ctrl = self.spec.ctrl * (action**2).sum(-1)
        if self.spec.form == "linear":
            return (psi * coef * f).sum(-1) - ctrl
        return self.spec.bonus - ctrl - (coef * abs(f - self.goal(psi))).sum(-1)

    # -- Env ------------------------------------------------------------------------------------------------

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        action = np.asarray(env_action, self._act_dtype).reshape(self._act_shape)
        self._obs, _, terminated, truncated, info = self._env.step(action)
        self._features = self._step_features(info)
        obs = self._observe()
        return float(self.reward(obs.astype(np.float64), action.astype(np.float64), self._psi)), terminated, truncated

    def _reset_inner(self) -> np.ndarray:
        self._obs, _ = self._env.reset(seed=self._seed)
        self._seed = None
        self._features = self._reset_features()
        return self._observe()

    def _observe(self) -> np.ndarray:
        base = super()._observe()
        if not self.feature_dim:
            return base
        return np.concatenate([base, self._features.astype(np.float32)])

    def _height(self) -> float:
        return float(self._env.unwrapped.data.qpos[1 if self.spec.env_id in ("Hopper-v5", "Walker2d-v5") else 2])

    def _step_features(self, info: dict[str, Any]) -> np.ndarray:
        name = self.admrl_family
        if name == "ant2d":
            return np.array([info["x_velocity"], info["y_velocity"]])
        if name == "ant3d":
            return np.array([info["x_velocity"], info["y_velocity"], self._height()])
        if name in ("hopper2d", "walker2d"):
            return np.array([info["x_velocity"], self._height()])
        if name == "halfcheetah-vel":
            return np.array([info["x_velocity"]])
        return np.zeros(0)

    def _reset_features(self) -> np.ndarray:
        """Features at reset: zero velocities, the initial height."""
        f = np.zeros(self.feature_dim)
        if self.admrl_family == "ant3d":
            f[2] = self._height()
        elif self.admrl_family in ("hopper2d", "walker2d"):
            f[1] = self._height()
        return f

    def _state_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.admrl_family not in _NORM_CACHE:
            import gymnasium as gym

            env = gym.make(self.spec.env_id, **self.spec.env_kwargs)
            rng = np.random.default_rng(NORM_SEED)
            env.action_space.seed(NORM_SEED)
            states = []
            for episode in range(NORM_STEPS // NORM_EPISODE):
                env.reset(seed=NORM_SEED + episode)
                for _ in range(NORM_EPISODE):
                    obs, *_ = env.step(rng.uniform(-1.0, 1.0, env.action_space.shape))
                    states.append(obs)
            env.close()
            s = np.asarray(states, np.float64)
            _NORM_CACHE[self.admrl_family] = (s.mean(0), np.maximum(s.std(0), 1e-3))
        mean, std = _NORM_CACHE[self.admrl_family]
        return mean.copy(), std.copy()


def check_psi(family: str, psi: Any, *, bound: float = 1.0) -> np.ndarray:
    """ψ as a float64 array of the family's k entries, each in [−bound, bound] (the training box: 1).

    Raises:
        ValueError: naming the family and the offending entry, for a wrong length, a non-finite value or one
            outside [−1, 1].
    """
    if family not in FAMILIES:
        raise ValueError(
            f"unknown environment 'admrl:{family}'{did_you_mean(family, FAMILIES)}: known families are "
            f"{', '.join(FAMILIES)}"
        )
    k = FAMILIES[family].dim
    try:
        arr = np.asarray(psi, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"admrl:{family}: psi must be {k} numbers in [-1, 1], got {psi!r}") from e
    if arr.shape != (k,):
        raise ValueError(f"admrl:{family}: psi must have {k} entries, got {arr.size}")
    bad = np.flatnonzero(~np.isfinite(arr) | (np.abs(arr) > bound))
    if bad.size:
        raise ValueError(f"admrl:{family}: psi[{bad[0]}] = {arr[bad[0]]} is outside [-{bound:g}, {bound:g}]")
    return arr


def make_admrl_env(
    family: str,
    *,
    seed: int,
    pixels: bool = False,
    size: int = 64,
    action_repeat: int = 1,
    time_limit: int | None = None,
) -> AdmrlEnv:
    """The AdMRL family ``family`` (one of ``ADMRL_FAMILIES``), task ψ = 0 (the box's centre) until set.

    Raises:
        ValueError: for an unknown family (naming the known ones) or ``pixels=True``.
    """
    return AdmrlEnv(family, seed=seed, pixels=pixels, size=size, action_repeat=action_repeat, time_limit=time_limit)


__all__ = [
    "ADMRL_FAMILIES",
    "FAMILIES",
    "OOD_BOUND",
    "TERMINATIONS",
    "AdmrlEnv",
    "RewardFamily",
    "check_psi",
    "make_admrl_env",
    "termination",
]


#: Each family's termination function for model rollouts (``recipes.envs.terminations``; None: time limit only).
TERMINATIONS: dict[str, TerminationFn | None] = {
    "ant2d": healthy_z(0.2, 1.0),
    "ant3d": healthy_z(0.2, 1.0),
    "hopper2d": hopper,
    "walker2d": walker,
    "halfcheetah-vel": None,
    "cheetah-highdim": None,
}


def termination(family: str) -> TerminationFn | None:
    """``admrl:FAMILY``'s termination function (``TERMINATIONS``).

    Raises:
        ValueError: an unknown family.
    """
    return lookup(TERMINATIONS, "admrl", family)
