"""Hypergradient strategies against finite differences, closed forms and independent implementations."""

from __future__ import annotations

import pytest
import torch
from problems import ALL, D, linear_regression, logistic_regression, mlp
from torch.func import functional_call

import bilevel as B
from bilevel.check import finite_difference_gradient


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _grad(f, params):
    names = list(params)
    leaves = [params[k].detach().requires_grad_(True) for k in names]
    out = torch.autograd.grad(f(dict(zip(names, leaves, strict=True))), leaves, allow_unused=True)
    return {k: torch.zeros_like(x) if g is None else g for k, x, g in zip(names, leaves, out, strict=True)}


def unrolled_upper(per_sample_loss, upper_loss, params, lr, steps):
    """Independent target: w ↦ L_up(θ_K(w)) by K plain SGD steps, first-order autograd only."""

    def f(w):
        p = {k: v.detach() for k, v in params.items()}
        for _ in range(steps):
            g = _grad(lambda q: (w * per_sample_loss(q)).mean(), p)
            p = {k: p[k] - lr * g[k] for k in p}
        return upper_loss(p).detach()

    return f


def linearised_upper(per_sample_loss, upper_loss, params, lr):
    """Independent target for TEMPO eq. 9: w ↦ ⟨∇L_up(θ), θ − η ∇θ L_low(θ, w)⟩ (θ fixed)."""
    a = _grad(upper_loss, params)

    def f(w):
        g = _grad(lambda q: (w * per_sample_loss(q)).mean(), params)
        return -lr * sum((a[k] * g[k]).sum() for k in a)

    return f


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_same_state_matches_finite_differences(name, method):
    psl, up, params, w = ALL[name]()
    g = B.hypergradient(B.SameState(0.1, method=method), psl, up, params, w)
    fd = finite_difference_gradient(linearised_upper(psl, up, params, 0.1), w, eps=1e-5)
    assert g.shape == w.shape
    assert rel(g, fd) <= 1e-5


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("steps", [1, 3])
def test_lookahead_matches_finite_differences(name, steps):
    psl, up, params, w = ALL[name]()
    g = B.hypergradient(B.Lookahead(0.1, steps), psl, up, params, w)
    fd = finite_difference_gradient(unrolled_upper(psl, up, params, 0.1, steps), w, eps=1e-5)
    assert rel(g, fd) <= 1e-5


def test_same_state_equals_per_sample_gradient_formula():
    """Independent implementation of eq. 9 from the full per-sample Jacobian (torch.func.jacrev)."""
    psl, up, params, w = mlp()
    names = list(params)
    jac = torch.func.jacrev(psl)({k: v.detach() for k, v in params.items()})  # name -> [N, *shape]
    a = _grad(up, params)
    dots = sum((jac[k].flatten(1) * a[k].flatten()).sum(1) for k in names)
    expected = -0.3 / w.numel() * dots
    g = B.hypergradient(B.SameState(0.3), psl, up, params, w)
    assert rel(g, expected) <= 1e-12


def test_same_state_jvp_equals_double_backward():
    psl, up, params, w = ALL["gru"]()
    g1 = B.hypergradient(B.SameState(0.1, method="double_backward"), psl, up, params, w)
    g2 = B.hypergradient(B.SameState(0.1, method="jvp"), psl, up, params, w)
    g3 = B.hypergradient(B.SameState(0.1), psl, up, params, w)  # auto: JVP in the functional API
    assert rel(g2, g1) <= 1e-12 and rel(g3, g1) <= 1e-12


