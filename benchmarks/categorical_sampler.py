"""Categorical latent sampling: inverse CDF (``worldmodels.rssm.categorical_one_hot``) vs Gumbel-max, old vs new in
one process.

Gumbel-max (what ``RSSM._sample`` did before) draws one uniform per class and takes argmax(logits − log(−log u));
the inverse CDF draws one uniform per variable and takes the first class whose cumulative probability exceeds it.
Both give exact samples; this script times

* the sampler alone at the shapes the RSSM sees (32 variables × 32 classes; batch 16 in the world model's filtering
  loop, 800 per imagination step at the ``sheeprl`` config, 12,800 for a whole imagined batch), and
* one DreamerV2 train step at ``benchmarks/roofline.py``'s ``sheeprl`` config, alternating the two samplers
  (patched into ``RSSM._sample``) round by round on the same batch,

prints medians and their ratio, and writes JSON:

    python benchmarks/categorical_sampler.py [--threads 2] [--rounds 6] [--set ac_precision=bf16 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from worldmodels.rssm import RSSM  # noqa: E402

CURRENT_SAMPLE = RSSM._sample  # the inverse-CDF sampler (worldmodels.rssm.categorical_one_hot)


def gumbel_max_sample(self: RSSM, stats: dict[str, torch.Tensor], noise: torch.Tensor | None) -> torch.Tensor:
    """The previous ``RSSM._sample`` for categorical latents (Gumbel-max, one uniform per class), for timing;
    Gaussian latents go to the current method, which is unchanged."""
    if not self.classes:
        return CURRENT_SAMPLE(self, stats, noise)
    logits = stats["logits"]
    u = torch.rand_like(logits)
    gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
    index = (logits.detach() + gumbel).argmax(-1)
    probs = logits.softmax(-1)
    return (F.one_hot(index, self.classes).to(probs) + probs - probs.detach()).flatten(-2)


def _median_ms(fn: Any, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6, help="train steps per sampler, alternating")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "categorical_sampler.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {"threads": args.threads, "sampler_ms": {}}
    rssm = RSSM(embed=4, action_dim=2, deter=8, stoch=32, classes=32, hidden=8)
    print(f"{'sampler, [N, 32, 32]':<24} {'Gumbel-max ms':>14} {'inverse CDF ms':>15} {'ratio':>7}")
    for n in (16, 800, 12_800):
        logits = torch.randn(n, 32, 32, requires_grad=True)
        a = _median_ms(lambda logits=logits: gumbel_max_sample(rssm, {"logits": logits}, None), 21)
        b = _median_ms(lambda logits=logits: CURRENT_SAMPLE(rssm, {"logits": logits}, None), 21)
        result["sampler_ms"][n] = {"gumbel_max": a, "inverse_cdf": b, "ratio": a / b}
        print(f"{'N = ' + str(n):<24} {a:14.3f} {b:15.3f} {a / b:6.2f}x")

    from roofline import CONFIGS
    from tempo_overhead import build

    env, preset, overrides, sizes = CONFIGS["sheeprl"]
    variant = "dreamerv2" + overrides + "".join(f"+{s}" for s in args.set)
    agent, batch, _ = build(variant, preset, env, **sizes)
    samplers = {"gumbel_max": gumbel_max_sample, "inverse_cdf": CURRENT_SAMPLE}
    for fn in samplers.values():
        RSSM._sample = fn  # type: ignore[method-assign]
        for _ in range(args.warmup):
            agent.train_step(batch)
    times: dict[str, list[float]] = {k: [] for k in samplers}
    for _ in range(args.rounds):
        for name, fn in samplers.items():
            RSSM._sample = fn  # type: ignore[method-assign]
            t = time.perf_counter()
            agent.train_step(batch)
            times[name].append(time.perf_counter() - t)
    RSSM._sample = CURRENT_SAMPLE  # type: ignore[method-assign]
    step = {k: statistics.median(v) for k, v in times.items()}
    result.update(variant=variant, train_step_s=step, train_step_ratio=step["gumbel_max"] / step["inverse_cdf"])
    print(f"train step at the sheeprl config ({args.threads} threads, {args.rounds} alternating rounds, medians):")
    print(
        f"  Gumbel-max {step['gumbel_max']:.3f} s, inverse CDF {step['inverse_cdf']:.3f} s: "
        f"{result['train_step_ratio']:.2f}x"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
