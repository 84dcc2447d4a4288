"""In-memory transition storage for model-based recipes: the real data D_env and the model data D_model (M3PO,
Algorithm 2; MBPO).

Both are ``TransitionBuffer`` s: preallocated torch tensors on the run's device (sampling and the model's
training epochs never leave it), first-in-first-out once full, saved whole in checkpoints.  Every row is one
transition (o, a, r, o', done); ``done`` is 1.0 for a true terminal only (a time-limit truncation is not one).

Histories (``worldmodels.history``) come two ways:

* D_env stores each row's position ``pos`` in its episode and keeps rows in the order they happened, so the window
  of the L steps before row i is rows i−L … i−1, masked where they belong to an earlier episode
  (``TransitionBuffer.history``): nothing is stored twice.  D_env must never wrap (its capacity is the run's
  length), which ``TransitionBuffer.add`` enforces for buffers made with ``wrap=False``.
* D_model stores each rollout transition's window explicitly (``history``, ``history_mask``), since model rollouts
  branch from arbitrary real windows.

The window after a transition is always the window before it rolled by (o, a, r) (``next_history``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from worldmodels.history import roll_history


class TransitionBuffer:
    """A FIFO of fixed-shape fields, as torch tensors on one device.

    Args:
        capacity: rows kept.
        fields: name → (shape of one row, dtype), e.g. ``{"obs": ((17,), torch.float32)}``.
        device: where the tensors live.
        wrap: ``False`` refuses to overwrite (raises ``RuntimeError`` when full), for D_env whose histories are
            read from row order.

    Raises:
        ValueError: for a capacity below 1.
    """

    def __init__(
        self,
        capacity: int,
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        device: str | torch.device = "cpu",
        *,
        wrap: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity, self.wrap, self.device = int(capacity), wrap, torch.device(device)
        self.data = {
            k: torch.zeros((self.capacity, *shape), dtype=dtype, device=self.device)
            for k, (shape, dtype) in fields.items()
        }
        self.size = 0  # rows held
        self.head = 0  # next row written

    def __len__(self) -> int:
        return self.size

    def add(self, **rows: Tensor) -> None:
        """Append N rows (every field, each ``[N, *shape]``), overwriting the oldest when full.

        Raises:
            KeyError: if a field is missing or unknown.
            RuntimeError: if the buffer does not wrap and the rows do not fit.
        """
        if set(rows) != set(self.data):
            raise KeyError(f"add() needs exactly the fields {sorted(self.data)}, got {sorted(rows)}")
        n = next(iter(rows.values())).shape[0]
        if n == 0:
            return
        if not self.wrap and self.size + n > self.capacity:
            raise RuntimeError(f"buffer full ({self.capacity} rows) and made with wrap=False")
        if n > self.capacity:  # only the newest rows fit
            rows = {k: v[-self.capacity :] for k, v in rows.items()}
            n = self.capacity
        index = (self.head + torch.arange(n, device=self.device)) % self.capacity
        for k, v in rows.items():
            self.data[k][index] = v.to(self.device, self.data[k].dtype)
        self.head = (self.head + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def indices(self) -> Tensor:
        """Row indices of every held row, oldest first ``[size]``."""
        start = (self.head - self.size) % self.capacity
        return (start + torch.arange(self.size, device=self.device)) % self.capacity

    def sample_indices(self, n: int, generator: torch.Generator | None = None, *, recent: int | None = None) -> Tensor:
        """``n`` row indices drawn uniformly with replacement from the held rows, or from the ``recent`` newest of
        them (a buffer whose retention changes over a run, e.g. MBPO's model buffer sized by the rollout length).

        Raises:
            RuntimeError: if the buffer is empty.
            ValueError: if ``recent`` < 1.
        """
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty buffer")
        if recent is not None and recent < 1:
            raise ValueError(f"recent must be at least 1, got {recent}")
        held = self.size if recent is None else min(self.size, recent)
        pick = torch.randint(held, (n,), generator=generator, device="cpu").to(self.device)
        return self.indices()[self.size - held + pick]

    def get(self, index: Tensor) -> dict[str, Tensor]:
        """The rows at ``index`` ``[N]``: every field ``[N, *shape]``."""
        return {k: v[index] for k, v in self.data.items()}

    def history(self, index: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """The window of the ``length`` steps before each row, for buffers in episode order with ``pos``.

        Args:
            index: rows ``[N]``.
            length: L.

        Returns:
            ``(history [N, L, O + A + 1], mask [N, L])`` in the layout of ``worldmodels.history``: slot j holds
            row i − L + j as (o, a, r), valid iff that row is in the same episode (``pos[i] ≥ L − j``).

        Raises:
            KeyError: without the fields ``obs``, ``action``, ``reward``, ``pos``.
        """
        n = index.shape[0]
        obs, action = self.data["obs"], self.data["action"]
        width = obs.shape[1] + action.shape[1] + 1
        if length == 0:
            return obs.new_zeros(n, 0, width), obs.new_zeros(n, 0)
        back = torch.arange(length, 0, -1, device=self.device)  # L, L−1, …, 1 steps back
        rows = (index[:, None] - back[None]) % self.capacity  # [N, L]
        mask = (self.data["pos"][index][:, None] >= back[None]).to(obs.dtype)
        steps = torch.cat([obs[rows], action[rows], self.data["reward"][rows].unsqueeze(-1)], -1)
        return steps * mask.unsqueeze(-1), mask

    def state_dict(self) -> dict[str, Any]:
        """The held rows, oldest first (a checkpoint stores no empty capacity)."""
        index = self.indices()
        return {"rows": {k: v[index].cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the content by ``state``'s rows, in order; the capacity may differ from the saved buffer's (a run
        resumed with more steps has a larger D_env): only the newest rows are kept if they do not fit.

        Raises:
            RuntimeError: if a ``wrap=False`` buffer is too small for the saved rows.
        """
        self.size = self.head = 0
        self.add(**state["rows"])


def next_history(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The window after each transition: ``history`` rolled by (``obs``, ``action``, ``reward``)."""
    return roll_history(batch["history"], batch["history_mask"], batch["obs"], batch["action"], batch["reward"])
