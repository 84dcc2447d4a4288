"""Small network building blocks shared by the world models (and the recipes' agents)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is bf16/fp16 (an autocast matmul's output), else ``x`` itself (fp32/fp64 unchanged).

    Mixed precision as DreamerV2 runs it: matrix products in low precision, every distribution's parameters
    (heads, latent statistics) in float32."""
    return x.float() if x.dtype in _LOW_PRECISION else x


class MLP(nn.Sequential):
    """An ``nn.Sequential`` whose output is in at least float32 (``at_least_fp32``): under autocast its
    products run in bf16 while whatever reads the output (a distribution, a loss) gets fp32.  Indexing and
    state-dict keys are ``nn.Sequential``'s."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return at_least_fp32(super().forward(x))


def mlp(inp: int, out: int, layers: int, units: int, act: type[nn.Module] = nn.ELU, norm: bool = False) -> MLP:
    """``layers`` hidden dense layers of ``units`` (optional LayerNorm, then ``act``) and a linear output, in at least
    float32 under autocast (``MLP``)."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, units)] + ([nn.LayerNorm(units)] if norm else []) + [act()]
        inp = units
    mods.append(nn.Linear(inp, out))
    return MLP(*mods)


def symlog(x: Tensor) -> Tensor:
    """sign(x)·ln(|x| + 1) (DreamerV3, Hafner et al. 2023, eq. 1): compresses large magnitudes, identity near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    """sign(x)·(exp(|x|) − 1), the inverse of ``symlog`` (DreamerV3 eq. 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def twohot(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of ``x`` [...] over increasing ``bins`` [K]: weight on the two nearest bins, linear in the
    distance, summing to 1; values outside the range go wholly to the end bin (DreamerV3 eq. 9).  Returns [..., K]."""
    x = x.clamp(bins[0], bins[-1])
    k = bins.numel()
    hi = torch.searchsorted(bins, x.detach().contiguous(), right=False).clamp(1, k - 1)
    lo = hi - 1
    b_lo, b_hi = bins[lo], bins[hi]
    w_hi = ((x - b_lo) / (b_hi - b_lo)).clamp(0.0, 1.0)
    out = torch.zeros(*x.shape, k, dtype=x.dtype, device=x.device)
    out.scatter_(-1, lo.unsqueeze(-1), (1 - w_hi).unsqueeze(-1))
    return out.scatter_add(-1, hi.unsqueeze(-1), w_hi.unsqueeze(-1))


class TwoHotHead(nn.Module):
    """A scalar predictor as a categorical over K bins equally spaced in symlog space (DreamerV3 §3, "Robust
    predictions", eq. 9–10, as its official code does it: two-hot targets of symlog(y) on ``linspace(−20, 20, K)``,
    prediction symexp(Σ softmax(f)·b)).  Scale-free: the same head fits rewards of 0.01 and of 1000.

    ``forward(feat[..., F]) -> [..., 1]`` is the predicted value (so call sites that read a scalar head work
    unchanged); ``nll`` ``(feat[..., F], target[...]) -> [...]`` is the per-element cross-entropy against the
    two-hot target, the head's loss.  The output layer starts at zero (DreamerV3: reward and critic heads), so the
    first predictions are 0 rather than random large values.
    """

    def __init__(
        self, inp: int, layers: int, units: int, bins: int = 255, act: type[nn.Module] = nn.ELU, limit: float = 20.0
    ) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.net = mlp(inp, bins, layers, units, act)
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.register_buffer("bins", torch.linspace(-limit, limit, bins), persistent=False)

    def logits(self, feat: Tensor) -> Tensor:
        """[..., K] logits over the symlog-spaced bins."""
        return self.net(feat)

    def mean(self, logits: Tensor) -> Tensor:
        """symexp(E[b]) [...] of the categorical ``logits`` [..., K]."""
        return symexp((logits.softmax(-1) * self.bins.to(logits.dtype)).sum(-1))

    def forward(self, feat: Tensor) -> Tensor:
        return self.mean(self.logits(feat)).unsqueeze(-1)

    def nll(self, feat: Tensor, target: Tensor) -> Tensor:
        """−Σ_k twohot(symlog y)_k log softmax(f)_k [...]: cross-entropy against the two-hot target (eq. 10)."""
        logp = self.logits(feat).log_softmax(-1)
        return -(twohot(symlog(target.to(logp.dtype)), self.bins.to(logp.dtype)) * logp).sum(-1)
