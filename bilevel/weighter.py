"""The meta weighter N_α: per-sample features → sample weights (TEMPO eq. 5, §3.1, Appendix A.2)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose 'batch', 'layer' or 'none'")


class MetaWeighter(nn.Module):
    """MLP meta weighter ``w = scale · σ(o) + shift`` over *detached* per-sample features.

    TEMPO §3.1: a "5-layer" MLP — 4 hidden dense layers of 400 units and the output layer, as the official code's
    ``MLP_meta`` — BatchNorm and ELU after each hidden layer, a sigmoid and an additive
    bias on the output so that ``w = 0.5 σ(o) + 0.75 ∈ (0.75, 1.25)``.  Appendix A.2 reports that BatchNorm "greatly
    boosts the final performance".  The official code additionally normalises the output logit ``o`` by the same
    normalisation layer as the hidden ones — a BatchNorm with a learnable scale γ and shift β (Keras'
    ``BatchNormalization()`` defaults, batch statistics in training) — before the sigmoid: ``output_norm=True``.  At
    γ = 1, β = 0 the normalised logit has unit variance over the batch, so the weights start spread with std ≈ 0.1
    around 1 (0.5·std(σ(z)) for z ~ N(0, 1)); γ then sets the spread and β the mean.

    Inputs are always detached: the lower-level model must not move its states to earn weight.

    Args:
        in_features: F, the feature size (TEMPO DMC: 200 + 2·32 + 2).
        layers: number of hidden dense layers (TEMPO: 4, plus the output layer).
        hidden: units per hidden layer (TEMPO: 400).
        activation: one of ``elu`` (TEMPO), ``relu``, ``silu``, ``tanh``, ``gelu``.
        norm: ``batch`` (TEMPO), ``layer`` or ``none``, applied after each hidden dense layer, before the
            activation.
        output_norm: normalise the output logit o with batch statistics and a learnable scale and shift before the
            sigmoid (TEMPO's official code); in eval mode the running statistics.
        scale: output map constant (TEMPO: 0.5; Meta-Weight-Net: 1).
        shift: output map constant (TEMPO: 0.75; Meta-Weight-Net: 0).
        groups: G > 0 makes the last feature a group id in {0, …, G−1} (an integer stored as a float, e.g. the
            task of a multi-task batch), replaced by a learned embedding of ``group_dim`` numbers before the first
            layer, so that the weights can differ per group; the embedding is a weighter parameter, trained by the
            hypergradient like the rest (TEMPO Appendix A.5's future direction).  0: no group input.
        group_dim: size of the group embedding.

    Shapes:
        ``forward(features: Tensor[..., F]) -> Tensor[...]`` — any leading shape (e.g. [B, T] for sequences);
        BatchNorm statistics are taken over all leading positions together.

    Raises:
        ValueError: for an unknown activation/norm, ``layers < 0`` or a non-positive ``hidden``; at call time if
            the last feature dimension is not ``in_features``, or (with ``groups``) a group id is outside [0, G).
    """

    def __init__(
        self,
        in_features: int,
        *,
        layers: int = 4,
        hidden: int = 400,
        activation: str = "elu",
        norm: Literal["batch", "layer", "none"] = "batch",
        output_norm: bool = False,
        scale: float = 0.5,
        shift: float = 0.75,
        groups: int = 0,
        group_dim: int = 8,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        if layers < 0 or hidden < 1 or in_features < 1:
            raise ValueError(f"need layers >= 0, hidden >= 1, in_features >= 1; got {layers}, {hidden}, {in_features}")
        if groups < 0 or (groups and (group_dim < 1 or in_features < 2)):
            raise ValueError(
                "need groups >= 0, and with groups group_dim >= 1 and in_features >= 2 (the id last); "
                f"got groups={groups}, group_dim={group_dim}, in_features={in_features}"
            )
        self.in_features, self.scale, self.shift = in_features, float(scale), float(shift)
        self.groups = int(groups)
        self.group_embedding = nn.Embedding(groups, group_dim) if groups else None
        blocks: list[nn.Module] = []
        width = in_features - 1 + group_dim if groups else in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), _norm(norm, hidden), _ACTIVATIONS[activation]()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)
        self.output_norm = nn.BatchNorm1d(1) if output_norm else None

    def logits(self, features: Tensor) -> Tensor:
        """The pre-sigmoid output o, shape ``features.shape[:-1]``."""
        if features.shape[-1] != self.in_features:
            raise ValueError(f"MetaWeighter expects {self.in_features} features, got shape {tuple(features.shape)}")
        lead = features.shape[:-1]
        x = features.detach().reshape(-1, self.in_features)
        if self.group_embedding is not None:
            ids = x[:, -1].round().long()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.groups):
                raise ValueError(f"MetaWeighter: group ids must lie in [0, {self.groups}), got {ids.unique().tolist()}")
            x = torch.cat([x[:, :-1], self.group_embedding(ids).to(x.dtype)], -1)
        o = self.head(self.body(x))
        if self.output_norm is not None:
            o = self.output_norm(o)
        return o.reshape(lead)

    def forward(self, features: Tensor) -> Tensor:
        return self.scale * torch.sigmoid(self.logits(features)) + self.shift

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups else ""
        return f"in_features={self.in_features}{groups}, w = {self.scale}·σ(o) + {self.shift}"
