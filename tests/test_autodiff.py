"""Linear solvers and second-order products of the core, against dense linear algebra."""

import pytest
import torch

from bilevel import _autodiff as ad


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(n, dtype=torch.float64)


def test_conjugate_gradient_solves_spd_system():
    a = _spd(12)
    b = torch.randn(12, dtype=torch.float64)
    x = ad.conjugate_gradient(lambda v: a @ v, b, iters=100)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


def test_conjugate_gradient_is_truncated_by_iters():
    a = _spd(30)
    b = torch.randn(30, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    err1 = (ad.conjugate_gradient(lambda v: a @ v, b, iters=2) - exact).norm()
    err2 = (ad.conjugate_gradient(lambda v: a @ v, b, iters=10) - exact).norm()
    assert err2 < err1


def test_neumann_series_converges_for_small_step():
    a = _spd(8)
    b = torch.randn(8, dtype=torch.float64)
    alpha = 1.0 / float(torch.linalg.eigvalsh(a).max())
    x = ad.neumann(lambda v: a @ v, b, iters=20000, alpha=alpha)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)


def test_lower_point_products_match_dense_jacobian_and_hessian():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    theta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, generator=g, dtype=torch.float64).requires_grad_(True)

    def loss_fn(t):
        return torch.sin(x @ t) ** 2 + (t**4).sum() / 10

    point = ad.LowerPoint([theta], loss_fn(theta), w)
    v = torch.randn(3, generator=g, dtype=torch.float64)
    mixed, (hv,) = point.products([v], hvp=True)
    jac = torch.autograd.functional.jacobian(loss_fn, theta.detach())  # [N, P]
    hess = torch.autograd.functional.hessian(lambda t: (w.detach() * loss_fn(t)).mean(), theta.detach())
    torch.testing.assert_close(mixed, jac @ v / 7)
    torch.testing.assert_close(hv, hess @ v)
    torch.testing.assert_close(point.grad[0], jac.T @ w.detach() / 7)


def test_lower_objective_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must match exactly"):
        ad.lower_objective(torch.ones(2, 3), torch.ones(6))


def test_minimize_reaches_machine_precision_on_convex_problem():
    a = _spd(6)
    b = torch.randn(6, dtype=torch.float64)
    (x,) = ad.minimize(lambda xs: 0.5 * xs[0] @ a @ xs[0] - b @ xs[0], [torch.zeros(6, dtype=torch.float64)])
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-12, atol=1e-12)


def test_grads_used_and_products_that_skip_structurally_zero_directions():
    torch.manual_seed(0)
    d = torch.float64
    used_p = torch.randn(3, dtype=d, requires_grad=True)
    unused_p = torch.randn(2, dtype=d, requires_grad=True)
    frozen = torch.randn(2, dtype=d)
    upper = (used_p**3).sum()
    a, used = ad.grads_used(upper, [used_p, unused_p, frozen], retain_graph=True)
    assert used == [True, False, False]
    torch.testing.assert_close(a[0], 3 * used_p.detach() ** 2)
    assert torch.equal(a[1], torch.zeros(2, dtype=d)) and torch.equal(a[2], torch.zeros(2, dtype=d))
    # per-sample losses that depend on both parameters: leaving the zero direction out changes nothing
    x = torch.randn(4, 3, dtype=d)
    loss = torch.tanh(x @ used_p) * (1 + unused_p.sum() ** 2)
    w = torch.rand(4, dtype=d, requires_grad=True)
    full = ad.LowerPoint([used_p, unused_p], loss, w).mixed([a[0], a[1]])
    skipped = ad.LowerPoint([used_p, unused_p], loss, w).mixed([a[0], None])
    torch.testing.assert_close(skipped, full, rtol=0, atol=0)
    jac = torch.autograd.functional.jacobian(lambda p: torch.tanh(x @ p) * (1 + unused_p.detach().sum() ** 2), used_p)
    torch.testing.assert_close(full, jac @ a[0] / 4)  # (1/N) J a
    none = ad.LowerPoint([used_p, unused_p], loss, w).mixed([None, None])
    assert torch.equal(none, torch.zeros(4, dtype=d))
