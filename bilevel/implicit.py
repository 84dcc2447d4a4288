"""Implicit hypergradients for a general outer variable ψ (not only per-sample weights).

The lower level is ``θ*(ψ) = argmin_θ L(θ, ψ)`` and the outer objective is ``F(θ*(ψ), ψ)``.  Where
``∇θ L(θ*, ψ) = 0`` and ``H = ∇²θθ L`` is invertible, the implicit function theorem gives
``dθ*/dψ = −H⁻¹ ∂²L/∂θ∂ψ`` and hence (AdMRL, Lin et al. 2020, eq. 5–6; Lorraine et al. 2020, eq. 2–3):

    dF/dψ = ∂F/∂ψ − (∂²L/∂ψ∂θ) H⁻¹ ∇θF

computed here matrix-free: one adjoint solve ``H x = ∇θF`` by Hessian-vector products, then one mixed product
``∂/∂ψ ⟨∇θL, x⟩``.  AdMRL's code solves H X = ∂²L/∂θ∂ψ instead, one system per coordinate of ψ; the adjoint form
is the same quantity for any ψ with a single solve.  Per-sample reweighting is the special case
``L(θ, w) = mean(w · ℓ(θ))`` (``bilevel.Implicit`` computes exactly that).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple, overload

import torch
from torch import Tensor

from bilevel import _autodiff as ad

#: ``(theta, psi) -> Tensor[]``: a lower objective L or an outer objective F.
Objective = Callable[[dict[str, Tensor], Tensor], Tensor]

SOLVERS = ("cg", "normal_cg")


class ImplicitInfo(NamedTuple):
    """Diagnostics of one ``implicit_hypergradient`` call.

    Attributes:
        residual: ‖rhs − A x‖ of the linear system actually solved (``H + λI`` for ``cg``,
            ``H² + λI`` for ``normal_cg``), from CG's recursion; a 0-dim tensor.
        rhs_norm: ‖rhs‖ of that system (so ``residual / rhs_norm`` is the relative residual).
        hvps: Hessian-vector products spent (``normal_cg`` spends two per CG iteration).
        lower_grad_norm: ‖∇θ L(θ, ψ)‖ at the given θ: how far θ is from the stationary point the theorem assumes.
    """

    residual: Tensor
    rhs_norm: Tensor
    hvps: int
    lower_grad_norm: Tensor


@overload
def implicit_hypergradient(
    lower: Objective,
    upper: Objective,
    theta: Mapping[str, Tensor],
    psi: Tensor,
    *,
    solver: Literal["cg", "normal_cg"] = ...,
    iters: int = ...,
    damping: float = ...,
    tol: float = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def implicit_hypergradient(
    lower: Objective,
    upper: Objective,
    theta: Mapping[str, Tensor],
    psi: Tensor,
    *,
    solver: Literal["cg", "normal_cg"] = ...,
    iters: int = ...,
    damping: float = ...,
    tol: float = ...,
    return_info: Literal[True],
) -> tuple[Tensor, ImplicitInfo]: ...


def implicit_hypergradient(
    lower: Objective,
    upper: Objective,
    theta: Mapping[str, Tensor],
    psi: Tensor,
    *,
    solver: Literal["cg", "normal_cg"] = "cg",
    iters: int = 100,
    damping: float = 0.0,
    tol: float = 1e-10,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, ImplicitInfo]:
    """dF/dψ at θ ≈ argmin_θ L(θ, ψ) by the implicit function theorem, from Hessian-vector products only.

    ``dF/dψ = ∂F/∂ψ − (∂²L/∂ψ∂θ) x`` where x solves (AdMRL, Lin et al. 2020, eq. 5–6):

    * ``solver="cg"``: ``(H + λI) x = ∇θF`` by conjugate gradients — for H positive definite (a minimum).
    * ``solver="normal_cg"``: ``(HᵀH + λI) x = Hᵀ∇θF`` (H is symmetric, so Hᵀv = Hv) by conjugate gradients,
      returning the iterate of least residual — AdMRL's remedy for an indefinite H (its code: λ = 0.1, 200
      iterations).  Costs two Hessian-vector products per iteration.

    λ = ``damping``.  Whether the caller ascends or descends F is its own business: this returns the gradient.

    Args:
        lower: ``(theta, psi) -> Tensor[]``, the lower objective L (a non-scalar result is summed).
        upper: ``(theta, psi) -> Tensor[]``, the outer objective F (a non-scalar result is summed); it may
            ignore ψ (then ∂F/∂ψ = 0) or θ.
        theta: θ, name → tensor, at (approximately) a stationary point of L(·, ψ).  Tensors with
            ``requires_grad=False`` are constants (not part of the solve).  Not modified.
        psi: ψ, a floating tensor of any shape.  Not modified.
        iters: the most CG iterations (≥ 1).
        damping: λ ≥ 0.
        tol: stop when the residual is below ``tol`` times the right-hand side's norm.
        return_info: also return an ``ImplicitInfo``.

    Returns:
        dF/dψ, a detached tensor of ``psi``'s shape (and an ``ImplicitInfo`` if ``return_info``).

    Raises:
        ValueError: on an unknown ``solver``, ``iters < 1``, ``damping < 0``, an empty ``theta`` or one with no
            tensor requiring grad, a non-floating ``psi``, or a trainable θ tensor that L does not depend on
            (H would be singular there).
    """
    th, train_names, ps = _inputs(theta, psi, solver, iters, damping)
    train = [th[k] for k in train_names]

    # ∇θL with its graph kept: every H·v below and the mixed product are one more backward through it.
    lower_value = lower(th, ps).sum()
    lower_grad = torch.autograd.grad(lower_value, train, create_graph=True, allow_unused=True)
    unused = [k for k, g in zip(train_names, lower_grad, strict=True) if g is None]
    if unused:
        raise ValueError(f"the lower objective does not depend on theta[{unused[0]!r}]: H is singular there")
    lower_grad_flat = ad.flatten(lower_grad)

    upper_value = upper(th, ps).sum()
    upper_grads = ad.grads(upper_value, [*train, ps])
    b = ad.flatten(upper_grads[:-1]).detach()
    direct = upper_grads[-1].detach()

    result, rhs, hvps = _solve(list(lower_grad), train, b, solver=solver, iters=iters, damping=damping, tol=tol)
    x = result.x.detach()
    # ∂/∂ψ ⟨∇θL(θ, ψ), x⟩ = (∂²L/∂ψ∂θ) x: the mixed term of eq. 6, one backward through ∇θL.
    (mixed,) = ad.grads(lower_grad_flat.dot(x), [ps])
    grad = (direct - mixed).detach()
    if not return_info:
        return grad
    info = ImplicitInfo(result.residual.sqrt(), rhs.norm(), hvps, lower_grad_flat.detach().norm())
    return grad, info


def _inputs(
    theta: Mapping[str, Tensor], psi: Tensor, solver: str, iters: int, damping: float
) -> tuple[dict[str, Tensor], list[str], Tensor]:
    """The arguments of ``implicit_hypergradient`` checked, and θ and ψ as fresh leaves: (θ by name, the names
    of its trainable tensors, ψ)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if not isinstance(psi, Tensor) or not psi.is_floating_point():
        raise ValueError(f"psi must be a floating-point Tensor, got {type(psi).__name__}")
    if not theta:
        raise ValueError("theta is empty: pass θ as a dict name -> tensor, e.g. dict(model.named_parameters())")
    th = {k: v.detach().requires_grad_(v.requires_grad) for k, v in theta.items()}
    train_names = [k for k, v in th.items() if v.requires_grad]
    if not train_names:
        raise ValueError("no tensor in theta requires grad: θ must contain the trainable parameters")
    return th, train_names, psi.detach().requires_grad_(True)


