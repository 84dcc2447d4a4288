"""Super Mario Bros levels as ``mario:WORLD-STAGE`` (see ``recipes.envs`` for the step-dict conventions).

The setting of "Pre-training world models on related tasks" (§5.1–5.2): ``gym-super-mario-bros`` 7.4.0 (it ships the
ROM) on the ``nes-py`` 8.2.1 emulator, one level per environment (its ``SuperMarioBros-W-S-v0`` ids: the unmodified
"vanilla" ROM, the game written to start at that level), with

* the twelve button combinations of the package's ``COMPLEX_MOVEMENT`` (``MARIO_ACTIONS``, the paper's list);
* the package's reward: Mario's horizontal movement + the in-game clock's ticks (−1 each) − 25 on death, clipped to
  [−15, 15] per emulator frame (so at most ±60 per agent step at action repeat 4);
* the episode ending on death (falling into a pit, an enemy, the clock running out) or on reaching the flag / axe:
  both are true terminals (``discount`` 0).  The clock kills Mario within 400 game ticks (≈ 8000 frames ≈ 2000
  agent steps: standing still on 1-1 ends by time-up after 2005), so the time limit (``MARIO_TIME_LIMIT``,
  DreamerV2's Atari 27000 agent steps, which the paper reuses) is a safety net; only a ``time_limit`` below the
  clock's makes a truncation (``discount`` 1);
* DreamerV2's Atari preprocessing as the paper describes it: grayscale frames resized to ``size``×``size`` (area
  interpolation), uint8 ``(1, size, size)``; each action repeated for 4 frames; sticky actions — on every emulator
  frame the previous frame's buttons stay pressed with probability 0.2 (``MARIO_STICKY``; ALE's rule, with the
  paper's probability).  ``pixels=False`` observes the 2 KiB NES RAM as float32 ``(2048,)``.

The emulator and the level reset are deterministic; the sticky actions are the only randomness, drawn from
``numpy.random.default_rng(seed)``, so the same seed and actions give the same episodes.

numpy 2: nes-py 8.2.1 and gym-super-mario-bros 7.4.0 were written for numpy 1, whose value-based casting turned
``uint8 * 1024`` into a wider integer.  Under numpy 2 (NEP 50) a Python int operand takes the uint8 type of the
array scalar, and one that does not fit raises, so both packages fail on the first env:

* ``nes_py/_rom.py`` line 198, ``ROM.prg_rom_stop``: ``self.prg_rom_size * 2**10`` →
  ``OverflowError: Python integer 1024 out of bounds for uint8`` (``prg_rom_size`` is ``16 * header[4]``, a uint8);
* ``gym_super_mario_bros/smb_env.py`` line 142, ``_x_position``: ``self.ram[0x6d] * 0x100`` →
  ``OverflowError: Python integer 256 out of bounds for uint8``.

``MarioEnv`` fixes both the way upstream would: a ``ROM`` subclass whose header is int64
(``ines_header``), installed only while the emulator is built, and a ``SuperMarioBrosEnv`` subclass that reads
the RAM bytes as Python ints.  Everything else in the two packages runs as published.  ``nes-py`` subclasses the
legacy ``gym.Env`` (gym 0.26.2, imported under numpy 2 without trouble); this module uses none of gym's API
(no ``gym.make``, no wrappers), silences the notice gym prints on import and undoes the environment variables
that the import sets.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from recipes.envs.base import Env

MARIO_INSTALL_HINT = "pip install 'reweigh[mario]' (gym-super-mario-bros 7.4.0 and nes-py 8.2.1; nes-py compiles C++)"
MARIO_TIME_LIMIT = 27_000  # agent steps, DreamerV2's Atari limit; the game clock ends every episode well before
MARIO_STICKY = 0.2  # the paper's sticky-action probability (per emulator frame)
MARIO_RAM_SIZE = 0x800  # bytes of NES work RAM: the observation when pixels=False

#: The paper's twelve button combinations, in the order of gym_super_mario_bros.actions.COMPLEX_MOVEMENT.
MARIO_ACTIONS: tuple[tuple[str, ...], ...] = (
    ("NOOP",),
    ("right",),
    ("right", "A"),
    ("right", "B"),
    ("right", "A", "B"),
    ("A",),
    ("left",),
    ("left", "A"),
    ("left", "B"),
    ("left", "A", "B"),
    ("down",),
    ("up",),
)

# The NES controller's shift-register bits, as nes-py's controller byte takes them (A is bit 0, Right bit 7).
_BUTTON_BITS = {
    "NOOP": 0,
    "A": 1 << 0,
    "B": 1 << 1,
    "select": 1 << 2,
    "start": 1 << 3,
    "up": 1 << 4,
    "down": 1 << 5,
    "left": 1 << 6,
    "right": 1 << 7,
}

# Environment variables that `import gym` (0.26) sets for pygame's sake; restored after the import.
_GYM_ENV_VARS = ("SDL_AUDIODRIVER", "PYGAME_HIDE_SUPPORT_PROMPT")
_GYM_NOTICE = "Gym has been unmaintained"


def button_byte(buttons: tuple[str, ...]) -> int:
    """The controller byte (0–255) that presses ``buttons`` (names as in ``MARIO_ACTIONS``)."""
    byte = 0
    for button in buttons:
        byte |= _BUTTON_BITS[button]
    return byte


def parse_level(level: str) -> tuple[int, int]:
    """``"3-2"`` → ``(3, 2)``: world 1–8, stage 1–4 (the package's single-level envs); ``ValueError`` otherwise."""
    world, sep, stage = level.partition("-")
    if sep and world.isdigit() and stage.isdigit() and 1 <= int(world) <= 8 and 1 <= int(stage) <= 4:
        return int(world), int(stage)
    raise ValueError(f"unknown environment 'mario:{level}': use mario:WORLD-STAGE, world 1-8 and stage 1-4 (mario:1-1)")


def ines_header(raw: np.ndarray) -> np.ndarray:
    """The 16-byte iNES header of a ROM image as int64, so that nes-py's size arithmetic cannot wrap or raise.

    ``raw``: the ROM file's bytes, uint8 ``(N,)`` with ``N ≥ 16``.  Returns int64 ``(16,)``: bytes 0–3 the magic
    ``NES\\x1a``, byte 4 the PRG ROM size in 16 KiB banks, byte 5 the CHR ROM size in 8 KiB banks, bytes 6–10 the
    flags, bytes 11–15 zero (https://www.nesdev.org/wiki/INES).  nes-py's ``ROM.header`` returns the uint8 slice
    itself, and ``16 * header[4] * 2**10`` then overflows under numpy 2 (see the module docstring).
    """
    raw = np.asarray(raw)
    if raw.ndim != 1 or raw.shape[0] < 16:
        raise ValueError(f"an iNES ROM starts with a 16-byte header; got an array of shape {raw.shape}")
    return raw[:16].astype(np.int64)


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_BACKEND: tuple[Any, type, type] | None = None


def _backend() -> tuple[Any, type, type]:
    """Import nes-py and gym-super-mario-bros once; return (nes_py.nes_env, the fixed ROM class, the fixed game class).

    Raises ``ImportError`` naming the install command when either package is missing.
    """
    global _BACKEND
    if _BACKEND is not None:
        return _BACKEND
    saved = {key: os.environ.get(key) for key in _GYM_ENV_VARS}
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import nes_py._rom
            import nes_py.nes_env
            from gym_super_mario_bros.smb_env import SuperMarioBrosEnv
    except ImportError as exc:
        raise ImportError(f"mario: environments need gym-super-mario-bros and nes-py: {MARIO_INSTALL_HINT}") from exc
    finally:
        _restore_env(saved)
        text = captured.getvalue()
        if text and _GYM_NOTICE not in text:  # anything but gym's unmaintained-notice goes through
            sys.stderr.write(text)
    if not isinstance(getattr(nes_py.nes_env, "ROM", None), type):
        raise ImportError(f"mario: this nes-py has no nes_py.nes_env.ROM to fix for numpy 2; {MARIO_INSTALL_HINT}")

    class IntHeaderROM(nes_py.nes_env.ROM):
        """nes-py's ROM with an int64 header (``ines_header``): its size properties then hold under numpy 2."""

        @property
        def header(self) -> np.ndarray:
            return ines_header(self.raw_data)

    class Game(SuperMarioBrosEnv):
        """The package's level env with its RAM reads done in Python ints (numpy 2; see the module docstring)."""

        @property
        def _x_position(self) -> int:
            # page (0x6D) * 256 + x within the page (0x86), as the package defines it
            return int(self.ram[0x6D]) * 0x100 + int(self.ram[0x86])

        @property
        def _left_x_position(self) -> int:
            # pixels from the screen's left edge; the package's np.uint8(negative int) raises under numpy 2
            return (int(self.ram[0x86]) - int(self.ram[0x071C])) % 256

    _BACKEND = (nes_py.nes_env, IntHeaderROM, Game)
    return _BACKEND


@contextlib.contextmanager
def _int_header_rom(nes_env: Any, rom_cls: type) -> Iterator[None]:
    """Let ``NESEnv.__init__`` parse the ROM with ``rom_cls`` (it looks up the module global ``ROM``), then undo."""
    original = nes_env.ROM
    nes_env.ROM = rom_cls
    try:
        yield
    finally:
        nes_env.ROM = original


class MarioEnv(Env):
    """One Super Mario Bros level with the paper's preprocessing (see the module docstring)."""

    family = "mario"

    def __init__(
        self,
        level: str,
        *,
        seed: int,
        pixels: bool,
        size: int,
        action_repeat: int,
        time_limit: int | None,
        sticky: float = MARIO_STICKY,
    ) -> None:
        world, stage = parse_level(level)
        if not 0.0 <= sticky < 1.0:
            raise ValueError(f"sticky must be in [0, 1), got {sticky}")
        nes_env, rom_cls, game_cls = _backend()
        with _int_header_rom(nes_env, rom_cls):
            # builds the emulator, skips the title screen into the level and keeps that state for every reset
            self._game = game_cls(rom_mode="vanilla", target=(world, stage))
        self._open = True
        self._bytes = [button_byte(buttons) for buttons in MARIO_ACTIONS]
        self._rng = np.random.default_rng(seed)
        self._sticky = float(sticky)
        self._held = 0  # controller byte of the previous emulator frame (sticky actions)
        self._size = size
        #: the package's info dict after the last emulator frame (flag_get, x_pos, time, life, world, stage, ...)
        self.info: dict[str, Any] = {}
        super().__init__(
            f"mario:{world}-{stage}",
            obs_shape=(1, size, size) if pixels else (MARIO_RAM_SIZE,),
            obs_dtype=np.uint8 if pixels else np.float32,
            action_dim=len(MARIO_ACTIONS),
            discrete=True,
            pixels=pixels,
            action_repeat=action_repeat,
            time_limit=time_limit,
        )

    def _reset_inner(self) -> np.ndarray:
        self._game.reset()  # restores the level-start snapshot
        self._held = 0
        self.info = {}
        return self._observe()

    def _step_inner(self, env_action: Any) -> tuple[float, bool, bool]:
        if self._rng.random() >= self._sticky:
            self._held = self._bytes[env_action]
        _, reward, done, self.info = self._game.step(self._held)
        return float(reward), bool(done), False

    def _observe(self) -> np.ndarray:
        if not self.pixels:
            return self._game.ram.astype(np.float32)
        import cv2

        gray = cv2.cvtColor(np.ascontiguousarray(self._game.screen), cv2.COLOR_RGB2GRAY)  # (240, 256) uint8
        return cv2.resize(gray, (self._size, self._size), interpolation=cv2.INTER_AREA)[None]

    def render(self) -> np.ndarray:
        """The NES screen, RGB uint8 ``(240, 256, 3)``."""
        return np.array(self._game.screen, dtype=np.uint8)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._game.close()


def make_mario_env(
    level: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None
) -> MarioEnv:
    """``mario:LEVEL`` for ``recipes.envs.make_env`` (``time_limit`` ``None`` → ``MARIO_TIME_LIMIT``)."""
    limit = MARIO_TIME_LIMIT if time_limit is None else time_limit
    return MarioEnv(level, seed=seed, pixels=pixels, size=size, action_repeat=action_repeat, time_limit=limit)


__all__ = [
    "MARIO_ACTIONS",
    "MARIO_STICKY",
    "MARIO_TIME_LIMIT",
    "MarioEnv",
    "button_byte",
    "ines_header",
    "make_mario_env",
    "parse_level",
]
