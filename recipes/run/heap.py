"""The C library's heap, tuned for training loops that allocate the same large tensors every step.

PyTorch's CPU tensors come from ``malloc``.  glibc serves a block above its mmap threshold (128 KiB at first,
raised as such blocks are freed, at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, so a
tensor of more than 32 MiB (the paper preset's conv activations and their gradients: 150–600 MB at 16 × 50 images
of 64 × 64) is page-faulted and zeroed by the kernel again on every step.  ``"retain"`` raises the mmap threshold
and the trim threshold so that such blocks come from the heap and stay there for the next step's tensors of the
same sizes: faster steps at the paper preset for a higher peak RSS (the freed memory is kept), most with several
threads, whose page faults contend for the process's memory map (``benchmarks/tempo_overhead.py``,
``benchmarks/step_phases.py``; numbers in docs/results.md).

The vector ``cpu`` preset's tensors are below the threshold: a few hundred page faults per update either way.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Literal

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: bytes: blocks up to this size come from the heap (glibc accepts up to its heap maximum on 64-bit Linux)
RETAIN_MMAP_THRESHOLD = 1 << 30
#: bytes: free memory at the heap's top is given back to the kernel only beyond this
RETAIN_TRIM_THRESHOLD = (1 << 31) - 1

HeapMode = Literal["retain", "system"]


def configure_heap(mode: HeapMode) -> bool:
    """Set the process's ``malloc`` for ``mode``: ``"retain"`` (large blocks from the heap, freed memory kept for
    reuse; see the module's docstring) or ``"system"`` (leave the C library's settings as they are).

    Process-wide and not undone: a later ``"system"`` does not restore what a ``"retain"`` set.  A no-op returning
    False off glibc (macOS, Windows, musl) or where ``mallopt`` refuses a value.

    Returns:
        Whether the heap's settings were changed.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in ("retain", "system"):
        raise ValueError(f"heap must be 'retain' or 'system', got {mode!r}")
    if mode == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl's mallopt is a stub
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, RETAIN_MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD)
    )
