"""Meta-RL task families on gymnasium MuJoCo v5, with a hidden task that may switch inside an episode (M3PO §7).

``make_meta_env(family, *, seed, pixels=False, size=64, action_repeat=1, time_limit=None, task_switch=None,
split="train") -> MetaEnv`` (``make_env`` calls it for ``meta:FAMILY``).  M3PO (Hiraoka et al.; §6–7) evaluates on
task families from the meta-RL literature (Finn & Levine 2018; Nagabandi et al. 2019 "Learning to Adapt";
Rakelly et al. 2019, PEARL; Rothfuss et al. 2019, ProMP) in which "the agent is required to adapt to a fluidly
changing task that the agent cannot directly observe".  These are re-creations on gymnasium's MuJoCo v5 models:

* ``halfcheetah-fwd-bwd`` — HalfCheetah-v5 running forward or backward (Finn & Levine 2018; ProMP's
  ``HalfCheetahRandDirecEnv``).  Task ``{"direction": d}``, d ∈ {+1, −1} uniformly (both splits).  Reward per env
  step r = d·v_x − 0.05‖a‖², a the env-scale action (HalfCheetah's control range is [−1, 1]^6, so a equals the
  agent's clipped action) and v_x = (qpos[0]_after − qpos[0]_before) / dt, the finite difference of the root's x
  over the step (dt = 5 × 0.01 s).  That is gymnasium's own ``x_velocity`` and ProMP's ``(xposafter − xposbefore) /
  dt``; it is *not* ``data.qvel[0]`` after the step, an instantaneous velocity at the step's end.
* ``halfcheetah-pier`` — HalfCheetah-v5 whose joint damping changes with the task.  Learning to Adapt's "pier"
  floats the cheetah over blocks on water whose slide joints get damping U(0, 10) (``half_cheetah_blocks.xml``);
  gymnasium has no blocks model, so here the cheetah's own joints stand in: task
  ``{"dof_damping_scale": s}`` with s ∈ R^9 (one factor per dof, ``model.nv`` = 9), s_i = 1.5^u_i,
  u_i ~ U(−3, 3) i.i.d. (factors in [0.296, 3.375]; both splits), and ``model.dof_damping = original × s``.  The
  three root dofs have damping 0, so only the six leg joints change.  Reward: HalfCheetah-v5's own,
  v_x − 0.1‖a‖² (v_x as above).
* ``ant-crippled-leg`` — Ant-v5 with one leg crippled (Learning to Adapt; PEARL-style meta-test on an unseen leg).
  Task ``{"leg": k}``: the two actuators (hip and ankle) of leg k get control 0 — the agent's action is masked
  before the simulator sees it.  Legs are the torso's child bodies in model order (k = 0 front_left_leg,
  1 front_right_leg, 2 back_leg, 3 right_back_leg); an actuator belongs to the leg whose subtree holds its joint's
  body, read from the model (this gives Learning to Adapt's masks: leg 0 → actuators 2, 3 (hip_1, ankle_1), leg 1 →
  4, 5, leg 2 → 6, 7, leg 3 → 0, 1).  ``split="train"`` draws k uniformly from {0, 1, 2}; ``split="test"`` always
  gives k = 3.  Reward: Ant-v5's own, evaluated on the *masked* action (what the simulator sees): v_x + 1 (healthy)
  − 0.5‖a_masked‖² − 5·10⁻⁴‖clip(cfrc_ext, −1, 1)‖², v_x the torso's x displacement over the step / dt; episodes
  terminate when unhealthy (torso z outside [0.2, 1.0]), as Ant-v5's.
* ``walker-randomparams`` — Walker2d-v5 with randomised physics (rand_param_envs' ``Walker2DRandParamsEnv``,
  PEARL/ProMP): task ``{"body_mass_scale", "body_inertia_scale", "dof_damping_scale", "geom_friction_scale"}``,
  arrays shaped like ``model.body_mass`` (8,), ``model.body_inertia`` (8, 3), ``model.dof_damping`` (9,) and
  ``model.geom_friction`` (8, 3); every element i.i.d. base^U(−3, 3) as rand_param_envs' ``RandomEnv``
  (``log_scale_limit = 3.0``) draws them — base 1.5 for mass, inertia and friction, base **1.3** for damping (that
  file's constant; see ``WALKER_BASES``).  Both splits draw from this distribution.  Reward: Walker2d-v5's own,
  v_x + 1 (healthy) − 10⁻³‖a‖², v_x = Δqpos[0] / dt; episodes terminate when unhealthy, as Walker2d-v5's.

Parameter tasks hold *scale factors*, and ``set_task`` always writes ``original × scale`` with the model's values
from construction, so tasks never compound.  After changing masses or inertias, ``mj_setConst`` recomputes the
model's derived constants (subtree masses, inverse weights used by the constraint solver) on a scratch ``MjData``;
the simulation state is left untouched, so a task may switch mid-episode.

The environment (a ``recipes.envs.GymEnv``) offers rand_param_envs' convention: ``sample_tasks(n) -> list[dict]``
from the split's distribution with the env's own seeded generator, ``set_task(task)``, ``get_task() -> dict``.  Tasks
are small dicts of ints or float64 arrays (JSON after ``.tolist()``).  The task is hidden: observations are exactly
the v5 env's vector observation (or, with ``pixels=True``, its frame, as ``gym:`` renders it — no task is drawn into
it).  A new task is sampled and set at every ``reset()``; with ``task_switch=K`` it is also resampled after every
K-th agent step inside an episode (agent steps jK+1 … (j+1)K of an episode share one task).  A resample may repeat
the task (fwd-bwd: probability ½).

Evaluation (a fair protocol: the same tasks for every recipe and seed, each task equally often):
``evaluation_tasks()`` is a fixed list of (label, task) — fwd-bwd both directions; crippled-leg each leg of the
split (the held-out leg for ``test``); the random-parameter families ``EVAL_RANDOM_TASKS`` tasks drawn once from
``EVAL_TASK_SEED`` — and ``force_task(task)`` starts every following episode in that task.  With ``task_switch``
the switches inside an episode still come from the env's seeded stream.

Seeding: gymnasium's reset noise is seeded with ``seed`` on the first reset (as for ``gym:``); the task stream is a
separate ``numpy.random.Generator`` seeded from ``(seed, split)``, so the same seed and actions give the same
observations, rewards and tasks, and a train and a test env never share a stream.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from recipes.envs.gym import GymEnv
from recipes.envs.terminations import TerminationFn, healthy_z, lookup, walker

#: The families ``make_meta_env`` (and ``make_env`` as ``meta:FAMILY``) knows.
META_FAMILIES = ("halfcheetah-fwd-bwd", "halfcheetah-pier", "ant-crippled-leg", "walker-randomparams")
#: Task splits: ``train`` for training, ``test`` for evaluation (held-out tasks where the family has them).
SPLITS = ("train", "test")
#: rand_param_envs' ``log_scale_limit``: scale factors are base^U(−limit, limit).
LOG_SCALE_LIMIT = 3.0
#: halfcheetah-pier: the base of its damping factors.
PIER_BASE = 1.5
#: walker-randomparams: the base of each parameter's factors (rand_param_envs' ``RandomEnv.sample_tasks``).
WALKER_BASES: dict[str, float] = {"body_mass": 1.5, "body_inertia": 1.5, "dof_damping": 1.3, "geom_friction": 1.5}
#: ant-crippled-leg: the legs the train split draws from, and the test split's leg.
ANT_TRAIN_LEGS = (0, 1, 2)
ANT_TEST_LEG = 3
#: the random-parameter families' evaluation list: this many tasks, drawn once from this seed (the same list for
#: every recipe, seed and split)
EVAL_RANDOM_TASKS = 10
EVAL_TASK_SEED = 20_190_912


class MetaEnv(GymEnv):
    """A gymnasium MuJoCo v5 env with a hidden task, resampled at reset and every ``task_switch`` agent steps.

    Subclasses implement ``_default_task() -> dict`` (called once when the model exists: read what the family needs
    from it there; the initial task before the first reset), ``_sample_task(rng) -> dict``, ``_check_task(task) ->
    dict`` (a validated, normalised copy), ``_apply_task(task)`` and, where the simulator's action or the reward
    differs from the v5 env's, ``_sim_action`` and ``_task_reward``.

    Evaluation: ``evaluation_tasks()`` is the family's fixed, balanced list of (label, task) — the same for every
    recipe and seed — and ``force_task(task)`` makes every following reset start in ``task`` instead of a drawn one
    (``recipes.run.loop.evaluate_tasks`` runs the list).

    Attributes:
        task_switch: agent steps between in-episode task resamples, or ``None`` (only at reset).
        split: ``"train"`` or ``"test"``.
    """

    family = "meta"
    env_id: ClassVar[str] = ""
    meta_family: ClassVar[str] = ""

    def __init__(
        self,
        *,
        seed: int,
        pixels: bool = False,
        size: int = 64,
        action_repeat: int = 1,
        time_limit: int | None = None,
        task_switch: int | None = None,
        split: str = "train",
    ) -> None:
        _check_options(task_switch, split)
        super().__init__(
            self.env_id, seed=seed, pixels=pixels, size=size, action_repeat=action_repeat, time_limit=time_limit
        )
        self.name = f"meta:{self.meta_family}"
        self.task_switch = task_switch
        self.split = split
        self._rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1, SPLITS.index(split))))
        self._agent_steps = 0
        self._task: dict[str, Any] = {}
        self._forced: dict[str, Any] | None = None
        self.set_task(self._default_task())

    # -- rand_param_envs convention ----------------------------------------------------------------------

    @property
    def unwrapped(self) -> Any:
        """The wrapped gymnasium MuJoCo env (``.model``, ``.data``, ``.dt``)."""
        return self._env.unwrapped

    def sample_tasks(self, n: int) -> list[dict[str, Any]]:
        """``n`` tasks drawn i.i.d. from this split's task distribution with the env's seeded generator.

        Raises:
            ValueError: if ``n`` is negative.
        """
        if int(n) < 0:
            raise ValueError(f"sample_tasks: n must be non-negative, got {n}")
        return [self._sample_task(self._rng) for _ in range(int(n))]

    def set_task(self, task: dict[str, Any]) -> None:
        """Make ``task`` the current task (takes effect from the next env step; the state is kept).

        Raises:
            ValueError: if ``task`` lacks this family's keys, has others, or holds a bad value (naming it).
        """
        if not isinstance(task, dict):
            raise ValueError(f"{self.name}: a task is a dict, got {type(task).__name__}")
        checked = self._check_task(task)
        self._apply_task(checked)
        self._task = checked

    def evaluation_tasks(self) -> list[tuple[str, dict[str, Any]]]:
        """The fixed, balanced list of (label, task) an evaluation runs in this split (subclasses; module
        docstring)."""
        raise NotImplementedError

    def force_task(self, task: dict[str, Any] | None) -> None:
        """Start every following episode in ``task`` (None: draw from the split's distribution again).

        Raises:
            ValueError: as ``set_task``.
        """
        self._forced = None if task is None else self._check_task(task)

    def get_task(self) -> dict[str, Any]:
        """A copy of the current task."""
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self._task.items()}

    # -- Env --------------------------------------------------------------------------------------------

    def reset(self) -> dict[str, Any]:
        self.set_task(self.sample_tasks(1)[0] if self._forced is None else self._forced)
        self._agent_steps = 0
        return super().reset()

    def step(self, action: np.ndarray) -> dict[str, Any]:
        out = super().step(action)
        self._agent_steps += 1
        if self.task_switch is not None and not out["is_last"] and self._agent_steps % self.task_switch == 0:
            self.set_task(self.sample_tasks(1)[0])
        return out

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        action = self._sim_action(np.asarray(env_action, self._act_dtype).reshape(self._act_shape))
        self._obs, reward, terminated, truncated, info = self._env.step(action)
        return self._task_reward(float(reward), info, action), bool(terminated), bool(truncated)

    # -- family hooks -----------------------------------------------------------------------------------

    def _sim_action(self, action: np.ndarray) -> np.ndarray:
        """The env-scale action handed to the simulator (default: unchanged)."""
        return action

    def _task_reward(self, reward: float, info: dict[str, Any], action: np.ndarray) -> float:
        """This family's reward for one env step (default: the v5 env's own)."""
        return reward

    def _default_task(self) -> dict[str, Any]:
        raise NotImplementedError

    def _sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def _check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _apply_task(self, task: dict[str, Any]) -> None:
        pass

    def _check_keys(self, task: dict[str, Any], keys: tuple[str, ...]) -> None:
        if set(task) != set(keys):
            raise ValueError(f"{self.name}: a task has keys {sorted(keys)}, got {sorted(task)}")


class HalfCheetahFwdBwd(MetaEnv):
    """HalfCheetah-v5 running forward (d = +1) or backward (d = −1): r = d·v_x − 0.05‖a‖² (module docstring)."""

    env_id = "HalfCheetah-v5"
    meta_family = "halfcheetah-fwd-bwd"
    CTRL_COST = 0.05

    def _default_task(self) -> dict[str, Any]:
        return {"direction": 1}

    def _sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"direction": int(rng.choice((-1, 1)))}

    def evaluation_tasks(self) -> list[tuple[str, dict[str, Any]]]:
        return [("fwd", {"direction": 1}), ("bwd", {"direction": -1})]

    def _check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("direction",))
        d = task["direction"]
        if isinstance(d, bool) or d not in (-1, 1):
            raise ValueError(f"{self.name}: direction must be +1 or -1, got {d!r}")
        return {"direction": int(d)}

    def _task_reward(self, reward: float, info: dict[str, Any], action: np.ndarray) -> float:
        v_x = float(info["x_velocity"])  # (qpos[0] after − qpos[0] before) / dt
        return self._task["direction"] * v_x - self.CTRL_COST * float(np.sum(np.square(action, dtype=np.float64)))


class AntCrippledLeg(MetaEnv):
    """Ant-v5 with leg k's hip and ankle actuators disabled (control forced to 0); Ant-v5's reward.

    Attributes:
        leg_actuators: ``leg_actuators[k]`` — the actuator indices of leg k (k = 0…3), read from the model.
    """

    env_id = "Ant-v5"
    meta_family = "ant-crippled-leg"

    def _default_task(self) -> dict[str, Any]:
        model = self.unwrapped.model
        self.leg_actuators: tuple[tuple[int, ...], ...] = leg_actuators(model)
        self._mask = np.ones(model.nu)
        return {"leg": ANT_TEST_LEG if self.split == "test" else ANT_TRAIN_LEGS[0]}

    def _sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        if self.split == "test":
            return {"leg": ANT_TEST_LEG}
        return {"leg": int(rng.choice(ANT_TRAIN_LEGS))}

    def evaluation_tasks(self) -> list[tuple[str, dict[str, Any]]]:
        legs = (ANT_TEST_LEG,) if self.split == "test" else ANT_TRAIN_LEGS
        return [(f"leg{leg}", {"leg": leg}) for leg in legs]

    def _check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, ("leg",))
        leg = task["leg"]
        if isinstance(leg, bool) or not isinstance(leg, (int, np.integer)) or not 0 <= leg < len(self.leg_actuators):
            raise ValueError(f"{self.name}: leg must be an integer in [0, {len(self.leg_actuators)}), got {leg!r}")
        return {"leg": int(leg)}

    def _apply_task(self, task: dict[str, Any]) -> None:
        self._mask = np.ones_like(self._mask)
        self._mask[list(self.leg_actuators[task["leg"]])] = 0.0

    def _sim_action(self, action: np.ndarray) -> np.ndarray:
        return (action * self._mask).astype(action.dtype)


class RandomParamsEnv(MetaEnv):
    """A v5 env whose model parameters are ``original × scale`` per task, scale = base^U(−3, 3) per element.

    Tasks are ``{f"{param}_scale": ndarray}`` for each ``param`` in ``bases`` (a ``mujoco.MjModel`` field name),
    shaped like that field, float64.

    Attributes:
        original: ``original[param]`` — the model's values at construction (float64 copies); ``set_task`` writes
            ``original[param] × scale``.
    """

    bases: ClassVar[dict[str, float]] = {}

    def _default_task(self) -> dict[str, Any]:
        model = self.unwrapped.model
        self.original = {p: np.array(getattr(model, p), np.float64, copy=True) for p in self.bases}
        self._scratch: Any = None  # an MjData for mj_setConst, made on first use
        return {f"{p}_scale": np.ones_like(v) for p, v in self.original.items()}

    def _sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            f"{p}_scale": base ** rng.uniform(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT, size=self.original[p].shape)
            for p, base in self.bases.items()
        }

    def evaluation_tasks(self) -> list[tuple[str, dict[str, Any]]]:
        rng = np.random.default_rng(EVAL_TASK_SEED)
        return [(f"params{i}", self._sample_task(rng)) for i in range(EVAL_RANDOM_TASKS)]

    def _check_task(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check_keys(task, tuple(f"{p}_scale" for p in self.bases))
        out = {}
        for p in self.bases:
            key = f"{p}_scale"
            scale = np.array(task[key], np.float64, copy=True)
            if scale.shape != self.original[p].shape:
                raise ValueError(f"{self.name}: {key} must have shape {self.original[p].shape}, got {scale.shape}")
            if not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"{self.name}: {key} must be finite and positive")
            out[key] = scale
        return out

    def _apply_task(self, task: dict[str, Any]) -> None:
        import mujoco

        model = self.unwrapped.model
        for p in self.bases:
            getattr(model, p)[...] = self.original[p] * task[f"{p}_scale"]
        if "body_mass" in self.bases or "body_inertia" in self.bases:
            if self._scratch is None:
                self._scratch = mujoco.MjData(model)
            mujoco.mj_setConst(model, self._scratch)  # derived constants; the env's own MjData is not touched


class HalfCheetahPier(RandomParamsEnv):
    """HalfCheetah-v5 with ``dof_damping = original × 1.5^U(−3, 3)`` per dof; HalfCheetah-v5's reward."""

    env_id = "HalfCheetah-v5"
    meta_family = "halfcheetah-pier"
    bases: ClassVar[dict[str, float]] = {"dof_damping": PIER_BASE}


