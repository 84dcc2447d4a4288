"""bilevel.implicit_hypergradient: closed forms on quadratics, finite differences on a non-quadratic problem,
torchopt's implicit differentiation as an independent oracle, and the per-sample-weight special case."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import bilevel as B
from bilevel import _autodiff as ad


@pytest.fixture(autouse=True, scope="module")
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())  # both detached by the callers


class Quadratic:
    """L(θ, ψ) = ½ θᵀAθ − θᵀBψ,  F(θ, ψ) = ½‖θ − c‖² + dᵀψ + ½‖ψ‖²,  θ = (M[2,2], v[2]) flattened.

    θ*(ψ) = A⁻¹Bψ and dF/dψ = d + ψ + BᵀA⁻¹(θ* − c) for any invertible symmetric A (a saddle too).
    """

    def __init__(self, eigs: list[float], k: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = len(eigs)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        self.A = q @ torch.diag(torch.tensor(eigs)) @ q.T
        self.B = torch.randn(n, k, generator=g)
        self.c = torch.randn(n, generator=g)
        self.d = torch.randn(k, generator=g)
        self.psi = torch.randn(k, generator=g)

    @staticmethod
    def flat(th: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([th["M"].reshape(-1), th["v"]])

    def lower(self, th, psi):
        t = self.flat(th)
        return 0.5 * t @ self.A @ t - t @ self.B @ psi

    def upper(self, th, psi):
        t = self.flat(th)
        return 0.5 * (t - self.c).square().sum() + self.d @ psi + 0.5 * psi.square().sum()

    def theta_star(self) -> dict[str, torch.Tensor]:
        t = torch.linalg.solve(self.A, self.B @ self.psi)
        return {"M": t[:4].reshape(2, 2).requires_grad_(True), "v": t[4:].clone().requires_grad_(True)}

    def closed_form(self, solve) -> torch.Tensor:
        t = torch.linalg.solve(self.A, self.B @ self.psi)
        return self.d + self.psi + self.B.T @ solve(t - self.c)


def test_quadratic_closed_form_cg_and_normal_cg():
    q = Quadratic([0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    exact = q.closed_form(lambda r: torch.linalg.solve(q.A, r))
    th = q.theta_star()
    g_cg, info = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, iters=6, return_info=True)
    assert rel(g_cg, exact) < 1e-10
    assert info.hvps <= 6 and float(info.residual) < 1e-8 * float(info.rhs_norm)
    assert float(info.lower_grad_norm) < 1e-10
    g_n = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, solver="normal_cg", iters=50)
    assert rel(g_n, exact) < 1e-8
    # The caller's tensors are not touched.
    assert th["M"].grad is None and q.psi.grad is None and not q.psi.requires_grad


def test_indefinite_hessian_needs_normal_cg():
    """At a saddle point of L, CG on H breaks down (pᵀHp ≤ 0) while CG on the normal equations is exact."""
    q = Quadratic([-3.0, -1.0, 0.7, 1.0, 2.0, 4.0], seed=1)
    exact = q.closed_form(lambda r: torch.linalg.solve(q.A, r))
    th = q.theta_star()
    g_cg = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, iters=50)
    g_n = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, solver="normal_cg", iters=60)
    assert rel(g_n, exact) < 1e-8
    assert rel(g_cg, exact) > 1e-2


def test_damping_is_the_stated_system():
    q = Quadratic([0.5, 1.0, 2.0, 3.0, 5.0, 8.0], seed=2)
    th, lam, eye = q.theta_star(), 0.3, torch.eye(6)
    g = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, iters=6, damping=lam)
    assert rel(g, q.closed_form(lambda r: torch.linalg.solve(q.A + lam * eye, r))) < 1e-10
    g = B.implicit_hypergradient(q.lower, q.upper, th, q.psi, solver="normal_cg", iters=60, damping=lam)
    assert rel(g, q.closed_form(lambda r: torch.linalg.solve(q.A @ q.A + lam * eye, q.A @ r))) < 1e-8


def test_least_residual_iterate_is_returned():
    """On a badly conditioned normal system the last CG iterate need not be the best; ours returns the best."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g))
    a = q @ torch.diag(torch.logspace(-4, 2, 30)) @ q.T
    a = a @ a  # condition number 1e12
    b = torch.randn(30, generator=g)
    last = ad.cg_solve(lambda v: a @ v, b, iters=40)
    best = ad.cg_solve(lambda v: a @ v, b, iters=40, least_residual=True)
    res = lambda x: float((b - a @ x).norm())  # noqa: E731
    assert float(best.residual) <= float(last.residual)
    # the returned residual is the recursion's, and of the returned iterate (up to round-off)
    assert abs(res(best.x) - float(best.residual.sqrt())) < 1e-3 * res(best.x) + 1e-12
    history = [float(ad.cg_solve(lambda v: a @ v, b, iters=j).residual) for j in range(1, 41)]
    assert float(best.residual) == pytest.approx(min([float(b @ b), *history]), rel=1e-9)


# --- a non-quadratic problem: logistic regression with per-group L2 strengths ψ (log scale) ---------------------


