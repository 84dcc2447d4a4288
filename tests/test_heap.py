"""recipes.run.heap: 'retain' must stop the kernel page faults of a large tensor allocated again, and runs apply it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipes.run.heap import configure_heap

ROOT = Path(__file__).resolve().parents[1]

# a training step's pattern: the same large tensors (40, 100 and 64 MiB) allocated, filled and freed, 12 times;
# the page faults of the last 3 steps (glibc's heap takes a few steps to settle into a layout it can reuse)
_PROBE = textwrap.dedent(
    """
    import resource, sys
    import torch
    from recipes.run.heap import configure_heap
    torch.set_num_threads(1)
    changed = configure_heap(sys.argv[1])
    faults = []
    for _ in range(12):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step = [torch.ones(mib << 18) for mib in (40, 100, 64)]
        del step
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(int(changed), sum(faults[-3:]))
    """
)
PAGES = 3 * (204 << 20) // 4096  # 4 KiB pages the last 3 steps touch


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_retain_reuses_freed_large_blocks_without_page_faults():
    changed, retained = _faults("retain")
    unchanged, system = _faults("system")
    assert changed and not unchanged
    assert system > PAGES // 2  # glibc's default: each tensor a fresh mmap, every page faulted in again
    assert retained < PAGES // 20  # the heap's blocks, already mapped


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="heap must be"):
        configure_heap("jemalloc")  # type: ignore[arg-type]


def test_run_config_validates_heap():
    from pydantic import ValidationError

    from recipes.run.config import RunConfig

    assert RunConfig().heap == "retain"
    with pytest.raises(ValidationError):
        RunConfig(heap="huge")