class WalkerRandomParams(RandomParamsEnv):
    """Walker2d-v5 with body mass, inertia, dof damping and geom friction randomised as rand_param_envs does."""

    env_id = "Walker2d-v5"
    meta_family = "walker-randomparams"
    bases: ClassVar[dict[str, float]] = WALKER_BASES


_CLASSES: dict[str, type[MetaEnv]] = {
    cls.meta_family: cls for cls in (HalfCheetahFwdBwd, HalfCheetahPier, AntCrippledLeg, WalkerRandomParams)
}
assert tuple(_CLASSES) == META_FAMILIES


def leg_actuators(model: Any) -> tuple[tuple[int, ...], ...]:
    """The actuator indices of each leg of an Ant model: legs are the torso's child bodies in model order, and an
    actuator belongs to the leg whose subtree holds the body of the joint it drives.

    Raises:
        ValueError: if the model has no ``torso`` body, an actuator drives no joint or no leg, or a leg has none.
    """
    import mujoco

    torso = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    if torso < 0:
        raise ValueError("leg_actuators: the model has no body named 'torso'")
    legs = [b for b in range(model.nbody) if b != torso and int(model.body_parentid[b]) == torso]
    owned: list[list[int]] = [[] for _ in legs]
    for i in range(model.nu):
        if int(model.actuator_trntype[i]) != int(mujoco.mjtTrn.mjTRN_JOINT):
            raise ValueError(f"leg_actuators: actuator {i} does not drive a joint")
        body = int(model.jnt_bodyid[int(model.actuator_trnid[i, 0])])
        while body not in (0, torso) and int(model.body_parentid[body]) != torso:
            body = int(model.body_parentid[body])
        if body not in legs:
            raise ValueError(f"leg_actuators: actuator {i} drives a joint outside every leg")
        owned[legs.index(body)].append(i)
    if not legs or not all(owned):
        raise ValueError(f"leg_actuators: every leg needs an actuator, got {owned}")
    return tuple(tuple(a) for a in owned)


