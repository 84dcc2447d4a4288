"""Small network building blocks shared by the world models (and the recipes' agents)."""

from __future__ import annotations

from torch import nn


def mlp(
    inp: int, out: int, layers: int, units: int, act: type[nn.Module] = nn.ELU, norm: bool = False
) -> nn.Sequential:
    """``layers`` hidden dense layers of ``units`` (optional LayerNorm, then ``act``) and a linear output."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(inp, units)] + ([nn.LayerNorm(units)] if norm else []) + [act()]
        inp = units
    mods.append(nn.Linear(inp, out))
    return nn.Sequential(*mods)
