"""benchmarks/step_phases.py: its spans must see the phases of a real TEMPO step and leave the code as it was."""

from __future__ import annotations

import collections
import time

import pytest
from benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def phases():
    yield from load_benchmark("step_phases")


def test_spans_cover_a_weighter_update_and_restore_the_originals(phases):
    import bilevel._autodiff as ad
    from recipes.agents.dreamer_ac import ActorCritic
    from recipes.dreamer.tempo import TempoAgent

    before = (ad.grads, ad.grads_used, ActorCritic.update, TempoAgent.world_model_step)
    agent, batch, _ = phases.build(
        "tempo+meta_every=1+batch_size=4+seq_len=6+imag_starts=8+horizon=3", "cpu", "dmc:cartpole_swingup"
    )
    spans: dict[str, float] = collections.defaultdict(float)
    restore = phases.instrument(spans)
    try:
        start = time.perf_counter()
        agent.train_step(batch)
        step = time.perf_counter() - start
    finally:
        restore()
    assert (ad.grads, ad.grads_used, ActorCritic.update, TempoAgent.world_model_step) == before
    # a weighter update (meta_every=1): a = ∇θ L_up, θ's backward, the world-model step and the actor-critic
    for name in (phases.UPPER, phases.LOWER, phases.WM, phases.AC):
        assert 0 < spans[name] <= step, (name, dict(spans))
    # the world-model step contains a's and θ's backward; it and the actor-critic are disjoint parts of the step
    assert spans[phases.UPPER] + spans[phases.LOWER] <= spans[phases.WM]
    assert spans[phases.WM] + spans[phases.AC] <= step
    # restored: a second step adds nothing
    spans.clear()
    agent.train_step(batch)
    assert not spans
