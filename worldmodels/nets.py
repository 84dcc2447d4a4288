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
    """An ``nn.Sequential`` whose output is in at least float32 (:func:`at_least_fp32`): under autocast its
    products run in bf16 while whatever reads the output (a distribution, a loss) gets fp32.  Indexing and
    state-dict keys are ``nn.Sequential``'s."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return at_least_fp32(super().forward(x))


def mlp(inp: int, out: int, layers: int, units: int, act: type[nn.Module] = nn.ELU, norm: bool = False) -> MLP:
    """``layers`` hidden dense layers of ``units`` (optional LayerNorm, then ``act``) and a linear output, in at least
    float32 under autocast (:class:`MLP`)."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, units)] + ([nn.LayerNorm(units)] if norm else []) + [act()]
        inp = units
    mods.append(nn.Linear(inp, out))
    return MLP(*mods)
