"""``bilevel.implicit_hypergradient`` (CG and normal CG) beside torchopt's implicit differentiation, at equal accuracy.

Problem: hyperparameter optimisation of an MLP regressor (in → 2×H → 1, SiLU): the outer variable ψ holds one log
L2 strength per parameter tensor, the lower objective is the training MSE plus Σ_k ½ exp(ψ_k)‖θ_k‖², the outer one
the validation MSE.  θ is first fitted by Adam, so the implicit function theorem holds only approximately — the
same θ goes to both implementations, so both compute the same quantity.

Equal accuracy: both run the same Krylov method (CG on H + λI, or on H² + λI for normal CG) for the same number of
iterations with no early stop, so their iterates agree up to round-off; reported are the relative difference
between the two and each one's relative error against a reference (ours with 10× the iterations).

Timing: both in one process, round-robin after warm-up, median over rounds, one torch thread by default.
Usage: ``python benchmarks/implicit_speed.py [--rounds 15] [--iters 20] [--threads 1] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bilevel  # noqa: E402


def make_problem(inputs: int, hidden: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, 1),
    )  # fmt: skip
    x, xv = torch.randn(n, inputs, generator=g), torch.randn(n // 2, inputs, generator=g)
    w = torch.randn(inputs, generator=g)
    y, yv = torch.sin(x @ w) + 0.1 * torch.randn(n, generator=g), torch.sin(xv @ w)
    names = [k for k, _ in net.named_parameters()]
    psi = torch.full((len(names),), -4.0)

    def lower(th: dict[str, Tensor], ps: Tensor) -> Tensor:
        mse = (functional_call(net, th, (x,)).squeeze(-1) - y).square().mean()
        return mse + 0.5 * sum(ps[i].exp() * th[k].square().sum() for i, k in enumerate(names))

    def upper(th: dict[str, Tensor], ps: Tensor) -> Tensor:
        return (functional_call(net, th, (xv,)).squeeze(-1) - yv).square().mean()

    th = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    opt = torch.optim.Adam(th.values(), lr=3e-3)
    for _ in range(1500):
        opt.zero_grad()
        lower(th, psi).backward()
        opt.step()
    return lower, upper, th, psi, names


def torchopt_fn(lower, upper, th, psi, names, solver: str, iters: int, damping: float) -> Callable[[], Tensor]:
    import torchopt

    make = torchopt.linear_solve.solve_cg if solver == "cg" else torchopt.linear_solve.solve_normal_cg
    solve = make(maxiter=iters, rtol=0.0, atol=0.0, ridge=damping)

    def optimality(params, meta):
        return torch.func.grad(lambda ps: lower(dict(zip(names, ps, strict=True)), meta))(params)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def solver_fn(params, meta):
        return tuple(th[k].detach() for k in names)

    init = tuple(torch.zeros_like(th[k]) for k in names)

    def run() -> Tensor:
        meta = psi.clone().requires_grad_(True)
        params = solver_fn(init, meta)
        (g,) = torch.autograd.grad(upper(dict(zip(names, params, strict=True)), meta), meta)
        return g

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--damping", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lower, upper, th, psi, names = make_problem(args.inputs, args.hidden, args.n)
    n_params = sum(v.numel() for v in th.values())

    methods: dict[str, Callable[[], Tensor]] = {}
    refs: dict[str, Tensor] = {}
    for solver in ("cg", "normal_cg"):
        kw = {"solver": solver, "damping": args.damping, "tol": 0.0}
        methods[f"ours_{solver}"] = lambda kw=kw: bilevel.implicit_hypergradient(
            lower, upper, th, psi, iters=args.iters, **kw
        )
        methods[f"torchopt_{solver}"] = torchopt_fn(lower, upper, th, psi, names, solver, args.iters, args.damping)
        refs[solver] = bilevel.implicit_hypergradient(lower, upper, th, psi, iters=10 * args.iters, **kw)

    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the values compared below
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    rows = {}
    for solver in ("cg", "normal_cg"):
        ours, theirs, ref = results[f"ours_{solver}"], results[f"torchopt_{solver}"], refs[solver]
        t_ours = statistics.median(times[f"ours_{solver}"]) * 1e3
        t_theirs = statistics.median(times[f"torchopt_{solver}"]) * 1e3
        rows[solver] = {
            "ours_ms": t_ours,
            "torchopt_ms": t_theirs,
            "ratio": t_ours / t_theirs,
            "rel_diff_ours_vs_torchopt": float((ours - theirs).norm() / theirs.norm()),
            "rel_err_ours": float((ours - ref).norm() / ref.norm()),
            "rel_err_torchopt": float((theirs - ref).norm() / ref.norm()),
        }
        r = rows[solver]
        print(
            f"{solver:>9}: ours {t_ours:8.2f} ms  torchopt {t_theirs:8.2f} ms  ratio {r['ratio']:.3f}  "
            f"|ours-torchopt|/|torchopt| {r['rel_diff_ours_vs_torchopt']:.1e}  "
            f"err vs ref: ours {r['rel_err_ours']:.1e} torchopt {r['rel_err_torchopt']:.1e}"
        )
    report = {
        "problem": {"inputs": args.inputs, "hidden": args.hidden, "n": args.n, "params": n_params, "psi": len(names)},
        "iters": args.iters,
        "damping": args.damping,
        "threads": args.threads,
        "rounds": args.rounds,
        "results": rows,
        "machine": {"processor": platform.processor() or platform.machine(), "torch": torch.__version__},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
