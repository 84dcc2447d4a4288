"""The interface every lower-level model in ``worldmodels/`` offers to the bi-level core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@dataclass
class ModelLoss:
    """Per-sample maximum-likelihood loss of a world model and the states it produced.

    Attributes:
        loss: ℓ[B, T] — the negative ELBO of every time step of every sequence (all terms summed with their
            scales).  The bi-level core weights exactly these terms: L_low = mean(w · loss).
        terms: the unscaled parts, each [B, T] (e.g. ``image``, ``reward``, ``discount`` NLLs and ``kl``).
        states: whatever upper-level losses and weighters need (for the RSSM: ``deter`` h[B, T, D], posterior and
            prior statistics and samples), with gradients to θ.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class WorldModel(Protocol):
    """A lower-level MLE model: ``loss(batch) -> ModelLoss`` with a per-step, per-sequence ``loss[B, T]``.

    ``batch`` holds tensors shaped [B, T, ...]; the keys a model reads are its own business (the RSSM reads
    ``obs``, ``action``, ``reward``, ``discount``, ``is_first``).  Implement this method on an ``nn.Module`` and
    the model plugs into ``bilevel.BilevelUpdate`` and the recipes.
    """

    def loss(self, batch: dict[str, Tensor]) -> ModelLoss: ...