def _logistic(seed: int = 0, n: int = 80, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(n, dim, generator=g), torch.randn(n // 2, dim, generator=g)
    w_true = torch.randn(dim, generator=g)
    y = (x @ w_true + 0.5 * torch.randn(n, generator=g) > 0).double()
    yv = (xv @ w_true > 0).double()
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def lower(th, psi):
        decay = psi.exp()[groups]
        return bce(x @ th["w"] + th["b"], y) + 0.5 * (decay * th["w"].square()).sum() + 0.05 * th["b"].square()

    def upper(th, psi):
        return bce(xv @ th["w"] + th["b"], yv) + 0.01 * psi.square().sum()

    def solve(psi):
        flat = torch.zeros(dim + 1)
        for _ in range(30):  # Newton on a strictly convex objective: to machine precision

            def f(v, psi=psi):
                return lower({"w": v[:dim], "b": v[dim]}, psi)

            grad = torch.func.grad(f)(flat)
            if grad.norm() < 1e-13:
                break
            flat = flat - torch.linalg.solve(torch.func.hessian(f)(flat), grad)
        return {"w": flat[:dim].clone().requires_grad_(True), "b": flat[dim].clone().requires_grad_(True)}

    psi = torch.tensor([-1.0, 0.5, -2.0])
    return lower, upper, solve, psi


def test_non_quadratic_against_finite_differences():
    lower, upper, solve, psi = _logistic()
    th = solve(psi)

    def total(p):
        return upper(solve(p), p).detach()

    h = 1e-5
    fd = torch.stack([(total(psi + h * e) - total(psi - h * e)) / (2 * h) for e in torch.eye(3)])
    for solver, iters in (("cg", 20), ("normal_cg", 100)):
        g = B.implicit_hypergradient(lower, upper, th, psi, solver=solver, iters=iters)
        assert rel(g, fd) < 1e-6, (solver, g, fd)


def test_against_torchopt_implicit_differentiation():
    torchopt = pytest.importorskip("torchopt")
    lower, upper, solve, psi = _logistic(seed=1)
    th = solve(psi)
    names = list(th)

    def optimality(params, meta):  # ∇θL(θ, ψ) = 0 at the solution, written with torch.func as torchopt needs
        return torch.func.grad(lambda ps: lower(dict(zip(names, ps, strict=True)), meta))(params)

    for solver, oracle, lam in (
        ("cg", torchopt.linear_solve.solve_cg(maxiter=50, rtol=1e-14, ridge=0.2), 0.2),
        ("normal_cg", torchopt.linear_solve.solve_normal_cg(maxiter=200, rtol=1e-14, ridge=0.05), 0.05),
    ):

        @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=oracle)
        def solver_fn(params, meta):
            return tuple(th[k].detach().clone() for k in names)

        meta = psi.clone().requires_grad_(True)
        params = solver_fn(tuple(torch.zeros_like(th[k]) for k in names), meta)
        (ref,) = torch.autograd.grad(upper(dict(zip(names, params, strict=True)), meta), meta)
        ours = B.implicit_hypergradient(lower, upper, th, psi, solver=solver, iters=200, damping=lam)
        assert rel(ours, ref) < 1e-8, (solver, ours, ref)


def test_per_sample_weights_agree_with_the_implicit_strategy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x, y, xm, ym = torch.randn(40, 4), torch.randn(40), torch.randn(20, 4), torch.randn(20)
    params = {k: v.detach() for k, v in net.named_parameters()}
    w = 0.5 + torch.rand(40)

    def psl(p):
        return (functional_call(net, p, (x,)).squeeze(-1) - y).square()

    def up(p):
        return (functional_call(net, p, (xm,)).squeeze(-1) - ym).square().mean()

    params = {k: v.requires_grad_(True) for k, v in params.items()}
    for lam in (0.0, 0.5):
        ref = B.hypergradient(B.Implicit("cg", iters=30, damping=lam, tol=0.0), psl, up, params, w)
        ours = B.implicit_hypergradient(
            lambda th, ww: (ww * psl(th)).mean(), lambda th, ww: up(th), params, w, iters=30, damping=lam, tol=0.0
        )
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_psi_only_in_one_level():
    q = Quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], seed=4)
    th = q.theta_star()
    # ψ only in F: the hypergradient is ∂F/∂ψ.
    g = B.implicit_hypergradient(lambda t, p: 0.5 * (q.flat(t) ** 2).sum(), q.upper, th, q.psi)
    torch.testing.assert_close(g, q.d + q.psi)
    # ψ only in L: no direct term.
    g = B.implicit_hypergradient(q.lower, lambda t, p: 0.5 * (q.flat(t) - q.c).square().sum(), th, q.psi, iters=6)
    exact = q.B.T @ torch.linalg.solve(q.A, torch.linalg.solve(q.A, q.B @ q.psi) - q.c)
    assert rel(g, exact) < 1e-10


def test_normal_cg_spends_two_hvps_per_iteration():
    q = Quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], seed=5)
    _, info = B.implicit_hypergradient(
        q.lower, q.upper, q.theta_star(), q.psi, solver="normal_cg", iters=4, tol=0.0, return_info=True
    )
    assert info.hvps == 1 + 2 * 4


def test_bad_input_raises():
    q = Quadratic([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    th = q.theta_star()
    call = B.implicit_hypergradient
    with pytest.raises(ValueError, match="solver"):
        call(q.lower, q.upper, th, q.psi, solver="lu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iters"):
        call(q.lower, q.upper, th, q.psi, iters=0)
    with pytest.raises(ValueError, match="damping"):
        call(q.lower, q.upper, th, q.psi, damping=-1.0)
    with pytest.raises(ValueError, match="psi"):
        call(q.lower, q.upper, th, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="theta is empty"):
        call(q.lower, q.upper, {}, q.psi)
    with pytest.raises(ValueError, match="requires grad"):
        call(q.lower, q.upper, {k: v.detach() for k, v in th.items()}, q.psi)
    with pytest.raises(ValueError, match=r"does not depend on theta\['extra'\]"):
        call(q.lower, q.upper, {**th, "extra": torch.zeros(2, requires_grad=True)}, q.psi)
    with pytest.raises(ValueError, match="linear"):
        call(lambda t, p: q.flat(t) @ q.c, q.upper, th, q.psi)