@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_same_state_when_the_upper_loss_ignores_some_parameters(method):
    """A head that ℓ uses and L_up does not (a world model's decoder under V-VAML): both routes leave it out of the
    mixed product (no tangent, no double-backward nodes) and still match finite differences of eq. 9."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, dtype=D), torch.randn(10, dtype=D)
    params = {
        "w1": torch.randn(3, 6, dtype=D, requires_grad=True),
        "head": torch.randn(6, dtype=D, requires_grad=True),
        "probe": torch.randn(6, dtype=D, requires_grad=True),
    }

    def psl(p):
        h = torch.tanh(x @ p["w1"])
        return (h @ p["head"] - y) ** 2 + 0.1 * (h @ p["probe"]) ** 2

    def up(p):
        return (torch.tanh(x[:4] @ p["w1"]) @ params["probe"].detach()).pow(2).mean()

    w = torch.rand(10, dtype=D) + 0.5
    g = B.hypergradient(B.SameState(0.1, method=method), psl, up, params, w)
    fd = finite_difference_gradient(linearised_upper(psl, up, params, 0.1), w, eps=1e-5)
    assert g.norm() > 0 and rel(g, fd) <= 1e-6


def test_official_convention_is_opposite_sign_without_lr():
    psl, up, params, w = mlp()
    correct = B.hypergradient(B.SameState(0.2), psl, up, params, w)
    official = B.hypergradient(B.SameState(0.2, convention="official"), psl, up, params, w)
    torch.testing.assert_close(official, -correct / 0.2)
    # The correct sign is the one that lowers L_up after the model step: descending along -g reduces it.
    f = unrolled_upper(psl, up, params, 0.2, 1)
    step = 1e-2 * correct / correct.norm()
    assert f(w - step) < f(w) < f(w + step)


def test_same_state_approaches_lookahead_as_lr_vanishes():
    """Eq. 9 replaces ∇L_up(θ') by ∇L_up(θ); the gap is O(η)."""
    psl, up, params, w = mlp()
    gaps = []
    for lr in (1e-1, 1e-2, 1e-3):
        s = B.hypergradient(B.SameState(lr), psl, up, params, w)
        la = B.hypergradient(B.Lookahead(lr), psl, up, params, w)
        gaps.append(rel(s, la))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05
    assert gaps[1] / gaps[2] == pytest.approx(10, rel=0.3)


def test_lookahead_cost_scales_and_does_not_touch_params():
    psl, up, params, w = mlp()
    before = {k: v.detach().clone() for k, v in params.items()}
    B.hypergradient(B.Lookahead(0.1, 4), psl, up, params, w)
    for k in params:
        assert torch.equal(params[k], before[k])
        assert params[k].grad is None


def _ridge_closed_form(ridge):
    """θ*(w) = (XᵀWX/N + λ s I)⁻¹ XᵀWy/N for ℓ_i = ½(x_iᵀθ − y_i)² + ½λ‖θ‖², s = mean(w)."""
    psl, up, _, w = linear_regression(ridge=ridge)  # same generator sequence as the data below
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g, dtype=D)
    xm = torch.randn(12, 4, generator=g, dtype=D)
    beta = torch.randn(4, generator=g, dtype=D)
    y = x @ beta + 0.5 * torch.randn(24, generator=g, dtype=D)
    ym = xm @ beta

    def theta_star(w):
        n = len(w)
        a = (x.T * w) @ x / n + ridge * w.mean() * torch.eye(4, dtype=D)
        return torch.linalg.solve(a, (x.T * w) @ y / n)

    def upper_of_w(w):
        return 0.5 * ((xm @ theta_star(w) - ym) ** 2).mean()

    return psl, up, w, theta_star, upper_of_w


@pytest.mark.parametrize("solver,normal", [("cg", False), ("cg", True), ("neumann", False)])
def test_implicit_matches_weighted_ridge_closed_form(solver, normal):
    psl, up, w, theta_star, upper_of_w = _ridge_closed_form(ridge=0.3)
    params = {"theta": theta_star(w).requires_grad_(True)}
    wl = w.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(upper_of_w(wl), wl)  # autograd through torch.linalg.solve
    if solver == "neumann":
        lam_max = float(
            torch.linalg.eigvalsh(
                torch.func.hessian(lambda t: (w * psl({"theta": t})).mean())(params["theta"].detach())
            ).max()
        )
        strategy = B.Implicit("neumann", iters=3000, alpha=1.0 / lam_max)
    else:
        strategy = B.Implicit("cg", iters=50, normal_equations=normal)
    g = B.hypergradient(strategy, psl, up, params, w)
    assert rel(g, expected) <= (1e-6 if solver == "cg" else 1e-4)


