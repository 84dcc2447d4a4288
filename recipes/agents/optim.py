"""The agents' optimiser: AdamW with torch's fused kernel where the device has one."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: devices with a fused AdamW kernel in every torch this project supports (torch >= 2.4)
_FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[nn.Parameter], lr: float, *, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, lr, eps=eps, weight_decay=weight_decay)``, fused (one kernel per step over every
    tensor, instead of ~10 ``foreach`` ops) where every parameter is a floating tensor on a device with the fused
    kernel (``cpu``, ``cuda``), ``foreach`` otherwise.  The same update rule (Loshchilov & Hutter 2019, Alg. 2); it
    differs from the unfused one by rounding only.  Small MLPs gain most: their optimiser step is dominated by
    per-op overhead (measured in docs/results.md).

    Raises:
        ValueError: ``params`` is empty (as ``torch.optim.AdamW``).
    """
    params = list(params)
    fused = bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr, eps=eps, weight_decay=weight_decay, fused=fused or None)
