"""One environment interface for the Dreamer/TEMPO recipes (DreamerV2 conventions).

``make_env(name, *, seed, pixels=None, size=64, action_repeat=None, time_limit=None) -> Env``

Names (anything else raises ``ValueError`` naming it; the CLI turns that into exit code 2):

* ``dmc:DOMAIN_TASK`` — DeepMind Control Suite, e.g. ``dmc:cartpole_swingup``, ``dmc:walker_walk``,
  ``dmc:quadruped_walk`` (``dmc:cup_catch`` is accepted for ``ball_in_cup_catch``).
  Action repeat 2 by default.  Episode length: the suite's own limit, 1000 env steps = 500 agent steps at
  action repeat 2 (every suite task ends by time limit, so ``discount`` stays 1 there).  Pixels are ``size``×``size``
  RGB from camera 0 (camera 2 for quadruped, as in DreamerV2), rendered with shadows and multisample
  anti-aliasing off (an order of magnitude cheaper on Mesa's llvmpipe; see ``DMCEnv``).  Proprioceptive observations are
  the suite's observation dict, every value flattened and concatenated in the dict's order, as float32.
* ``atari:GAME`` — Arcade Learning Environment through ale-py + gymnasium, e.g. ``atari:pong``
  (``atari:james_bond`` → rom ``jamesbond``).  Made as ``ALE/Game-v5`` with ``frameskip=1``; gymnasium's
  ``AtariPreprocessing`` then repeats each action for 4 frames (max-pooling the last two), takes up to 30 random
  no-ops at reset and resizes the grayscale screen to ``size``×``size`` (area interpolation).  Sticky actions
  (``repeat_action_probability=0.25``), minimal action set (``full_action_space=False``), no terminal on life
  loss.  Time limit 27000 agent steps = 108000 frames (30 minutes of play) — DreamerV2's
  ``time_limit: 27000`` counted after the action repeat, the Machado et al. (2018) protocol; ALE's own frame cap
  is switched off so this limit is the only one.
* ``gym:ID`` — any registered gymnasium id, e.g. ``gym:Pendulum-v1``, ``gym:HalfCheetah-v5``: vector observations
  (``gymnasium.spaces.flatten``, float32), or with ``pixels=True`` the ``rgb_array`` render resized to
  ``size``×``size`` (MuJoCo envs render at that size directly, without shadows or anti-aliasing as for dmc;
  classic-control frames need pygame).  Action repeat 1 by default; episode length is the id's own
  ``max_episode_steps`` unless ``time_limit`` is given.

Arguments:

* ``seed`` seeds everything random in the env (dm_control's task RNG, gymnasium's ``reset(seed=...)`` on the first
  reset, hence ALE's sticky actions and no-ops): the same seed and the same actions give the same observations.
  Later resets continue the seeded streams, so a run of episodes is reproducible too.
* ``pixels``: ``None`` picks the family default — False for ``dmc`` and ``gym``, True for ``atari``.  Recipes pass
  it explicitly for ``dmc``.  ``atari`` with ``pixels=False`` observes the 128-byte RAM as float32.
* ``size``: side of the square pixel observations.
* ``action_repeat``: env steps per agent step (``None`` → 2 dmc, 4 atari, 1 gym); rewards are summed over it and
  the repeat stops early when the episode ends.
* ``time_limit``: in **agent** steps (after the action repeat), as DreamerV2's ``TimeLimit`` wrapper counts.
  ``None`` → the family default (dmc: the suite's own 1000 env steps; atari: 27000; gym: the id's own limit).
  When given it is the only limit: the underlying env's own limit is lifted.  Reaching it truncates the episode
  (``is_last`` with ``discount`` 1).

``Env`` objects have ``obs_shape`` ((C, H, W) uint8 channel-first for pixels, (O,) float32 for vectors),
``action_dim``, ``discrete`` (discrete actions are one-hot vectors of length ``action_dim``; ``step`` takes their
argmax, and also accepts an integer index), ``reset() -> dict``,
``step(action) -> dict``, ``render() -> (H, W, 3) uint8`` (frames for episode videos) and ``close()``.

Every step dict (DreamerV2 convention; the replay buffer and world model rely on it) holds

* ``obs`` — the observation;
* ``action`` — float32 [A], the action that led to this ``obs`` (zeros at reset; one-hot for discrete actions;
  for continuous actions the value in [-1, 1]^A after clipping);
* ``reward`` — float32 scalar, summed over the action repeat (0 at reset);
* ``discount`` — float32, 0.0 if the episode *terminated* at this step (a true terminal), else 1.0 — a time-limit
  truncation keeps 1.0;
* ``is_first``, ``is_last`` (episode over: terminated or truncated), ``is_terminal`` — Python bools.

Continuous actions live in [-1, 1]^A (clipped) and are rescaled to the env's bounds (dimensions with an infinite
bound get the clipped value itself).

Headless rendering: before dm_control (or a gymnasium MuJoCo env) is imported, ``MUJOCO_GL`` is set to ``egl``
if unset — after checking in a subprocess that EGL really renders a frame — falling back to ``osmesa`` when it
does not, and to ``disabled`` (proprioceptive envs still work; rendering raises) when neither does.  A value the
user set is left alone.  ``make setup`` installs Debian's Mesa packages for both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from typing import Any

import numpy as np

FAMILIES = ("dmc", "atari", "gym")
DEFAULT_ACTION_REPEAT = {"dmc": 2, "atari": 4, "gym": 1}
DEFAULT_PIXELS = {"dmc": False, "atari": True, "gym": False}
ATARI_TIME_LIMIT = 27_000  # agent steps = 108000 frames at action repeat 4
ATARI_NOOP_MAX = 30
ATARI_STICKY = 0.25

# --------------------------------------------------------------------------------------------------------------
# Headless OpenGL for MuJoCo


_GL_PROBE = """
import mujoco
xml = '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size=".2" rgba="1 0 0 1"/></worldbody></mujoco>'
model = mujoco.MjModel.from_xml_string(xml)
data = mujoco.MjData(model)
mujoco.mj_forward(model, data)
renderer = mujoco.Renderer(model, 16, 16)
renderer.update_scene(data)
image = renderer.render()
renderer.close()
assert image.shape == (16, 16, 3) and int(image[..., 0].max()) > 0, "blank frame"
"""


def _gl_renders(backend: str, timeout: float = 120.0) -> bool:
    """Whether MuJoCo renders a (non-blank) frame with ``MUJOCO_GL=backend``, tried in a fresh process."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        done = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def ensure_headless_gl() -> str:
    """Set ``MUJOCO_GL`` (if unset) to a backend that renders: ``egl``, else ``osmesa``, else ``disabled``.

    Must run before ``dm_control`` is first imported (it reads the variable at import).  Returns the backend.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    for backend in ("egl", "osmesa"):
        if _gl_renders(backend):
            chosen = backend
            break
    else:
        chosen = "disabled"
        warnings.warn(
            "MuJoCo cannot render headless: neither EGL nor OSMesa works (install Mesa: `make setup` as root, or "
            "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6). Pixel observations will fail.",
            RuntimeWarning,
            stacklevel=4,
        )
    os.environ["MUJOCO_GL"] = chosen  # dm_control / gymnasium set PYOPENGL_PLATFORM to match when they load it
    return chosen


# --------------------------------------------------------------------------------------------------------------
# The interface


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


# --------------------------------------------------------------------------------------------------------------
# DeepMind Control Suite


def _dmc_task(task: str) -> tuple[str, str]:
    from dm_control import suite

    alias = {"cup_catch": "ball_in_cup_catch"}
    task = alias.get(task, task)
    for domain, name in suite.ALL_TASKS:
        if f"{domain}_{name}" == task:
            return domain, name
    raise ValueError(f"unknown environment 'dmc:{task}': not a dm_control suite DOMAIN_TASK (e.g. dmc:walker_walk)")


class DMCEnv(Env):
    """dm_control suite task.  Pixels come from a persistent ``dm_control.mujoco.Camera`` on a rendering context
    created with ``model.vis.quality.shadowsize = 0`` and ``offsamples = 0`` plus the ``shadow`` render flag off:
    no shadow pass and no multisampling.  The frames lose the soft shadows and edge smoothing (thin geoms such as
    cartpole's rail can drop out at 64×64); otherwise they are the same scene.  Measured for 64×64
    ``cartpole_swingup`` on one CPU core, Mesa 22.3 llvmpipe through EGL (env step + render): 13 frames/s with
    ``physics.render`` and MuJoCo's defaults, 16 with a persistent camera, 60 without shadows, 155 without shadows
    and anti-aliasing (208 if floor reflections were dropped too — kept here, they show in walker/quadruped).
    The same through OSMesa: 15 → 165."""

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


# --------------------------------------------------------------------------------------------------------------
# Atari


def _atari_rom(game: str) -> str:
    import ale_py

    roms = set(ale_py.roms.get_all_rom_ids())
    for candidate in (game.lower(), game.lower().replace("_", "")):
        if candidate in roms:
            return candidate
    raise ValueError(f"unknown environment 'atari:{game}': no such ALE rom (e.g. atari:pong, atari:breakout)")


class AtariEnv(Env):
    """ALE game with DreamerV2/Machado et al. preprocessing (see the module docstring)."""

    family = "atari"

    def __init__(
        self, game: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None
    ) -> None:
        import ale_py
        import gymnasium as gym
        from gymnasium.wrappers import AtariPreprocessing

        rom = _atari_rom(game)
        gym.register_envs(ale_py)
        name = rom.title().replace("_", "")  # ale_py's rom id → gymnasium name (registration.rom_id_to_name)
        inner = gym.make(
            f"ALE/{name}-v5",
            frameskip=1,
            repeat_action_probability=ATARI_STICKY,
            full_action_space=False,
            max_num_frames_per_episode=None,  # no ALE frame cap: the agent-step time limit is the only one
        )
        self._env = AtariPreprocessing(
            inner,
            noop_max=ATARI_NOOP_MAX,
            frame_skip=action_repeat,
            screen_size=size,
            terminal_on_life_loss=False,
            grayscale_obs=True,
            grayscale_newaxis=False,
            scale_obs=False,
        )
        self._ale = inner.unwrapped.ale
        self._seed: int | None = seed
        self._last: np.ndarray | None = None
        super().__init__(
            f"atari:{game}",
            obs_shape=(1, size, size) if pixels else (128,),
            obs_dtype=np.uint8 if pixels else np.float32,
            action_dim=int(inner.action_space.n),
            discrete=True,
            pixels=pixels,
            action_repeat=action_repeat,
            time_limit=time_limit,
        )
        self._repeat = 1  # AtariPreprocessing repeats (and max-pools) the frames

    def _convert(self, frame: np.ndarray) -> np.ndarray:
        if self.pixels:
            return np.array(frame, dtype=np.uint8)[None]
        return self._ale.getRAM().astype(np.float32)

    def _reset_inner(self) -> np.ndarray:
        frame, _ = self._env.reset(seed=self._seed)
        self._seed = None  # later resets continue the seeded generators
        self._last = self._convert(frame)
        return self._last

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        frame, reward, terminated, truncated, _ = self._env.step(env_action)
        self._last = self._convert(frame)
        return float(reward), bool(terminated), bool(truncated)

    def _observe(self) -> np.ndarray:
        assert self._last is not None
        return self._last

    def render(self) -> np.ndarray:
        return np.array(self._ale.getScreenRGB(), dtype=np.uint8)

    def close(self) -> None:
        self._env.close()


# --------------------------------------------------------------------------------------------------------------
# Any gymnasium id


class GymEnv(Env):
    """A registered gymnasium environment with Box or Discrete actions."""

    family = "gym"

    def __init__(
        self, env_id: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None
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
        kwargs: dict[str, Any] = {}
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


# --------------------------------------------------------------------------------------------------------------


def make_env(
    name: str,
    *,
    seed: int,
    pixels: bool | None = None,
    size: int = 64,
    action_repeat: int | None = None,
    time_limit: int | None = None,
) -> Env:
    """Make ``dmc:DOMAIN_TASK``, ``atari:GAME`` or ``gym:ID`` (see the module docstring for every convention)."""
    family, sep, task = name.partition(":")
    if not sep or family not in FAMILIES or not task:
        raise ValueError(f"unknown environment {name!r}: use dmc:DOMAIN_TASK, atari:GAME or gym:ID")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    repeat = DEFAULT_ACTION_REPEAT[family] if action_repeat is None else int(action_repeat)
    if repeat < 1:
        raise ValueError(f"action_repeat must be at least 1, got {action_repeat}")
    if time_limit is not None and time_limit < 1:
        raise ValueError(f"time_limit must be at least 1 agent step, got {time_limit}")
    if family == "atari" and time_limit is None:
        time_limit = ATARI_TIME_LIMIT
    use_pixels = DEFAULT_PIXELS[family] if pixels is None else bool(pixels)
    cls = {"dmc": DMCEnv, "atari": AtariEnv, "gym": GymEnv}[family]
    return cls(task, seed=seed, pixels=use_pixels, size=size, action_repeat=repeat, time_limit=time_limit)


__all__ = ["FAMILIES", "AtariEnv", "DMCEnv", "Env", "GymEnv", "ensure_headless_gl", "make_env"]
