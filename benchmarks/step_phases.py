"""Wall time per phase of one Dreamer-family train step: where TEMPO's extra time over DreamerV2 goes.

Every variant's agent is built in one process (``tempo_overhead.build``: same seed, the preset's synthetic batch);
variants run one after the other, ``--warmup`` steps each (compilation) then ``--rounds`` timed steps, and the
median of each phase over the timed steps is reported.  The phases are wall-clock spans around the calls the step
makes — each compiled graph (``MaybeCompiled``, by its name), a = ∇θ L_up (``bilevel._autodiff.grads_used``),
θ's backward (``FactoredJvpAt._backward`` under TEMPO's compiled JVP, ``_autodiff.grads`` otherwise), the
filtering JVP (``fast.TempoCompiled._chunked_states_jvp``), the actor-critic update and the world-model step — so
they nest (the world-model step contains the rest but the actor-critic) and do not sum to the step.

The bound it prints: TEMPO's exact SameState hypergradient (TEMPO eq. 9) needs a = ∇θ L_up (a backward through the
filtering: encoder, RSSM, slow critic) and J a (a forward-mode pass through the filtering) on top of DreamerV2's
step, so ``1 + (a + JVP) / DreamerV2`` is the ratio this implementation cannot go below whatever else is removed.

Usage:

    python benchmarks/step_phases.py --preset paper \
        --variants dreamerv2+compile=true,tempo+meta_every=1+compile=true [--threads 2] [--out X.json]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tempo_overhead import build  # noqa: E402

UPPER = "a = ∇θ L_up (backward)"
LOWER = "θ's backward"
JVP = "J a (filtering JVP)"
AC = "actor-critic update"
WM = "world-model step"


def instrument(spans: dict[str, float]) -> Callable[[], None]:
    """Wrap the step's calls so each adds its wall time (s) to ``spans[label]`` (a call nested in one of the same
    label counts once); returns the function that puts the originals back."""
    import bilevel._autodiff as ad
    import bilevel.factored as factored
    from recipes.agents import compile as compile_mod
    from recipes.agents import dreamer_ac
    from recipes.dreamer import dreamerv2, fast, tempo

    active: set[str] = set()

    def timed(fn: Any, label: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(args) if callable(label) else label
            if name in active:  # a recursive or nested call of the same label: counted by the outer one
                return fn(*args, **kwargs)
            active.add(name)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                active.discard(name)
                spans[name] += time.perf_counter() - start

        return wrapper

    targets: list[tuple[Any, str, Any]] = [
        (ad, "grads_used", UPPER),
        (ad, "grads", LOWER),
        (factored.FactoredJvpAt, "_backward", LOWER),
        (fast.TempoCompiled, "_chunked_states_jvp", JVP),
        (dreamer_ac.ActorCritic, "update", AC),
        (dreamerv2.DreamerAgent, "world_model_step", WM),
        (tempo.TempoAgent, "world_model_step", WM),
        (compile_mod.MaybeCompiled, "__call__", lambda a: f"graph: {a[0].name}"),
    ]
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    for owner, name, label in targets:
        setattr(owner, name, timed(getattr(owner, name), label))

    def restore() -> None:
        for owner, name, fn in originals:
            setattr(owner, name, fn)

    return restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="dreamerv2+compile=true,tempo+meta_every=1+compile=true")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation)")
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_phases.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spans: dict[str, float] = collections.defaultdict(float)
    instrument(spans)
    results: dict[str, dict[str, float]] = {}
    for variant in args.variants.split(","):
        agent, batch, _ = build(variant, args.preset, args.env)
        for _ in range(args.warmup):
            agent.train_step(batch)
        rows: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            spans.clear()
            start = time.perf_counter()
            agent.train_step(batch)
            rows["step"].append(time.perf_counter() - start)
            for name, seconds in spans.items():
                rows[name].append(seconds)
        results[variant] = {name: statistics.median(v) for name, v in rows.items()}
        del agent, batch
        print(f"\n{variant} ({args.preset} preset, {args.threads} thread(s), median of {args.rounds} steps):")
        for name, seconds in results[variant].items():
            print(f"  {name:<60s} {seconds:8.3f} s")
    names = list(results)
    base = next((n for n in names if n.startswith("dreamerv2")), None)
    summary: dict[str, Any] = {}
    if base is not None:
        for n in names:
            if n.startswith("tempo") and UPPER in results[n]:
                floor = 1 + (results[n][UPPER] + results[n].get(JVP, 0.0)) / results[base]["step"]
                ratio = results[n]["step"] / results[base]["step"]
                summary[n] = {"ratio": ratio, "floor_a_plus_jvp": floor}
                print(f"\n{n} / {base}: {ratio:.2f}x; 1 + (a + J a) / DreamerV2 = {floor:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"preset": args.preset, "threads": args.threads, "phases": results, "summary": summary}, indent=1)
    )


if __name__ == "__main__":
    main()
