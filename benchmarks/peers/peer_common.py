"""What the peer wrappers share (run in the peers' scratch venvs, so it imports nothing of this repository): the CPU's
name for ``machine.jsonl`` and the returns of deterministic evaluation episodes."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def episode_returns(act: Callable[[Any], Any], env: Any, episodes: int) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of the gymnasium ``env`` with ``act(obs) -> action`` (the env's
    first reset was seeded by the caller)."""
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns
