"""Check hypergradients against central finite differences — the tool to run after writing a custom task loss.

Every strategy knows the scalar function of w that it differentiates (``Strategy.objective``, evaluated with
first-order autograd only): ``Lookahead`` the upper loss after K real SGD steps, ``Implicit`` the upper loss at the
re-solved lower problem, ``SameState`` TEMPO's linearisation (eq. 9).  Central differences of that function along
coordinates or random directions are compared with the strategy's analytic g = dL_up/dw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel.functional import problem as make_problem
from bilevel.strategies import BilevelProblem, Implicit, Lookahead, PerSampleLoss, SameState, Strategy, UpperLoss


def finite_difference_gradient(
    f: Callable[[Tensor], Tensor], w: Tensor, *, eps: float, directions: Tensor | None = None
) -> Tensor:
    """Central finite differences of a scalar function ``f`` at ``w``.

    Args:
        f: ``Tensor (shape of w) -> Tensor[]``.
        w: the point.
        eps: step size (in units of w).
        directions: ``None`` for the full gradient (2·numel evaluations, result shaped like ``w``), or a tensor
            ``[D, *w.shape]`` of directions (result ``[D]``: the directional derivatives).
    """
    w = w.detach()
    if directions is None:
        flat = w.reshape(-1)
        out = torch.empty_like(flat)
        for i in range(flat.numel()):
            e = torch.zeros_like(flat)
            e[i] = eps
            out[i] = (f((flat + e).view_as(w)) - f((flat - e).view_as(w))) / (2 * eps)
        return out.view_as(w)
    return torch.stack([(f(w + eps * v) - f(w - eps * v)) / (2 * eps) for v in directions])


@dataclass
class CheckRow:
    """One line of a hypergradient check.

    Attributes:
        strategy: the strategy's repr.
        rel_error: ‖g − g_fd‖ / ‖g_fd‖ over the checked coordinates or directions.
        cosine: cosine similarity of g and g_fd.
        analytic_norm: ‖g‖, the strategy's hypergradient's norm.
        fd_norm: ‖g_fd‖, the finite differences' norm.
        seconds: wall time of the analytic hypergradient.
        passed: ``rel_error ≤ tolerance``.
        tolerance: the bound used.
        note: how it was checked.
    """

    strategy: str
    rel_error: float
    cosine: float
    analytic_norm: float
    fd_norm: float
    seconds: float
    passed: bool
    tolerance: float
    note: str = ""


def default_strategies(lr: float) -> list[Strategy]:
    """What ``check_hypergradient`` checks when given no strategies."""
    return [SameState(lr), Lookahead(lr, 1), Lookahead(lr, 3), Implicit("cg", iters=200)]


def _assert_deterministic(prob: BilevelProblem) -> None:
    with torch.no_grad():
        a, b = prob.loss_at(prob.tensors), prob.loss_at(prob.tensors)
        u, v = prob.upper_at(prob.tensors), prob.upper_at(prob.tensors)
    if not torch.equal(a, b):
        raise ValueError(
            "per_sample_loss is not deterministic in params (two calls differ): fix latent samples, "
            "dropout masks and other noise outside the closure before checking hypergradients"
        )
    if not torch.equal(u, v):
        raise ValueError("upper_loss is not deterministic in params (two calls differ): fix its noise first")


def _stationarity(strategy: Implicit, base: BilevelProblem, at: BilevelProblem, weights: Tensor) -> float:
    """max |∇θ (L_low + (λ/2)‖θ − θ_0‖²)| at the solved point."""
    theta = [t.detach().requires_grad_(t.requires_grad) for t in at.tensors]
    value = (weights.detach() * at.loss_at(theta)).mean()
    grads = torch.autograd.grad(value, [t for t in theta if t.requires_grad])
    anchors = [t for t in base.tensors if t.requires_grad]
    frees = [t for t in theta if t.requires_grad]
    return max(
        float((g + strategy.damping * (x.detach() - a.detach())).abs().max())
        for g, x, a in zip(grads, frees, anchors, strict=True)
    )


def check_hypergradient(
    per_sample_loss: PerSampleLoss,
    upper_loss: UpperLoss,
    params: Mapping[str, Tensor],
    weights: Tensor,
    strategies: Sequence[Strategy] | None = None,
    *,
    lr: float = 0.1,
    eps: float | None = None,
    directions: int | None = None,
    max_coordinates: int = 32,
    tolerance: float | None = None,
    seed: int = 0,
) -> list[CheckRow]:
    """Compare each strategy's dL_up/dw with central finite differences of the function it differentiates.

    Same arguments as ``bilevel.hypergradient``.  Use float64 parameters and data for meaningful errors
    (float32 rounding limits agreement to ~1e-3).  ``Implicit`` strategies are checked at θ* = argmin L_low(·, w),
    found by L-BFGS from ``params`` (the implicit function theorem holds only there).  Strategies that train no
    weighter (``Naive``, ``Uniform``) are skipped.

    Args:
        strategies: defaults to ``default_strategies`` with ``lr``.
        lr: η of the default strategies.
        eps: finite-difference step; default 1e-5 (float64) or 1e-2 (float32), 1e-4 for Implicit in float64.
        directions: number of random unit directions; default: every coordinate when N ≤ ``max_coordinates``,
            else 8 directions.
        tolerance: pass bound on the relative error; default 1e-5 (float64; Implicit 1e-4) or 5e-2 (float32).
        seed: seed of the random directions.

    Returns:
        One ``CheckRow`` per strategy (print with ``format_report``).

    Raises:
        ValueError: if either closure is not deterministic, or shapes do not match.
    """
    base = make_problem(per_sample_loss, upper_loss, params)
    _assert_deterministic(base)
    weights = weights.detach()
    double = weights.dtype == torch.float64
    n = weights.numel()
    dirs = _directions(weights, directions if directions is not None or n <= max_coordinates else 8, seed)
    rows = []
    for strategy in strategies if strategies is not None else default_strategies(lr):
        if not strategy.trains_weighter:
            continue
        implicit = isinstance(strategy, Implicit)
        step = eps if eps is not None else ((1e-4 if implicit else 1e-5) if double else 1e-2)
        tol = tolerance if tolerance is not None else ((1e-4 if implicit else 1e-5) if double else 5e-2)
        at, objective, note = _check_point(strategy, base, weights)
        t0 = time.perf_counter()
        g = strategy.compute(make_problem(at.per_sample_loss, at.upper_loss, at.params), weights).hypergradient
        seconds = time.perf_counter() - t0

        fd = finite_difference_gradient(objective, weights, eps=step, directions=dirs)
        analytic = g if dirs is None else (dirs * g).flatten(1).sum(1)
        fd_norm, an_norm = float(fd.norm()), float(analytic.norm())
        rel = float((analytic - fd).norm()) / max(fd_norm, 1e-300)
        cos = float(torch.nn.functional.cosine_similarity(analytic.flatten(), fd.flatten(), dim=0))
        how = f"{n} coordinates" if dirs is None else f"{len(dirs)} random directions"
        rows.append(
            CheckRow(repr(strategy), rel, cos, an_norm, fd_norm, seconds, rel <= tol, tol, f"{how}, eps={step:g}{note}")
        )
    return rows


def _directions(weights: Tensor, directions: int | None, seed: int) -> Tensor | None:
    """``directions`` random unit directions in the weights' space [D, *shape] (seeded), or None: every coordinate."""
    if directions is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn((directions, *weights.shape), generator=gen, dtype=weights.dtype)
    return (dirs / dirs.flatten(1).norm(dim=1).view(-1, *([1] * weights.dim()))).to(weights.device)


