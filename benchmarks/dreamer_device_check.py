"""The Dreamer-family train step on any torch device, at any preset, without an environment: seconds per update.

Each variant (``recipe+key=value+...``, as ``benchmarks/tempo_overhead.py``) is built with ``device=<--device>``
and fed that script's synthetic replay-shaped batch on the device; every parameter is checked to live there. After
``--warmup`` untimed updates (the first ones of a compiled variant include compiling; their time is printed),
``--steps`` updates are timed one by one, each split into the world-model step (for ``tempo`` with the weighter's
update when due) and the actor-critic update, synchronising the device around each part. Printed and written as
JSON: medians and means in seconds, and the device's peak memory:

    python benchmarks/dreamer_device_check.py --device cuda --preset paper \\
        --variants dreamerv2,tempo+meta_every=1 --out benchmarks/results/dreamer_device.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from tempo_overhead import build  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(variant: str, preset: str, env: str, device: str, warmup: int, steps: int) -> dict[str, object]:
    """One variant: its warm-up time and the per-update times (s) of ``steps`` timed updates."""
    agent, batch, _ = build(f"{variant}+device={device}", preset, env)
    dev = torch.device(device)
    agent.to(dev)  # as the recipe's make_learner does (the optimisers hold the same parameters)
    wrong = [name for name, p in agent.named_parameters() if p.device.type != dev.type]
    if wrong:
        raise RuntimeError(f"{variant}: parameters not on {device}: {wrong[:5]}")
    batch = {k: v.to(dev) for k, v in batch.items()}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(warmup):
        agent.train_step(batch)
    _sync(dev)
    warm = time.perf_counter() - t0
    wm, ac, step = [], [], []
    terminal = batch["discount"] == 0 if "discount" in batch else None
    for _ in range(steps):
        _sync(dev)
        t0 = time.perf_counter()
        _, out = agent.world_model_step(batch)
        _sync(dev)
        t1 = time.perf_counter()
        agent.ac.update(out.states["post"], terminal)
        _sync(dev)
        t2 = time.perf_counter()
        wm.append(t1 - t0)
        ac.append(t2 - t1)
        step.append(t2 - t0)
    return {
        "variant": variant,
        "warmup_s": warm,
        "step_median_s": statistics.median(step),
        "step_mean_s": statistics.mean(step),
        "wm_median_s": statistics.median(wm),
        "ac_median_s": statistics.median(ac),
        "peak_memory_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper", choices=["cpu", "paper"])
    ap.add_argument("--env", default="dmc:cartpole_swingup")
    ap.add_argument("--variants", default="dreamerv2,tempo+meta_every=1", help="comma list")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dreamer_device.json")
    args = ap.parse_args()
    info = {"device": args.device, "preset": args.preset, "env": args.env, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
    rows = []
    for variant in args.variants.split(","):
        row = measure(variant, args.preset, args.env, args.device, args.warmup, args.steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**info, "rows": rows}, indent=1))
    print(f"{'variant':50s} {'warm-up s':>9s} {'step s':>8s} {'wm s':>8s} {'ac s':>8s} {'peak MiB':>9s}")
    for r in rows:
        mem = f"{r['peak_memory_mib']:9.0f}" if r["peak_memory_mib"] is not None else f"{'-':>9s}"
        print(
            f"{r['variant']:50s} {r['warmup_s']:9.1f} {r['step_median_s']:8.4f} {r['wm_median_s']:8.4f} "
            f"{r['ac_median_s']:8.4f} {mem}"
        )


if __name__ == "__main__":
    main()
