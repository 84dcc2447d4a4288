"""Episode histories for history-conditioned models and policies (M3PO's meta-model and meta-policy).

M3PO (Hiraoka et al. 2021, §5, Algorithm 2) conditions the meta-model p_θ(s', r | s, a, z) and the meta-policy
π(a | s, z) on z = an encoding of the last L transitions of the *current* episode, so that both can infer the hidden
task from what just happened.  This module fixes the data layout every user of a history shares and the encoder.

Layout (one convention for the ensemble, SAC and the rollouts):

* ``history``: ``[N, L, O + A + 1]`` — the last L steps of the current episode in chronological order, each the
  concatenation (o_t, a_t, r_t) of an observation, the action taken there and the reward received;
* ``mask``: ``[N, L]`` — 1.0 where that slot holds a step of the current episode, 0.0 for padding.  Padding is
  always on the *left* (the oldest slots): an episode younger than L steps has its first slots masked, so a window
  never reaches into a previous episode.  Masked slots hold zeros.

``roll_history`` appends one step (as a branched rollout does with the model's own samples) and keeps the
layout.  With L = 0 there is no history and the encoder returns an empty ``[N, 0]`` code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def history_dim(obs_dim: int, action_dim: int) -> int:
    """Size of one history element (o, a, r): O + A + 1."""
    return obs_dim + action_dim + 1


def roll_history(history: Tensor, mask: Tensor, obs: Tensor, action: Tensor, reward: Tensor) -> tuple[Tensor, Tensor]:
    """Append the step (o, a, r) to each window, dropping the oldest slot.

    Args:
        history: ``[N, L, O + A + 1]``; mask: ``[N, L]``.
        obs: ``[N, O]``; action: ``[N, A]``; reward: ``[N]`` or ``[N, 1]``.

    Returns:
        ``(history', mask')`` with the same shapes; the new step is in the last slot, marked valid.  L = 0 is
        returned unchanged.
    """
    if history.shape[1] == 0:
        return history, mask
    step = torch.cat([obs, action, reward.reshape(-1, 1).to(obs.dtype)], -1)
    history = torch.cat([history[:, 1:], step.unsqueeze(1)], 1)
    mask = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], 1)
    return history, mask


class HistoryEncoder(nn.Module):
    """z = GRU encoding of a masked, left-padded history window (M3PO's context encoder).

    The window is read most-recent-first (time reversed), so its valid steps come first and the padding last; the
    code is the GRU's output after the last *valid* step, which makes it exactly independent of whatever the
    padding slots hold.  An empty window (no valid step, e.g. at an episode's first step) gives z = 0.  One fused
    ``nn.GRU`` call per batch: no Python loop over time.

    Args:
        in_dim: size of one history element, O + A + 1 (``history_dim``).
        hidden: size H of z.
        cudnn: use cuDNN's fused RNN on CUDA.  cuDNN's RNN has no double backward, so a model that a bi-level
            strategy differentiates twice (``SameState``'s mixed product, ``Implicit``'s Hessian products) must set
            this to False (the attribute may be changed after construction); it costs speed on CUDA only.

    Shapes: ``forward(history[N, L, in_dim], mask[N, L]) -> z[N, H]``; L = 0 gives ``[N, H]`` zeros.
    """

    def __init__(self, in_dim: int, hidden: int, *, cudnn: bool = True) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.cudnn = in_dim, hidden, cudnn
        self.gru = nn.GRU(in_dim, hidden, batch_first=True)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        n, length = history.shape[:2]
        if length == 0:
            return history.new_zeros(n, self.hidden)
        with torch.backends.cudnn.flags(enabled=self.cudnn and torch.backends.cudnn.enabled):
            out, _ = self.gru(history.flip(1))  # most recent step first: the valid slots lead, padding trails
        valid = mask.sum(1).long()  # [N]; left padding means the valid slots are exactly the last `valid`
        index = (valid - 1).clamp(min=0)
        z = out[torch.arange(n, device=history.device), index]
        return z * (valid > 0).unsqueeze(-1).to(z.dtype)