def _solve(
    lower_grad: list[Tensor], train: list[Tensor], b: Tensor, *, solver: str, iters: int, damping: float, tol: float
) -> tuple[ad.CGResult, Tensor, int]:
    """x of ``(H + λI) x = b`` (``cg``) or ``(HᵀH + λI) x = H b`` (``normal_cg``, the least-residual iterate) by
    conjugate gradients on Hessian-vector products through ``lower_grad`` = ∇θL (its graph kept): the solver's
    result, the right-hand side and the number of H·v products."""
    # Entries of ∇θL that are constant in θ (L linear in that tensor) have no graph: they add nothing to H·v.
    live = [i for i, g in enumerate(lower_grad) if g.requires_grad]
    if not live:
        raise ValueError("the lower objective is linear in theta: H = 0, nothing to solve")
    hvps = 0

    def hvp(v: Tensor) -> Tensor:
        nonlocal hvps
        hvps += 1
        vs = ad.unflatten(v, train)
        out = torch.autograd.grad(
            [lower_grad[i] for i in live], train, [vs[i] for i in live], retain_graph=True, allow_unused=True
        )
        return ad.flatten([torch.zeros_like(t) if g is None else g for t, g in zip(train, out, strict=True)])

    if solver == "cg":
        result = ad.cg_solve(lambda v: hvp(v) + damping * v, b, iters=iters, tol=tol)
        return result, b, hvps
    rhs = hvp(b)
    result = ad.cg_solve(lambda v: hvp(hvp(v)) + damping * v, rhs, iters=iters, tol=tol, least_residual=True)
    return result, rhs, hvps