@pytest.mark.parametrize("factory", [logistic_regression, linear_regression])
def test_implicit_matches_finite_differences_at_solution(factory):
    psl, up, params, w = factory()
    rows = B.check_hypergradient(psl, up, params, w, [B.Implicit("cg", iters=100)])
    assert rows[0].rel_error <= 1e-4, B.format_report(rows)


def test_implicit_damping_matches_proximal_problem_on_mlp():
    psl, up, params, w = mlp(n=40)
    rows = B.check_hypergradient(
        psl,
        up,
        params,
        w,
        [B.Implicit("cg", iters=200, damping=0.5), B.Implicit("cg", iters=200, damping=0.5, normal_equations=True)],
    )
    for r in rows:
        assert r.rel_error <= 1e-4, B.format_report(rows)


def test_lookahead_matches_higher_and_torchopt():
    higher = pytest.importorskip("higher")
    torchopt = pytest.importorskip("torchopt")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    xm, ym = torch.randn(16, 5), torch.randint(0, 3, (16,))
    ce = torch.nn.functional.cross_entropy
    w0 = 0.5 + torch.rand(32)
    lr = 0.3

    def psl(p):
        return ce(functional_call(net, p, (x,)), y, reduction="none")

    def up(p):
        return ce(functional_call(net, p, (xm,)), ym)

    ours = B.hypergradient(B.Lookahead(lr, 1), psl, up, dict(net.named_parameters()), w0)

    w = w0.clone().requires_grad_(True)
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=lr), copy_initial_weights=True) as (f, o):
        o.step((w * ce(f(x), y, reduction="none")).mean())
        (g_higher,) = torch.autograd.grad(ce(f(xm), ym), w)

    w = w0.clone().requires_grad_(True)
    net2 = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    net2.load_state_dict(net.state_dict())
    meta = torchopt.MetaSGD(net2, lr=lr)
    meta.step((w * ce(net2(x), y, reduction="none")).mean())
    (g_torchopt,) = torch.autograd.grad(ce(net2(xm), ym), w)

    torch.testing.assert_close(ours, g_higher, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours, g_torchopt, rtol=1e-6, atol=1e-9)


def test_naive_and_uniform_rule_weights():
    u = torch.tensor([1.0, 2.0, 3.0, 6.0])
    loss = torch.ones(4)
    w = B.Naive().rule_weights(loss, u)
    z = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + 1e-3)
    torch.testing.assert_close(w, 1 + z)
    assert B.Naive(floor=0.1).rule_weights(loss, u).min() >= 0.1
    assert torch.equal(B.Uniform().rule_weights(loss, None), torch.ones(4))
    psl, up, params, wt = mlp()
    assert torch.equal(B.hypergradient(B.Uniform(), psl, up, params, wt), torch.zeros_like(wt))
    with pytest.raises(ValueError, match="per-sample upper loss"):
        B.Naive().rule_weights(loss, torch.ones(3))


