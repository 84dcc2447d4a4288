"""Normalisers for the inputs of an upper-level loss (TEMPO §2.3: values are normalised before L_up).

Without normalisation the weighter can lower L_up = Σ|V_post − V_prior|² simply by shrinking all weights as the
values grow during training; normalising makes only the *relative* value disparity count.  Two choices:

* ``BatchNormalizer`` — statistics of the current batch, gradients flowing through them.  What the official
  TEMPO code does (a Keras ``BatchNormalization`` without affine parameters, called in training mode).
* ``MovingNormalizer`` — exponential moving mean and variance, treated as constants.  What the paper's text
  describes ("a normalization with moving mean and variance").
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class BatchNormalizer(nn.Module):
    """``(x − mean(x)) / sqrt(var(x) + eps)`` over all elements of ``x`` (biased variance, like BatchNorm).

    Shapes: any ``x`` → same shape.  Differentiable through the statistics.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean()
        var = (x - mean).pow(2).mean()
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class MovingNormalizer(nn.Module):
    """``(x − m) / sqrt(v + eps)`` with moving mean m and variance v (constants for autograd).

    In training mode every call first updates ``m ← (1−β) m + β mean(x)``, ``v ← (1−β) v + β var(x)`` from the
    detached batch (the first call initialises them to the batch statistics); in eval mode they are frozen.  The
    statistics are buffers, so they are saved in checkpoints.

    Args:
        momentum: β ∈ (0, 1].
        eps: added to the variance.

    Raises:
        ValueError: if ``momentum`` is outside (0, 1].
    """

    mean: Tensor
    var: Tensor
    initialized: Tensor

    def __init__(self, momentum: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold the statistics of ``x`` into the moving averages; a batch with a NaN or infinite element leaves
        them unchanged (an update skipped for non-finite values, ``bilevel.guard``, must not leave NaN here)."""
        mean, var = x.mean().to(self.mean), x.var(unbiased=False).to(self.var)
        finite = torch.isfinite(mean) & torch.isfinite(var)
        if not bool(self.initialized):
            if bool(finite):
                self.mean.copy_(mean)
                self.var.copy_(var)
                self.initialized.fill_(True)
        else:  # no device synchronisation on this path
            self.mean.copy_(torch.where(finite, torch.lerp(self.mean, mean, self.momentum), self.mean))
            self.var.copy_(torch.where(finite, torch.lerp(self.var, var, self.momentum), self.var))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.update(x.detach())
        return (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, eps={self.eps}"


def make_normalizer(kind: Literal["batch", "moving"], *, momentum: float = 0.01, eps: float = 1e-3) -> nn.Module:
    """Build a normaliser by name: ``"batch"`` → ``BatchNormalizer``, ``"moving"`` → ``MovingNormalizer``.

    Raises:
        ValueError: for any other name.
    """
    if kind == "batch":
        return BatchNormalizer(eps=eps)
    if kind == "moving":
        return MovingNormalizer(momentum=momentum, eps=eps)
    raise ValueError(f"unknown normalizer {kind!r}; choose 'batch' or 'moving'")
