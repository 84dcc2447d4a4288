"""Termination functions of the MuJoCo environments, for model rollouts: ``next_obs [..., O] -> done [...]``
(bool) from the observation alone.  The ranges are gymnasium v5's defaults (``healthy_z_range``,
``healthy_angle_range``, ``healthy_state_range``) on the default observation layouts (obs[0] the torso height z;
Hopper and Walker2d obs[1] the torso angle).  A family module keeps a table of its names' functions (None: episodes
end by time limit only) and looks names up with ``lookup``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: ``next_obs [..., O] -> done [...]`` (bool), from the observation alone.
TerminationFn = Callable[[Tensor], Tensor]


def healthy_z(low: float, high: float) -> TerminationFn:
    """Ant-v5: done unless every entry is finite and low ≤ z ≤ high."""

    def done(obs: Tensor) -> Tensor:
        return ~(torch.isfinite(obs).all(-1) & (obs[..., 0] >= low) & (obs[..., 0] <= high))

    return done


def walker(obs: Tensor) -> Tensor:
    """Walker2d-v5: done unless every entry is finite, 0.8 < z < 2.0 and −1 < angle < 1."""
    z, angle = obs[..., 0], obs[..., 1]
    return ~(torch.isfinite(obs).all(-1) & (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


def hopper(obs: Tensor) -> Tensor:
    """Hopper-v5: done unless |obs[1:]| < 100, z > 0.7 and |angle| < 0.2."""
    return ~((obs[..., 1:].abs() < 100).all(-1) & (obs[..., 0] > 0.7) & (obs[..., 1].abs() < 0.2))


def lookup(table: dict[str, TerminationFn | None], prefix: str, name: str) -> TerminationFn | None:
    """``table[name]`` for the environment ``prefix:name``.

    Raises:
        ValueError: naming the environment if ``table`` has no entry for it (a model-based recipe would otherwise
            roll through terminal states).
    """
    if name not in table:
        known = ", ".join(f"{prefix}:{k}" for k in table)
        raise ValueError(
            f"env: no termination function is known for '{prefix}:{name}' (needed by model rollouts); known: {known}"
        )
    return table[name]