def _check_point(
    strategy: Strategy, base: BilevelProblem, weights: Tensor
) -> tuple[BilevelProblem, Callable[[Tensor], Tensor], str]:
    """Where ``strategy`` is checked (``base``; for ``Implicit`` θ* = argmin L_low(·, w), where the IFT holds), the
    function of w its hypergradient differentiates, and a note for the report."""
    if not isinstance(strategy, Implicit):

        def objective(w: Tensor) -> Tensor:
            return strategy.objective(base, w)

        return base, objective, ""
    # θ̂ solves the (proximal, if damped) lower problem anchored at params; the IFT holds there.
    theta_hat = strategy.solve(base, weights)
    at = BilevelProblem(
        base.per_sample_loss,
        base.upper_loss,
        {k: t.requires_grad_(p.requires_grad) for k, t, p in zip(base.names, theta_hat, base.tensors, strict=True)},
    )
    stationarity = _stationarity(strategy, base, at, weights)
    note = f", at θ* (|∇|={stationarity:.1e})"
    if stationarity > 1e-8:
        note += " NOT SOLVED: singular Hessian? try damping > 0"

    def implicit_objective(w: Tensor) -> Tensor:
        return strategy.objective(base, w, theta_hat)

    return at, implicit_objective, note


def format_report(rows: Sequence[CheckRow]) -> str:
    """A plain-text table of check rows."""
    head = f"{'strategy':<62} {'rel.err':>9} {'cosine':>9} {'|g|':>10} {'ms':>8}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = "ok" if r.passed else f"FAIL (tol {r.tolerance:g})"
        lines.append(
            f"{r.strategy:<62} {r.rel_error:9.2e} {r.cosine:9.6f} {r.analytic_norm:10.3e} "
            f"{1e3 * r.seconds:8.1f}  {verdict}  [{r.note}]"
        )
    return "\n".join(lines)
