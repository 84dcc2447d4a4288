"""Arcade Learning Environment games as ``atari:GAME`` (see ``recipes.envs`` for the conventions)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recipes.envs.base import Env

ATARI_TIME_LIMIT = 27_000  # agent steps = 108000 frames at action repeat 4
ATARI_NOOP_MAX = 30
ATARI_STICKY = 0.25


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


def make_atari_env(
    game: str, *, seed: int, pixels: bool, size: int, action_repeat: int, time_limit: int | None
) -> AtariEnv:
    """``atari:GAME`` for ``recipes.envs.make_env`` (``time_limit`` ``None`` → ``ATARI_TIME_LIMIT``)."""
    limit = ATARI_TIME_LIMIT if time_limit is None else time_limit
    return AtariEnv(game, seed=seed, pixels=pixels, size=size, action_repeat=action_repeat, time_limit=limit)