def _check_options(task_switch: int | None, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if task_switch is not None and (
        isinstance(task_switch, bool) or not isinstance(task_switch, (int, np.integer)) or task_switch < 1
    ):
        raise ValueError(f"task_switch must be a positive number of agent steps or None, got {task_switch!r}")


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
) -> MetaEnv:
    """The meta-RL env ``family`` (one of ``META_FAMILIES``; see the module docstring).

    Args:
        family: e.g. ``"halfcheetah-fwd-bwd"`` (without the ``meta:`` prefix).
        seed: seeds gymnasium's reset noise and the task stream.
        pixels: observe ``(3, size, size)`` uint8 frames instead of the v5 env's float32 vector.
        size: side of the pixel observations and rendered frames.
        action_repeat: env steps per agent step.
        time_limit: episode length in agent steps (``None``: the v5 env's 1000 env steps).
        task_switch: resample the task after every this many agent steps within an episode (``None``: at reset
            only).
        split: ``"train"`` or ``"test"`` task distribution.

    Raises:
        ValueError: for an unknown family (naming it and the known ones), a split other than train/test, or
            ``task_switch < 1``.
    """
    if family not in _CLASSES:
        from recipes.suggest import did_you_mean

        raise ValueError(
            f"unknown environment 'meta:{family}'{did_you_mean(family, META_FAMILIES)}: known families are "
            f"{', '.join(META_FAMILIES)}"
        )
    _check_options(task_switch, split)
    return _CLASSES[family](
        seed=seed,
        pixels=pixels,
        size=size,
        action_repeat=action_repeat,
        time_limit=time_limit,
        task_switch=task_switch,
        split=split,
    )


__all__ = [
    "META_FAMILIES",
    "SPLITS",
    "TERMINATIONS",
    "AntCrippledLeg",
    "HalfCheetahFwdBwd",
    "HalfCheetahPier",
    "MetaEnv",
    "RandomParamsEnv",
    "WalkerRandomParams",
    "leg_actuators",
    "make_meta_env",
    "termination",
]


#: Each family's termination function for model rollouts (``recipes.envs.terminations``; None: time limit only).
TERMINATIONS: dict[str, TerminationFn | None] = {
    "halfcheetah-fwd-bwd": None,
    "halfcheetah-pier": None,
    "ant-crippled-leg": healthy_z(0.2, 1.0),
    "walker-randomparams": walker,
}


def termination(family: str) -> TerminationFn | None:
    """``meta:FAMILY``'s termination function (``TERMINATIONS``).

    Raises:
        ValueError: an unknown family.
    """
    return lookup(TERMINATIONS, "meta", family)
