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
* ``meta:FAMILY`` — a meta-RL task family on gymnasium MuJoCo v5 with a hidden task that may switch inside an
  episode (M3PO §7): ``meta:halfcheetah-fwd-bwd``, ``meta:halfcheetah-pier``, ``meta:ant-crippled-leg``,
  ``meta:walker-randomparams`` (``recipes.envs.metarl``; ``task_switch``, ``split``).  Action repeat 1.
* ``admrl:FAMILY`` — AdMRL's reward families parameterised by ψ ∈ [−1, 1]^k, differentiable in ψ:
  ``admrl:ant2d``, ``admrl:ant3d``, ``admrl:hopper2d``, ``admrl:walker2d``, ``admrl:halfcheetah-vel``,
  ``admrl:cheetah-highdim`` (``recipes.envs.admrl``; ``set_task(psi)``).  Action repeat 1, vector observations.
* ``mario:WORLD-STAGE`` — one Super Mario Bros level through gym-super-mario-bros 7.4.0 on nes-py 8.2.1 (the
  optional extra ``pip install 'reweigh[mario]'``; nes-py compiles C++), e.g. ``mario:1-1``, ``mario:3-2``, as in
  "Pre-training world models on related tasks" §5 (``recipes.envs.mario``): the package's 12-action
  ``COMPLEX_MOVEMENT``, its reward (x progress, clock ticks, −25 on death, clipped to ±15 per frame), grayscale
  ``size``×``size`` frames, action repeat 4, sticky actions 0.2 per frame.  Death and the flag end the episode as
  true terminals (``discount`` 0); the game clock ends every episode long before the 27000-agent-step limit.
  ``mario:3-1,3-2,3-3,3-4`` is the paper's four-level multi-task set.
* ``gym:ID`` — any registered gymnasium id, e.g. ``gym:Pendulum-v1``, ``gym:HalfCheetah-v5``: vector observations
  (``gymnasium.spaces.flatten``, float32), or with ``pixels=True`` the ``rgb_array`` render resized to
  ``size``×``size`` (MuJoCo envs render at that size directly, without shadows or anti-aliasing as for dmc;
  classic-control frames need pygame).  Action repeat 1 by default; episode length is the id's own
  ``max_episode_steps`` unless ``time_limit`` is given.

