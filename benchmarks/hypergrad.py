"""Cost of one hypergradient per strategy, beside higher's and torchopt's one-step unroll.

Also one full ``BilevelUpdate.step`` per strategy with a shared forward (TEMPO's shape; ``update_*`` rows), where
``update_uniform`` is the maximum-likelihood baseline step.

Two models: an MLP (64 → 4×400 → 10, batch 800, cross-entropy; upper loss on a 100-sample meta batch) and a GRU
sequence model (B=16, T=50, 200 units; N = 800 per-step losses; upper loss through a frozen critic).

* Time: every method runs in one process, round-robin (each round runs every method once, in the same order),
  after warm-up; the median over rounds is reported in ms.  ``plain_step`` is one ordinary training step
  (forward, backward of the weighted loss, SGD step) — the unit the targets are stated in.
* Memory: each method runs again in its own fresh subprocess: one warm-up call, then the peak-RSS mark is reset
  (``/proc/self/clear_refs``) and three calls follow; reported are that peak (VmHWM) and its increase over the
  RSS after the warm-up — the transient memory of the method itself — in MiB.

Threads are pinned (``--threads``, default 1; on a 2-core machine thread oversubscription changes timings by 10×+).
Usage: ``python benchmarks/hypergrad.py [--rounds 15] [--threads 1] [--out benchmarks/results/hypergrad.json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import bilevel as B

LR = 0.1


class GRUModel(nn.Module):
    def __init__(self, obs: int = 16, act: int = 4, hidden: int = 200) -> None:
        super().__init__()
        self.gru = nn.GRU(obs + act, hidden, batch_first=True)
        self.head = nn.Linear(hidden, obs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(x)[0])


def make_problem(kind: str) -> dict[str, Any]:
    """Model, per-sample loss as a function of the model (module or functional view), upper loss, weights."""
    torch.manual_seed(0)
    if kind == "mlp":
        layers: list[nn.Module] = []
        width = 64
        for _ in range(4):
            layers += [nn.Linear(width, 400), nn.ReLU()]
            width = 400
        model = nn.Sequential(*layers, nn.Linear(width, 10))
        x, y = torch.randn(800, 64), torch.randint(0, 10, (800,))
        xm, ym = torch.randn(100, 64), torch.randint(0, 10, (100,))
        ce = nn.functional.cross_entropy

        def lower(f: Callable[[Tensor], Tensor]) -> Tensor:
            return ce(f(x), y, reduction="none")

        def upper(f: Callable[[Tensor], Tensor]) -> Tensor:
            return ce(f(xm), ym)

        n = 800
    else:
        model = GRUModel()
        critic = nn.Sequential(nn.Linear(16, 200), nn.ELU(), nn.Linear(200, 1)).requires_grad_(False)
        seq = torch.randn(16, 51, 16)
        act = torch.randn(16, 50, 4)
        inp = torch.cat([seq[:, :-1], act], -1)

        def lower(f: Callable[[Tensor], Tensor]) -> Tensor:
            return (f(inp) - seq[:, 1:]).pow(2).sum(-1)  # ℓ[16, 50]

        def upper(f: Callable[[Tensor], Tensor]) -> Tensor:
            return (critic(f(inp)) - critic(seq[:, 1:])).pow(2).mean()

        n = 800
    weights = 0.75 + 0.5 * torch.rand(n).reshape(lower(model).shape)
    return {"model": model, "lower": lower, "upper": upper, "weights": weights}


def methods(kind: str) -> dict[str, Callable[[], Any]]:
    """name → zero-argument callable performing one measured unit of work on a fresh-enough state."""
    p = make_problem(kind)
    model, lower, upper, w0 = p["model"], p["lower"], p["upper"], p["weights"]
    params = dict(model.named_parameters())

    def psl(q: dict[str, Tensor]) -> Tensor:
        return lower(lambda x: functional_call(model, q, (x,)))

    def up(q: dict[str, Tensor]) -> Tensor:
        return upper(lambda x: functional_call(model, q, (x,)))

    sgd = torch.optim.SGD(model.parameters(), lr=1e-6)

    def plain_step() -> None:
        sgd.zero_grad()
        (w0 * lower(model)).mean().backward()
        sgd.step()

    def strategy(s: B.Strategy) -> Callable[[], Tensor]:
        return lambda: B.hypergradient(s, psl, up, params, w0)

    out: dict[str, Callable[[], Any]] = {
        "plain_step": plain_step,
        "same_state": strategy(B.SameState(LR)),
        "same_state_jvp": strategy(B.SameState(LR, method="jvp")),
    }
    for k in (1, 2, 4, 8):
        out[f"lookahead_k{k}"] = strategy(B.Lookahead(LR, k))
    for it in (5, 10, 20, 40):
        out[f"implicit_cg{it}"] = strategy(B.Implicit("cg", iters=it, damping=1.0))
    out["implicit_neumann20"] = strategy(B.Implicit("neumann", iters=20, alpha=0.01))

    try:
        import higher

        inner = torch.optim.SGD(model.parameters(), lr=LR)

        def higher_k1() -> Tensor:
            w = w0.clone().requires_grad_(True)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=True, track_higher_grads=True) as (f, o):
                o.step((w * lower(f)).mean())
                return torch.autograd.grad(upper(f), w)[0]

        out["higher_k1"] = higher_k1
    except ImportError:
        pass
    try:
        import torchopt

        clone = make_problem(kind)["model"]
        meta = torchopt.MetaSGD(clone, lr=LR)
        state = torchopt.extract_state_dict(clone)
        opt_state = torchopt.extract_state_dict(meta)

        def torchopt_k1() -> Tensor:
            w = w0.clone().requires_grad_(True)
            meta.step((w * lower(clone)).mean())
            g = torch.autograd.grad(upper(clone), w)[0]
            torchopt.recover_state_dict(clone, state)
            torchopt.recover_state_dict(meta, opt_state)
            return g

        out["torchopt_k1"] = torchopt_k1
    except ImportError:
        pass
    return out


def update_methods(kind: str) -> dict[str, Callable[[], Any]]:
    """One full ``BilevelUpdate.step`` per strategy, TEMPO-style: the upper loss comes from the same forward."""
    p = make_problem(kind)
    model, lower, upper = p["model"], p["lower"], p["upper"]

    def forward(f: Callable[[Tensor], Tensor]) -> B.LevelOutputs:
        loss = lower(f)
        return B.LevelOutputs(loss=loss, features=loss.detach().unsqueeze(-1), upper=upper(f))

    out: dict[str, Callable[[], Any]] = {}
    for name, s in [
        ("update_uniform", B.Uniform()),
        ("update_same_state", B.SameState(LR)),
        ("update_same_state_jvp", B.SameState(LR, method="jvp")),
        ("update_lookahead_k1", B.Lookahead(LR)),
    ]:
        weighter = B.MetaWeighter(1, layers=2, hidden=64)
        upd = B.BilevelUpdate(
            model,
            torch.optim.SGD(model.parameters(), lr=1e-6),
            s,
            weighter if s.trains_weighter else None,
            torch.optim.Adam(weighter.parameters()) if s.trains_weighter else None,
        )
        out[name] = lambda upd=upd: upd.step(forward)
    return out


def time_all(kind: str, rounds: int, warmup: int = 2) -> dict[str, float]:
    ms = {**methods(kind), **update_methods(kind)}
    samples: dict[str, list[float]] = {k: [] for k in ms}
    for r in range(warmup + rounds):
        for name, fn in ms.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                samples[name].append(1e3 * dt)
    return {k: statistics.median(v) for k, v in samples.items()}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(kind: str, name: str, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    fn = {**methods(kind), **update_methods(kind)}[name]
    fn()  # warm-up: allocator arenas, thread pools and kernels' scratch are not the method's cost
    base = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark (Linux ≥ 4.0)
    for _ in range(3):
        fn()
    peak = _status_mib("VmHWM")
    queue.put((peak, peak - base))


def memory_all(kind: str, names: list[str], threads: int) -> dict[str, dict[str, float]]:
    ctx = mp.get_context("spawn")
    out = {}
    for name in names:
        q = ctx.Queue()
        proc = ctx.Process(target=_memory_child, args=(kind, name, threads, q))
        proc.start()
        peak, delta = q.get()
        proc.join()
        out[name] = {"peak_rss_mib": peak, "delta_rss_mib": delta}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="mlp,gru")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/hypergrad.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(),
        "models": {},
    }
    for kind in args.models.split(","):
        times = time_all(kind, args.rounds)
        mem = {} if args.no_memory else memory_all(kind, list(times), args.threads)
        result["models"][kind] = {"median_ms": times, "memory": mem}
        plain = times["plain_step"]
        print(f"\n{kind}: median of {args.rounds} rounds, {args.threads} thread(s)")
        print(f"{'method':<20} {'ms':>9} {'× plain step':>13} {'peak RSS MiB':>13} {'Δ RSS MiB':>10}")
        for name, t in times.items():
            m = mem.get(name, {})
            print(
                f"{name:<20} {t:9.1f} {t / plain:13.2f} {m.get('peak_rss_mib', float('nan')):13.0f} "
                f"{m.get('delta_rss_mib', float('nan')):10.0f}"
            )
        checks = {
            "same_state_over_plain_step": times["same_state"] / plain,
            "update_same_state_over_update_uniform": times["update_same_state"] / times["update_uniform"],
        }
        for ref in ("higher_k1", "torchopt_k1"):
            if ref in times:
                checks[f"lookahead_k1_over_{ref}"] = times["lookahead_k1"] / times[ref]
        result["models"][kind]["ratios"] = checks
        print("ratios:", {k: round(v, 2) for k, v in checks.items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
