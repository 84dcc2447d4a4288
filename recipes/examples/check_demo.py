"""A small sequence problem with the shape of TEMPO's, for ``reweigh check-hypergrad`` with no target.

Lower level: a GRU world-model stand-in predicts the next observation of each time step; ℓ[B, T] is the per-step
squared error.  Upper level: a fixed "critic" V (not part of θ) scores the predicted and the real next
observation, L_up = mean |V(ô_{t+1}) − V(o_{t+1})|² — a VAML-like task loss.  Float64 throughout.

A user's own target has the same form: a function returning the four arguments of
``bilevel.hypergradient`` as a dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class TinySequenceModel(nn.Module):
    """GRU over [B, T, obs + act] → predicted next observation [B, T, obs]."""

    def __init__(self, obs: int = 3, act: int = 1, hidden: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(obs + act, hidden, batch_first=True)
        self.head = nn.Linear(hidden, obs)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        h, _ = self.gru(torch.cat([obs, act], -1))
        return self.head(h)


def problem(seed: int = 0, batch: int = 4, length: int = 8) -> dict[str, Any]:
    """The four arguments of ``bilevel.hypergradient`` for the demo (N = batch·length weights)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinySequenceModel().double()
    critic = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)).double().requires_grad_(False)
    obs = torch.randn(batch, length + 1, 3, generator=gen, dtype=torch.float64)
    act = torch.randn(batch, length, 1, generator=gen, dtype=torch.float64)

    def predict(params: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(model, params, (obs[:, :-1], act))

    def per_sample_loss(params: dict[str, Tensor]) -> Tensor:
        return (predict(params) - obs[:, 1:]).pow(2).sum(-1)  # ℓ[B, T]

    def upper_loss(params: dict[str, Tensor]) -> Tensor:
        return (critic(predict(params)) - critic(obs[:, 1:])).pow(2).mean()

    weights = 0.75 + 0.5 * torch.rand(batch, length, generator=gen, dtype=torch.float64)
    return {
        "per_sample_loss": per_sample_loss,
        "upper_loss": upper_loss,
        "params": dict(model.named_parameters()),
        "weights": weights,
    }
