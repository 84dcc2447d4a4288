"""Mixed precision for a run: ``precision`` ∈ {``fp32``, ``bf16``, ``auto``} → an autocast context.

``bf16`` runs the matrix products (``linear``, ``bmm``/``baddbmm``, convolutions: torch's autocast lists) of the
wrapped forward passes in bfloat16 with float32 weights, optimiser states and gradients (``torch.autocast``; no loss
scaling is needed for bfloat16).  It pays only where the hardware has bfloat16 matrix units; elsewhere bf16
GEMMs run slower than fp32, on some CPUs many times slower (docs/results.md).  So ``auto`` does not guess from
CPU flags: it times one bf16 and one fp32 GEMM on the run's device (``bf16_speedup``, once per process) and picks
bf16 only when it is at least ``AUTO_MIN_SPEEDUP`` × faster.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import torch

Precision = Literal["fp32", "bf16", "auto"]

#: ``auto`` picks bf16 only when a bf16 GEMM measures at least this many times faster than an fp32 one: the cast ops
#: autocast inserts and the fp32 elementwise work are not sped up, so a small GEMM gain would be lost.
AUTO_MIN_SPEEDUP = 2.0

T = TypeVar("T")


@functools.cache
def bf16_speedup(device: str = "cpu", n: int = 1024, reps: int = 5) -> float:
    """fp32 time / bf16 time of an ``n × n`` GEMM on ``device`` (best of ``reps`` after a warm-up), measured once per
    process and device.  > 1 means bf16 is faster.  Returns 0.0 where bf16 matmuls are unsupported."""
    dev = torch.device(device)

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        times = []
        for i in range(reps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            a @ b
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:
                times.append(time.perf_counter() - t)
        return min(times)

    try:
        return best(torch.float32) / best(torch.bfloat16)
    except RuntimeError:
        return 0.0


def resolve_precision(precision: Precision, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device``: ``torch.bfloat16`` or None (plain fp32).

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        dev = torch.device(device)
        key = f"{dev.type}:{dev.index}" if dev.index is not None else dev.type
        return torch.bfloat16 if bf16_speedup(key) >= AUTO_MIN_SPEEDUP else None
    raise ValueError(f"precision: expected 'fp32', 'bf16' or 'auto', got {precision!r}")


def autocast(device: str | torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast(device_type, dtype)`` when ``dtype`` is given; a no-op context when None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def autocast_fn(fn: Callable[..., T], device: str | torch.device, dtype: torch.dtype | None) -> Callable[..., T]:
    """``fn`` run under ``autocast``; ``fn`` itself when ``dtype`` is None (the fp32 path gains no frame)."""
    if dtype is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args: object, **kwargs: object) -> T:
        with autocast(device, dtype):
            return fn(*args, **kwargs)

    return wrapped