def test_errors_are_raised():
    psl, up, params, w = mlp()
    with pytest.raises(ValueError, match="must match exactly"):
        B.hypergradient(B.SameState(0.1), psl, up, params, w[:-1])
    with pytest.raises(ValueError, match="params is empty"):
        B.hypergradient(B.SameState(0.1), psl, up, {}, w)
    with pytest.raises(ValueError, match="requires grad"):
        B.hypergradient(B.SameState(0.1), psl, up, {k: v.detach() for k, v in params.items()}, w)
    with pytest.raises(ValueError, match="lr must be > 0"):
        B.SameState(0.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        B.Lookahead(0.1, 0)
    with pytest.raises(ValueError, match="solver"):
        B.Implicit("lu")
    with pytest.raises(ValueError, match="damping"):
        B.Implicit(damping=-1.0)
    with pytest.raises(ValueError, match="convention"):
        B.SameState(0.1, convention="tf")


@pytest.mark.parametrize("name", list(ALL))
def test_same_state_finite_difference_method_converges_to_the_exact_hypergradient(name):
    """Central differences along ∇θL_up: O(ε²) error, so shrinking ε by 10 shrinks the error ~100×."""
    psl, up, params, w = ALL[name]()
    exact = B.hypergradient(B.SameState(0.1, method="double_backward"), psl, up, params, w)
    errors = [
        rel(B.hypergradient(B.SameState(0.1, method="finite_difference", fd_eps=eps), psl, up, params, w), exact)
        for eps in (1e-2, 1e-3)
    ]
    assert errors[1] <= 1e-5
    assert errors[1] <= max(errors[0] / 30, 1e-9)


def test_same_state_finite_difference_in_bilevel_update_matches_double_backward():
    import copy

    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    weighter = B.MetaWeighter(2, layers=1, hidden=8, norm="none").double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, dtype=torch.float64)

    def forward(fn):
        loss = (fn(x).squeeze(-1) - y) ** 2
        return B.LevelOutputs(loss=loss, features=torch.stack([loss.detach(), y], -1), upper=loss[:4].mean())

    results = []
    for method, eps in (("double_backward", 1e-2), ("finite_difference", 1e-4)):
        m, wt = copy.deepcopy(model), copy.deepcopy(weighter)
        upd = B.BilevelUpdate(
            m,
            torch.optim.SGD(m.parameters(), 0.1),
            B.SameState(0.1, method=method, fd_eps=eps),
            wt,
            torch.optim.SGD(wt.parameters(), 0.5),
        )
        metrics = upd.step(forward)
        results.append((metrics, [p.detach().clone() for p in [*m.parameters(), *wt.parameters()]]))
    (m1, p1), (m2, p2) = results
    assert m2["hypergrad_norm"] == pytest.approx(m1["hypergrad_norm"], rel=1e-6)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_same_state_rejects_bad_fd_eps():
    with pytest.raises(ValueError, match="fd_eps"):
        B.SameState(0.1, method="finite_difference", fd_eps=0.0)


def test_make_strategy_builds_every_name_and_refuses_unknown_ones():
    assert isinstance(B.make_strategy("same_state", lr=0.1, method="jvp"), B.SameState)
    la = B.make_strategy("lookahead3", lr=0.1)
    assert isinstance(la, B.Lookahead) and la.steps == 3
    assert B.make_strategy("lookahead", lr=0.1, steps=2).steps == 2
    imp = B.make_strategy("implicit_normal", iters=7, damping=0.5)
    assert isinstance(imp, B.Implicit) and imp.normal_equations and imp.iters == 7 and imp.damping == 0.5
    assert isinstance(B.make_strategy("naive"), B.Naive) and isinstance(B.make_strategy("uniform"), B.Uniform)
    with pytest.raises(ValueError, match=r"unknown strategy 'warp'.*same_state"):
        B.make_strategy("warp")
    with pytest.raises(ValueError, match="learning rate"):
        B.make_strategy("same_state")


def test_strategy_from_config_reads_each_recipes_fields():
    """One builder for every recipe: η is meta_lr or else the model's learning rate; the options a config has
    (tempo's lookahead_steps, implicit_iters, ...) reach the strategy, and a config without them (m3po's) gets
    ``make_strategy``'s defaults."""
    from recipes.registry import resolve
    from recipes.run.strategy import strategy_from_config

    tempo = resolve("dmc:cartpole_swingup", "cpu", {"strategy": "lookahead", "lookahead_steps": 3}, recipe="tempo")
    la = strategy_from_config(tempo)
    assert isinstance(la, B.Lookahead) and la.steps == 3 and la.lr == tempo.model_lr
    tempo = resolve("dmc:cartpole_swingup", "cpu", {"strategy": "implicit", "implicit_iters": 7}, recipe="tempo")
    assert strategy_from_config(tempo).iters == 7
    m3po = resolve("gym:HalfCheetah-v4", "cpu", {"strategy": "same_state", "meta_lr": 0.5}, recipe="m3po")
    same = strategy_from_config(m3po)
    assert isinstance(same, B.SameState) and same.lr == 0.5 and same.method == "auto"
    m3po = resolve("gym:HalfCheetah-v4", "cpu", {"strategy": "lookahead"}, recipe="m3po")
    assert strategy_from_config(m3po).lr == m3po.model_lr and strategy_from_config(m3po).steps == 1