* ``A,B,C`` — a comma list of the names above: a multi-task environment that draws one member per episode
  (uniformly, or by ``task_weights``) and adds ``task`` (the member's index) to every step dict; the members must
  share their spaces (``recipes.envs.multitask``).  ``dmc:walker_stand,walker_walk`` — a member without a family
  takes the previous one's.

Arguments:

* ``seed`` seeds everything random in the env (dm_control's task RNG, gymnasium's ``reset(seed=...)`` on the first
  reset, hence ALE's sticky actions and no-ops): the same seed and the same actions give the same observations.
  Later resets continue the seeded streams, so a run of episodes is reproducible too.
* ``pixels``: ``None`` picks the family default — False for ``dmc`` and ``gym``, True for ``atari`` and ``mario``.
  Recipes pass it explicitly for ``dmc``.  ``atari`` with ``pixels=False`` observes the 128-byte RAM as float32,
  ``mario`` the 2 KiB NES RAM.
* ``size``: side of the square pixel observations.
* ``action_repeat``: env steps per agent step (``None`` → 2 dmc, 4 atari and mario, 1 gym); rewards are summed over
  it and the repeat stops early when the episode ends.
* ``time_limit``: in **agent** steps (after the action repeat), as DreamerV2's ``TimeLimit`` wrapper counts.
  ``None`` → the family default (dmc: the suite's own 1000 env steps; atari and mario: 27000; gym: the id's own
  limit).
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

from collections.abc import Sequence
from typing import Any

from recipes.envs.base import Env
from recipes.envs.gl import ensure_headless_gl
from recipes.envs.mismatch import MismatchEnv, check_mismatch
from recipes.envs.registry import ENV_FAMILIES, EnvFamily, env_usage

#: The one list of environment families (configs validate against it): ``recipes.envs.registry``'s.
FAMILIES = tuple(ENV_FAMILIES)
DEFAULT_ACTION_REPEAT = {f.prefix: f.action_repeat for f in ENV_FAMILIES.values()}
DEFAULT_PIXELS = {f.prefix: f.pixels for f in ENV_FAMILIES.values()}


#: ``make_env``'s family-specific options and their defaults (an option left at its default is not "given").
_OPTION_DEFAULTS: dict[str, Any] = {"task_switch": None, "split": "train"}


def _check_options(
    name: str,
    family: EnvFamily,
    size: int,
    action_repeat: int | None,
    time_limit: int | None,
    options: dict[str, Any],
) -> None:
    """``make_env``'s checks of its options for one environment ``name`` of ``family``.

    Raises:
        ValueError: an option out of range, or a family's own option (``task_switch``, ``split``) given to another.
    """
    foreign = [k for k, v in options.items() if k not in family.options and v != _OPTION_DEFAULTS[k]]
    if foreign:
        owners = [f"{f.prefix}:" for f in ENV_FAMILIES.values() if set(foreign) <= set(f.options)]
        raise ValueError(f"{' and '.join(foreign)} apply to {' '.join(owners)} environments only, not {name!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if action_repeat is not None and int(action_repeat) < 1:
        raise ValueError(f"action_repeat must be at least 1, got {action_repeat}")
    if time_limit is not None and time_limit < 1:
        raise ValueError(f"time_limit must be at least 1 agent step, got {time_limit}")


def make_env(
    name: str,
    *,
    seed: int,
    pixels: bool | None = None,
    size: int = 64,
    action_repeat: int | None = None,
    time_limit: int | None = None,
    task_switch: int | None = None,
    split: str = "train",
    task_weights: Sequence[float] | None = None,
    distractors: int = 0,
    obs_noise: float = 0.0,
    obs_noise_on: str = "state",
) -> Env:
    """Make ``FAMILY:NAME`` of any family of ``recipes.envs.registry.ENV_FAMILIES`` (see the module docstring for
    every convention; ``task_switch`` and ``split`` are the ``meta:`` families' own, see ``recipes.envs.metarl``),
    or, for a comma list of names, a ``recipes.envs.multitask.MultiTaskEnv`` over them (``task_weights``: the
    member draw's probabilities; None = uniform).  ``distractors``, ``obs_noise`` and ``obs_noise_on`` wrap the
    environment (each member of a set) in ``recipes.envs.mismatch.MismatchEnv``.

    Raises:
        ValueError: an unknown family or name, or an option out of range (one line naming it).
    """
    options = {"task_switch": task_switch, "split": split}
    mismatch = {"distractors": distractors, "obs_noise": obs_noise, "obs_noise_on": obs_noise_on}
    if "," in name:
        from recipes.envs.multitask import make_multitask

        return make_multitask(
            name,
            seed=seed,
            make=make_env,
            weights=task_weights,
            pixels=pixels,
            size=size,
            action_repeat=action_repeat,
            time_limit=time_limit,
            **options,
            **mismatch,
        )
    if task_weights is not None:
        raise ValueError(f"task_weights apply to a set of environments (a comma list), not {name!r}")
    prefix, sep, task = name.partition(":")
    if not sep or prefix not in ENV_FAMILIES or not task:
        from recipes.suggest import did_you_mean

        hint = did_you_mean(prefix, FAMILIES) if sep else ""
        raise ValueError(f"unknown environment {name!r}{hint}: use {env_usage()}")
    family = ENV_FAMILIES[prefix]
    _check_options(name, family, size, action_repeat, time_limit, options)
    pixels = family.pixels if pixels is None else bool(pixels)
    check_mismatch(name, pixels, distractors, obs_noise, obs_noise_on)
    kwargs = {k: v for k, v in options.items() if k in family.options}
    env = family.make(
        task,
        seed=seed,
        pixels=pixels,
        size=size,
        action_repeat=family.action_repeat if action_repeat is None else int(action_repeat),
        time_limit=time_limit,
        **kwargs,
    )
    if distractors or obs_noise:
        return MismatchEnv(env, seed=seed, **mismatch)  # type: ignore[arg-type]
    return env


__all__ = ["ENV_FAMILIES", "FAMILIES", "Env", "EnvFamily", "ensure_headless_gl", "make_env"]
