"""Small bi-level problems (float64) shared by the tests: (per_sample_loss, upper_loss, params, weights)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

D = torch.float64


def _w(n: int | tuple[int, ...], seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if isinstance(n, int) else n
    return 0.5 + torch.rand(shape, generator=g, dtype=D)


def linear_regression(n: int = 24, d: int = 4, ridge: float = 0.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(n, d, generator=g, dtype=D), torch.randn(12, d, generator=g, dtype=D)
    beta = torch.randn(d, generator=g, dtype=D)
    y = x @ beta + 0.5 * torch.randn(n, generator=g, dtype=D)
    ym = xm @ beta
    params = {"theta": torch.randn(d, generator=g, dtype=D, requires_grad=True)}

    def per_sample_loss(p):
        return 0.5 * (x @ p["theta"] - y) ** 2 + 0.5 * ridge * (p["theta"] ** 2).sum()

    def upper_loss(p):
        return 0.5 * ((xm @ p["theta"] - ym) ** 2).mean()

    return per_sample_loss, upper_loss, params, _w(n, seed + 1)


def logistic_regression(n: int = 30, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(n, d, generator=g, dtype=D), torch.randn(10, d, generator=g, dtype=D)
    y = (torch.rand(n, generator=g, dtype=D) < 0.5).to(D)
    ym = (xm[:, 0] > 0).to(D)
    params = {
        "w": torch.randn(d, generator=g, dtype=D, requires_grad=True),
        "b": torch.zeros((), dtype=D, requires_grad=True),
    }
    bce = nn.functional.binary_cross_entropy_with_logits

    def per_sample_loss(p):
        return bce(x @ p["w"] + p["b"], y, reduction="none") + 0.05 * (p["w"] ** 2).sum()

    def upper_loss(p):
        return bce(xm @ p["w"] + p["b"], ym)

    return per_sample_loss, upper_loss, params, _w(n, seed + 1)


def mlp(n: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).to(D)
    x, xm = torch.randn(n, 3, generator=g, dtype=D), torch.randn(8, 3, generator=g, dtype=D)
    y, ym = torch.randn(n, generator=g, dtype=D), torch.randn(8, generator=g, dtype=D)

    def per_sample_loss(p):
        return (functional_call(net, p, (x,)).squeeze(-1) - y) ** 2

    def upper_loss(p):
        return ((functional_call(net, p, (xm,)).squeeze(-1) - ym) ** 2).mean()

    return per_sample_loss, upper_loss, dict(net.named_parameters()), _w(n, seed + 1)


class _GRUModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(x)[0])


def gru_sequence(b: int = 3, t: int = 5, seed: int = 0):
    """Per-step losses ℓ[B, T] of a GRU, upper loss through a frozen 'critic' (the TEMPO shape)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _GRUModel().to(D)
    critic = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).to(D).requires_grad_(False)
    x = torch.randn(b, t, 3, generator=g, dtype=D)
    target = torch.randn(b, t, 2, generator=g, dtype=D)

    def per_sample_loss(p):
        return ((functional_call(net, p, (x,)) - target) ** 2).sum(-1)

    def upper_loss(p):
        return ((critic(functional_call(net, p, (x,))) - critic(target)) ** 2).mean()

    return per_sample_loss, upper_loss, dict(net.named_parameters()), _w((b, t), seed + 1)


def batchnorm_mlp(n: int = 16, seed: int = 0):
    """MLP with BatchNorm in training mode; the functional calls get buffer copies (no running-stat drift)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ELU(), nn.Linear(6, 1)).to(D)
    x, xm = torch.randn(n, 3, generator=g, dtype=D), torch.randn(8, 3, generator=g, dtype=D)
    y, ym = torch.randn(n, generator=g, dtype=D), torch.randn(8, generator=g, dtype=D)
    buffers = dict(net.named_buffers())

    def call(p, inp):
        return functional_call(net, {**{k: v.clone() for k, v in buffers.items()}, **p}, (inp,)).squeeze(-1)

    def per_sample_loss(p):
        return (call(p, x) - y) ** 2

    def upper_loss(p):
        return ((call(p, xm) - ym) ** 2).mean()

    return per_sample_loss, upper_loss, dict(net.named_parameters()), _w(n, seed + 1)


ALL = {
    "linear": linear_regression,
    "logistic": logistic_regression,
    "mlp": mlp,
    "gru": gru_sequence,
    "batchnorm": batchnorm_mlp,
}
