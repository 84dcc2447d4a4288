"""TEMPO's overhead over DreamerV2: train-step time and peak RSS at the same config (issue 4's acceptance).

* Time: every variant's agent is built in one process from the same seed and fed the same synthetic batch
  (the preset's batch size × sequence length, the environment's observation shape).  Rounds interleave the
  variants (d, t, d, t, ...); a round runs ``steps`` train steps per variant (a multiple of every ``meta_every``
  so an amortised weighter update is represented exactly), and the median per-step time over rounds is reported.
* Memory: each variant again in its own fresh subprocess: one warm-up round, then the peak-RSS mark is reset
  (``/proc/self/clear_refs``) and one more round runs; reported are that peak (VmHWM) and its increase over the
  RSS before the round (the train step's own working memory).

A variant is ``RECIPE`` or ``RECIPE+key=value+...`` as in ``reweigh compare``.  Usage:

    python benchmarks/tempo_overhead.py [--preset cpu] [--rounds 10] [--threads 1] [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.compare import Variant  # noqa: E402
from recipes.registry import resolve  # noqa: E402
from recipes.run.config import RunConfig, parse_value  # noqa: E402
from recipes.run.heap import configure_heap  # noqa: E402

DEFAULT_VARIANTS = {
    "cpu": [
        "dreamerv2",
        "tempo",
        "tempo+meta_every=1",
        "tempo+meta_every=8",
        "tempo+meta_every=1+strategy=naive",
        "tempo+meta_every=1+strategy=lookahead",
    ],
    "paper": ["dreamerv2", "tempo"],
}
SHAPES = {False: (5,)}  # cartpole proprio; pixels: (3, size, size) channel-first uint8


def build(
    variant: str,
    preset: str,
    env: str,
    seed: int = 0,
    *,
    obs_dim: int = SHAPES[False][0],
    action_dim: int = 1,
    discrete: bool = False,
) -> tuple[Any, dict[str, torch.Tensor], int]:
    """The agent of ``variant``, a synthetic batch for it, and its ``meta_every`` (1 for dreamerv2).

    ``obs_dim``/``action_dim``/``discrete``: the vector env's sizes (default: DMC cartpole's 5 and 1, continuous);
    a discrete agent gets one-hot actions."""
    from recipes.dreamer.dreamerv2 import DreamerAgent
    from recipes.dreamer.tempo import TempoAgent

    v = Variant.parse(variant)
    overrides = {k: parse_value(x) for k, x in (item.split("=", 1) for item in v.sets)}
    cfg = resolve(env, preset, overrides, recipe=v.recipe)
    configure_heap(cfg.heap)  # process-wide: the first variant built decides (main() checks they agree)
    obs_shape = (3, cfg.image_size, cfg.image_size) if cfg.pixels else (obs_dim,)
    torch.manual_seed(seed)
    agent = (TempoAgent if v.recipe == "tempo" else DreamerAgent)(cfg, obs_shape, action_dim, discrete)
    gen = torch.Generator().manual_seed(seed)
    b, t = cfg.batch_size, cfg.seq_len
    obs = (
        torch.randint(0, 255, (b, t, *obs_shape), generator=gen, dtype=torch.uint8)
        if cfg.pixels
        else torch.randn(b, t, *obs_shape, generator=gen)
    )
    batch = {
        "obs": obs,
        "action": (
            torch.nn.functional.one_hot(torch.randint(0, action_dim, (b, t), generator=gen), action_dim).float()
            if discrete
            else torch.rand(b, t, action_dim, generator=gen) * 2 - 1
        ),
        "reward": torch.rand(b, t, generator=gen),
        "is_first": torch.zeros(b, t, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    if cfg.discount_head:
        batch["discount"] = torch.ones(b, t)
    return agent, batch, getattr(cfg, "meta_every", 1)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(variant: str, preset: str, env: str, steps: int, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    agent, batch, _ = build(variant, preset, env)
    for _ in range(steps):
        agent.train_step(batch)
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(steps):
        agent.train_step(batch)
    peak = _status_mib("VmHWM")
    queue.put((peak, peak - base))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--variants", default=None, help="comma list; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None, help="train steps per round (default: lcm of meta_every)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",") if args.variants else DEFAULT_VARIANTS[args.preset]
    heaps = {
        n: dict(item.split("=", 1) for item in Variant.parse(n).sets).get(
            "heap", RunConfig.model_fields["heap"].default
        )
        for n in names
    }
    if len(set(heaps.values())) > 1:  # malloc's settings are the process's: one timing process cannot mix them
        ap.error(f"--variants: the timed variants must share one heap setting, got {heaps}")
    built = {n: build(n, args.preset, args.env) for n in names}
    steps = args.steps
    if steps is None:
        import math

        steps = math.lcm(*[m for _, _, m in built.values()])
    for agent, batch, _ in built.values():  # warm-up (and torch.compile, with compile=true)
        agent.train_step(batch)
    print("warm-up done, timing", file=sys.stderr, flush=True)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            agent, batch, _ = built[n]
            t0 = time.perf_counter()
            for _ in range(steps):
                agent.train_step(batch)
            samples[n].append((time.perf_counter() - t0) / steps)
    base = names[0]
    result: dict[str, Any] = {
        "preset": args.preset,
        "env": args.env,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_round": steps,
        "variants": {},
    }
    med = {n: statistics.median(v) for n, v in samples.items()}
    memory: dict[str, tuple[float, float]] = {}
    if not args.no_memory:
        ctx = mp.get_context("spawn")
        for n in names:
            q = ctx.Queue()
            proc = ctx.Process(target=_memory_child, args=(n, args.preset, args.env, steps, args.threads, q))
            proc.start()
            memory[n] = q.get()
            proc.join()
    print(f"preset={args.preset} env={args.env} threads={args.threads} rounds={args.rounds} steps/round={steps}")
    print(f"{'variant':<58} {'s/step':>8} {'× base':>7} {'peak MiB':>9} {'×':>6} {'step MiB':>9} {'×':>6}")
    for n in names:
        row: dict[str, Any] = {"seconds_per_step": med[n], "time_ratio": med[n] / med[base], "samples": samples[n]}
        line = f"{n:<58} {med[n]:8.3f} {med[n] / med[base]:7.3f}"
        if n in memory:
            peak, delta = memory[n]
            row.update(
                peak_rss_mib=peak,
                step_rss_mib=delta,
                peak_ratio=peak / memory[base][0],
                step_rss_ratio=delta / max(memory[base][1], 1e-9),
            )
            line += f" {peak:9.0f} {row['peak_ratio']:6.3f} {delta:9.1f} {row['step_rss_ratio']:6.2f}"
        result["variants"][n] = row
        print(line)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"tempo_overhead_{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
