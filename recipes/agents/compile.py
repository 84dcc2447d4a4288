"""``torch.compile`` with an eager fallback, for the train-step hot paths of the Dreamer family.

On CPU the small-batch RSSM loops are dispatch-bound (tens of thousands of aten calls per update, a few per cent of
the matmul peak; ``benchmarks/roofline.py``): compiling the unrolled loop fuses the elementwise work between the
matmuls.  Compilation costs minutes on a cold cache (inductor writes C++ kernels) and seconds on a warm one (the
FX-graph/AOT-autograd caches under ``TORCHINDUCTOR_CACHE_DIR``); it is an option, never the default path.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch

R = TypeVar("R")


@contextlib.contextmanager
def retained_backward() -> Iterator[None]:
    """Around backward passes that keep the graph (``retain_graph=True``) through graphs of
    ``MaybeCompiled`` ``(retain_graph=True)``.

    Such graphs are compiled without donated buffers, but AOT autograd (torch 2.13) marks them "unknown" rather than
    "none" until their backward is first compiled under ``retain_graph=True``, and at every backward that keeps the
    graph it refuses one marked otherwise while ``torch._functorch.config.donated_buffer`` is on — so a graph whose
    first backward ran once (a TEMPO step without a weighter update, e.g. the first after resuming) was refused at
    the next weighter update.  This turns the flag off for the block; graphs compiled with donated buffers must
    still not be backpropagated twice (their backward overwrites what it saved)."""
    with torch._functorch.config.patch(donated_buffer=False):
        yield


class MaybeCompiled(Generic[R]):
    """``fn`` compiled by ``torch.compile(fn, dynamic=False)`` (with torch's random kernels) on first call; where
    compiling fails (no C++ compiler, an unsupported op), a warning names ``name`` and every later call runs ``fn``
    eagerly.

    Errors raised by ``fn`` itself are not swallowed: the eager retry raises them again.

    ``retain_graph=True``: the graph's backward may run more than once (``retain_graph``), so it is compiled
    without donated buffers (AOT autograd's default lets the backward overwrite saved tensors it is the last to
    read, and then refuses a second backward); run those backward passes inside ``retained_backward``.
    """

    def __init__(self, fn: Callable[..., R], name: str, enabled: bool = True, *, retain_graph: bool = False) -> None:
        self.fn, self.name, self.retain_graph = fn, name, retain_graph
        # fallback_random: torch's own random kernels (inductor's per-element Philox randn is far slower on CPU,
        # docs/results.md) and the same random stream as eager
        self.compiled: Callable[..., R] | None = (
            torch.compile(fn, dynamic=False, options={"fallback_random": True}) if enabled else None
        )

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        if self.compiled is not None:
            try:
                if self.retain_graph:
                    with torch._functorch.config.patch(donated_buffer=False):
                        return self.compiled(*args, **kwargs)
                return self.compiled(*args, **kwargs)
            except Exception as e:  # any compiler failure: fall back, say so once
                warnings.warn(f"torch.compile of {self.name} failed, running it eagerly: {e!r:.300}", stacklevel=2)
                self.compiled = None
        return self.fn(*args, **kwargs)
