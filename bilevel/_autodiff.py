"""Autodiff primitives shared by the hypergradient strategies.

Everything here works on *lists* of parameter tensors (the values of a ``params`` dict, in a fixed order) so
that the strategies never touch ``nn.Module`` internals.  Central object: ``LowerPoint``, the lower-level
objective ``L_low(θ, w) = (1/N) Σ_i w_i ℓ_i(θ)`` evaluated at one point θ with its gradient kept differentiable,
from which every second-order product the strategies need is one more backward pass:

* ``d/dw ⟨∇θ L_low, v⟩ = (1/N) J v`` with ``J = ∂ℓ/∂θ`` (the *mixed* term ∂²L_low/∂θ∂w applied to ``v``),
* ``d/dθ ⟨∇θ L_low, v⟩ = H v`` with ``H = ∇²θ L_low`` (Hessian-vector product).

Both come out of a single double-backward, which is why a mixed product costs about one extra backward pass
and never a second model forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

TensorList = list[Tensor]


def grads(
    output: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> TensorList:
    """``torch.autograd.grad`` that returns zeros (not ``None``) for inputs ``output`` does not depend on."""
    needs = [p for p in inputs if p.requires_grad]
    if not output.requires_grad or not needs:
        return [torch.zeros_like(p) for p in inputs]
    found = torch.autograd.grad(output, needs, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    it = iter(found)
    out: TensorList = []
    for p in inputs:
        g = next(it) if p.requires_grad else None
        out.append(torch.zeros_like(p) if g is None else g)
    return out


def grads_used(
    output: Tensor, inputs: Sequence[Tensor], *, retain_graph: bool | None = None
) -> tuple[TensorList, list[bool]]:
    """``grads`` (zeros for unused inputs) and, per input, whether ``output`` depends on it at all (autograd
    found a path), so that callers can leave structurally zero directions out of second-order products."""
    needs = [p for p in inputs if p.requires_grad]
    if not output.requires_grad or not needs:
        return [torch.zeros_like(p) for p in inputs], [False] * len(inputs)
    found = iter(torch.autograd.grad(output, needs, retain_graph=retain_graph, allow_unused=True))
    out: TensorList = []
    used: list[bool] = []
    for p in inputs:
        g = next(found) if p.requires_grad else None
        out.append(torch.zeros_like(p) if g is None else g)
        used.append(g is not None)
    return out, used


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """Σ_k ⟨x_k, y_k⟩ over two tensor lists of equal shapes, as a 0-dim tensor."""
    return sum(
        ((x * y).sum() for x, y in zip(xs, ys, strict=True)),
        start=torch.zeros((), dtype=xs[0].dtype, device=xs[0].device),
    )


def axpy(a: float, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> TensorList:
    """``y + a·x`` elementwise over tensor lists."""
    return [y + a * x for x, y in zip(xs, ys, strict=True)]


def lower_objective(loss: Tensor, weights: Tensor) -> Tensor:
    """``L_low = (1/N) Σ_i w_i ℓ_i`` for ``loss`` and ``weights`` of one shape (N = numel).

    Raises:
        ValueError: if the shapes differ (a silent broadcast here would weight the wrong samples).
    """
    if loss.shape != weights.shape:
        raise ValueError(
            f"per-sample loss has shape {tuple(loss.shape)} but weights have shape {tuple(weights.shape)}; "
            "they must match exactly (one weight per per-sample loss term)"
        )
    return (weights * loss).mean()


class LowerPoint:
    """``L_low(θ, w)`` at one θ, with ``∇θ L_low`` kept in the graph for mixed and Hessian-vector products.

    Args:
        params: θ as a list of tensors that ``loss`` was computed from (leaves or not).
        loss: per-sample losses ℓ(θ), any shape, same as ``weights``; must carry a graph to ``params``.
        weights: w, a leaf tensor with ``requires_grad=True`` (the strategies create it).
    """

    def __init__(self, params: Sequence[Tensor], loss: Tensor, weights: Tensor) -> None:
        self.params = list(params)
        self.weights = weights
        self.value = lower_objective(loss, weights)
        # ∇θ L_low(θ, w), differentiable w.r.t. θ and w (create_graph): the model's own gradient as a by-product.
        self.grad = grads(self.value, self.params, create_graph=True, retain_graph=True)

    def products(
        self, v: Sequence[Tensor | None], *, hvp: bool, retain_graph: bool = True
    ) -> tuple[Tensor, TensorList]:
        """Return ``((1/N) J v, H v)`` for a direction ``v`` in θ-space (``H v`` only if ``hvp``, else []).

        An entry of ``v`` may be None: a structurally zero component (e.g. parameters the upper loss does not depend
        on), left out of ⟨∇θ L_low, v⟩ so that the double backward never visits the nodes that computed its
        gradient — same result, less work."""
        pairs = [(g, x.detach()) for g, x in zip(self.grad, v, strict=True) if x is not None]
        s = dot([g for g, _ in pairs], [x for _, x in pairs]) if pairs else self.value.new_zeros(())
        inputs = [self.weights, *self.params] if hvp else [self.weights]
        out = grads(s, inputs, retain_graph=retain_graph)
        return out[0], out[1:]

    def mixed(self, v: Sequence[Tensor | None], *, retain_graph: bool = True) -> Tensor:
        """``d/dw ⟨∇θ L_low(θ, w), v⟩ = (1/N) J v`` — shape of ``weights``."""
        return self.products(v, hvp=False, retain_graph=retain_graph)[0]

    def hvp(self, v: Sequence[Tensor]) -> TensorList:
        """``∇²θ L_low · v`` by double backward (the graph is kept for further products)."""
        s = dot(self.grad, [x.detach() for x in v])
        return grads(s, self.params, retain_graph=True)


def flatten(xs: Sequence[Tensor]) -> Tensor:
    """Concatenate a tensor list into one flat vector."""
    return torch.cat([x.reshape(-1) for x in xs])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> TensorList:
    """Inverse of ``flatten`` for tensors shaped like ``like``."""
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[i : i + n].view_as(p))
        i += n
    return out


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, *, iters: int, tol: float = 0.0) -> Tensor:
    """Solve ``A x = b`` for symmetric positive (semi-)definite ``A`` by conjugate gradients from x₀ = 0.

    Hestenes & Stiefel (1952).  ``matvec`` maps a flat vector to ``A`` times it; ``iters`` bounds the number of
    matrix-vector products; stops early when ‖r‖ ≤ tol·‖b‖.
    """
    return cg_solve(matvec, b, iters=iters, tol=tol).x


class CGResult(NamedTuple):
    """What ``cg_solve`` returns: the iterate ``x``, its squared residual ‖b − A x‖² as CG's recursion
    tracks it (0-dim tensor) and the number of matrix-vector products spent."""

    x: Tensor
    residual: Tensor
    matvecs: int


def cg_solve(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    iters: int,
    tol: float = 0.0,
    least_residual: bool = False,
) -> CGResult:
    """Conjugate gradients on ``A x = b`` from x₀ = 0 (Hestenes & Stiefel 1952), with its residual.

    Stops after ``iters`` products, when ‖r‖ ≤ tol·‖b‖, or when pᵀAp ≤ 0 (``A`` not positive definite along p).
    ``least_residual=True`` returns the iterate of least recursive residual among x₀, …, x_J instead of the last
    one (what AdMRL's code does: CG on an ill-conditioned normal system need not decrease ‖r‖ monotonically).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r.dot(r)
    best_x, best_rs = x, rs
    stop = (tol * b.norm()) ** 2
    n = 0
    for _ in range(iters):
        if rs <= stop or rs == 0:
            break
        ap = matvec(p)
        n += 1
        pap = p.dot(ap)
        if pap <= 0:  # A not positive definite along p: stop with the current iterate
            break
        alpha = rs / pap
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = r.dot(r)
        p = r + (rs_new / rs) * p
        rs = rs_new
        if not least_residual or rs < best_rs:
            best_x, best_rs = x, rs
    return CGResult(best_x, best_rs, n)


def neumann(matvec: Callable[[Tensor], Tensor], b: Tensor, *, iters: int, alpha: float) -> Tensor:
    """Approximate ``A⁻¹ b ≈ α Σ_{j=0}^{J} (I − αA)^j b`` (truncated Neumann series, J = ``iters``).

    Converges when the spectral radius of ``I − αA`` is below 1, i.e. 0 < α < 2/λ_max(A) for SPD ``A``
    (Lorraine et al. 2020, "Optimizing millions of hyperparameters by implicit differentiation", eq. 5).
    """
    p = b.clone()
    x = b.clone()
    for _ in range(iters):
        p = p - alpha * matvec(p)
        x = x + p
    return alpha * x


def minimize(
    f: Callable[[list[Tensor]], Tensor], x0: Sequence[Tensor], *, iters: int = 100, newton_max_params: int = 4000
) -> list[Tensor]:
    """Minimise a smooth scalar ``f`` of a tensor list to near machine precision, starting from ``x0``.

    L-BFGS with a strong-Wolfe line search (``iters`` iterations at most), then — when the problem has at most
    ``newton_max_params`` entries — Newton steps with the dense Hessian (forward-over-reverse), taken only where
    the Hessian is positive definite and with step halving until the gradient norm shrinks.  Used by the
    finite-difference checks of the implicit hypergradient, whose accuracy is bounded by how well θ* is solved.
    Returns detached tensors.
    """
    xs = [x.detach().clone().requires_grad_(True) for x in x0]
    opt = torch.optim.LBFGS(
        xs,
        lr=1.0,
        max_iter=iters,
        tolerance_grad=1e-12,
        tolerance_change=1e-20,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        value = f(xs)
        value.backward()
        return value

    opt.step(closure)
    x = flatten([t.detach() for t in xs])
    if x.numel() <= newton_max_params:

        def flat_f(v: Tensor) -> Tensor:
            return f(unflatten(v, xs))

        grad_f = torch.func.grad(flat_f)
        hess_f = torch.func.jacfwd(grad_f)
        g = grad_f(x)
        for _ in range(30):
            if g.abs().max() < 1e-13:
                break
            evals, evecs = torch.linalg.eigh(hess_f(x))
            if evals.min() <= 1e-12 * evals.abs().max():
                break  # not a strict local minimum: Newton is undefined here
            step = evecs @ ((evecs.T @ g) / evals)
            for _ in range(20):
                candidate = x - step
                g_new = grad_f(candidate)
                if g_new.norm() < g.norm():
                    x, g = candidate, g_new
                    break
                step = step / 2
            else:
                break
    return [t.detach() for t in unflatten(x, xs)]
