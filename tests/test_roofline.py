"""benchmarks/roofline.py: the FLOP counter it reports from must be exact where the answer is known."""

from __future__ import annotations

import pytest
import torch
from benchmark_modules import load_benchmark
from torch import nn


@pytest.fixture(scope="module")
def roofline():
    yield from load_benchmark("roofline")


def test_part_counter_attributes_forward_and_backward_exactly(roofline):
    torch.manual_seed(0)
    b, i, h, o = 8, 5, 7, 3
    first, second = nn.Linear(i, h), nn.Linear(h, o)
    x = torch.randn(b, i)  # no grad: the first layer's backward is its weight gradient only
    counter = roofline.PartCounter({"first": [first], "second": [second]})
    with counter:
        second(torch.tanh(first(x))).square().sum().backward()
    assert counter.forward == {"first": 2 * b * i * h, "second": 2 * b * h * o}
    # backward as run: weight grads for both; an input grad only for the second layer (x needs none)
    assert counter.backward == {"first": 2 * b * i * h, "second": 2 * 2 * b * h * o}
    assert counter.total == sum(counter.forward.values()) + sum(counter.backward.values())
    assert counter.calls > 0
    assert not first._forward_hooks and not second._forward_pre_hooks  # hooks removed on exit


def test_part_counter_ignores_no_grad_forward_and_counts_it_in_total(roofline):
    layer = nn.Linear(4, 4)
    counter = roofline.PartCounter({"layer": [layer]})
    with counter, torch.no_grad():
        layer(torch.randn(2, 4))
    assert counter.forward == {"layer": 0} and counter.total == 2 * 2 * 4 * 4


def test_unknown_config_is_a_usage_error(roofline, tmp_path):
    with pytest.raises(SystemExit) as err:
        roofline.main(["--configs", "cpu,nope", "--out", str(tmp_path / "r.json")])
    assert err.value.code == 2
    assert not (tmp_path / "r.json").exists()


def test_part_counter_times_matmuls_only(roofline, monkeypatch):
    """The GEMM kernels' time is the sum over matmul calls alone: a non-GEMM op adds nothing to it."""
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    clock = iter(range(100))
    monkeypatch.setattr(roofline.time, "perf_counter", lambda: float(next(clock)))
    counter = roofline.PartCounter({})
    with counter:
        torch.mm(a, b)  # timed: 1 "second" on the fake clock
        torch.exp(a)  # not timed (it would add 1 if it were)
        torch.addmm(torch.zeros(16), a, b)  # timed: 1 more
    assert counter.gemm_seconds == 2.0
    assert counter.total == 2 * (2 * 64 * 32 * 16)
