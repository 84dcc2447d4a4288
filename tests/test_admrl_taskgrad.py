"""AdMRL's task gradient (recipes.admrl.taskgrad): GAE and returns, the REINFORCE Hessian in both forms against the
exact Hessian of a linear-Gaussian policy, and dL/dψ of the suboptimality gap against its closed form on a 1-D
linear-quadratic problem whose optimal policies are known."""

from __future__ import annotations

import pytest
import torch

from recipes.admrl.taskgrad import (
    ReinforceSurrogate,
    discounted_sum,
    gae,
    per_step_surrogate,
    suboptimality_gap_gradient,
    trajectory_surrogate,
)

F64 = torch.float64


def test_discounted_sum_and_gae_against_loops():
    g = torch.Generator().manual_seed(0)
    T, B, gamma, lam = 6, 3, 0.9, 0.8
    r = torch.randn(T, B, generator=g, dtype=F64)
    v = torch.randn(T + 1, B, generator=g, dtype=F64)
    dones = torch.zeros(T, B, dtype=F64)
    dones[2, 0] = dones[4, 1] = 1.0
    adv = gae(r, v, dones, gamma, lam)
    ret = discounted_sum(r, dones, gamma)
    for b in range(B):
        for t in range(T):
            a_ref, g_ref, k = 0.0, 0.0, t
            while k < T:
                nd = 1.0 - float(dones[k, b])
                delta = float(r[k, b]) + gamma * nd * float(v[k + 1, b]) - float(v[k, b])
                a_ref += (gamma * lam) ** (k - t) * delta
                g_ref += gamma ** (k - t) * float(r[k, b])
                if nd == 0.0:
                    break
                k += 1
            assert float(adv[t, b]) == pytest.approx(a_ref, abs=1e-12)
            assert float(ret[t, b]) == pytest.approx(g_ref, abs=1e-12)
    with pytest.raises(ValueError, match=r"T \+ 1"):
        gae(r, v[:-1], dones, gamma, lam)


class Bandit:
    """One-step linear-Gaussian problem: s ~ N(μ, I), a ~ N(θᵀs, σ²), r_ψ = −(a − ψᵀs)².

    J(θ, ψ) = −(θ − ψ)ᵀ(I + μμᵀ)(θ − ψ) − σ², so ∇²θθJ = −2(I + μμᵀ) and ∂²J/∂θ∂ψ = 2(I + μμᵀ).
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mu, self.sigma = torch.tensor([0.5, -1.0], dtype=F64), 0.7
        self.psi = torch.tensor([0.3, 0.8], dtype=F64)
        self.theta_hat = {"w": (self.psi + torch.tensor([0.2, -0.1], dtype=F64)).requires_grad_(True)}
        self.s = self.mu + torch.randn(n, 2, generator=g, dtype=F64)
        self.a = self.s @ self.theta_hat["w"].detach() + self.sigma * torch.randn(n, generator=g, dtype=F64)
        self.m2 = torch.eye(2, dtype=F64) + torch.outer(self.mu, self.mu)

    def log_prob(self, theta):  # [1, N]: T = 1 step, N trajectories
        return (-((self.a - self.s @ theta["w"]) ** 2) / (2 * self.sigma**2))[None]

    def rewards(self, psi):
        return (-((self.a - self.s @ psi) ** 2))[None]

    def value(self):  # V(s) = E[r | s] at θ̂, the exact critic
        d = self.s @ (self.theta_hat["w"].detach() - self.psi)
        return -(d**2) - self.sigma**2


def _hessian_and_mixed(surrogate: ReinforceSurrogate, theta_hat, psi):
    w = theta_hat["w"].detach().requires_grad_(True)
    p = psi.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(surrogate({"w": w}, p), w, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[i], w, retain_graph=True)[0] for i in range(2)])
    mixed = torch.stack([torch.autograd.grad(grad[i], p, retain_graph=True)[0] for i in range(2)])
    return hess, mixed


@pytest.mark.parametrize("form", ["trajectory", "per_step"])
def test_reinforce_hessian_matches_the_exact_hessian(form):
    bandit = Bandit(400_000)
    dones = torch.ones(1, bandit.s.shape[0], dtype=F64)
    if form == "trajectory":
        sur = trajectory_surrogate(bandit.log_prob, bandit.theta_hat, bandit.rewards, dones, 0.99)
    else:
        values = torch.stack([bandit.value(), torch.zeros_like(bandit.value())])
        sur = per_step_surrogate(bandit.log_prob, bandit.theta_hat, bandit.rewards, values, dones, 0.99, 0.95)
    hess, mixed = _hessian_and_mixed(sur, bandit.theta_hat, bandit.psi)
    exact = -2 * bandit.m2
    assert float((hess - exact).norm() / exact.norm()) < 0.05, (hess, exact)
    assert float((mixed + exact).norm() / exact.norm()) < 0.05, (mixed, -exact)


class LQ:
    """s ~ N(μ, 1), a ~ N(θs, σ²), s' = s + βa, r_ψ = −(s' − ψs)² + κψ: η(θ, β, ψ) = −(1 + βθ − ψ)²(1 + μ²) − β²σ² + κψ.

    The optimal policy under dynamics β is θ = (ψ − 1)/β, so with a model β̂ ≠ β* the suboptimality gap is
    L(ψ) = (ψ − 1)²(β*/β̂ − 1)²(1 + μ²) and dL/dψ = 2(ψ − 1)(β*/β̂ − 1)²(1 + μ²).  κ makes ∂η*/∂ψ = κ at θ*
    (without it every term of eq. 2 at θ* would vanish and go untested).
    """

    mu, sigma, beta_star, beta_hat, kappa = 0.5, 0.5, 1.0, 0.5, 0.3

    def eta(self, theta, beta, psi):
        return -((1 + beta * theta - psi) ** 2) * (1 + self.mu**2) - beta**2 * self.sigma**2 + self.kappa * psi

    def gap_grad(self, psi: float) -> float:
        return 2 * (psi - 1) * (self.beta_star / self.beta_hat - 1) ** 2 * (1 + self.mu**2)

    def rollouts(self, theta: float, beta: float, n: int, seed: int):
        """Sampled (log π closure, r_ψ closure, dones, V(s) at ψ) for n one-step trajectories of π_θ under β."""
        g = torch.Generator().manual_seed(seed)
        s = self.mu + torch.randn(n, generator=g, dtype=F64)
        a = theta * s + self.sigma * torch.randn(n, generator=g, dtype=F64)
        s1 = s + beta * a

        def log_prob(th):
            return (-((a - th["w"] * s) ** 2) / (2 * self.sigma**2))[None]

        def rewards(psi):
            return (-((s1 - psi * s) ** 2) + self.kappa * psi)[None]

        def value(psi):  # the exact critic E[r_ψ | s] of π_θ: a state-dependent baseline
            return -((1 + beta * theta - psi) ** 2) * s**2 - beta**2 * self.sigma**2 + self.kappa * psi

        return log_prob, rewards, torch.ones(1, n, dtype=F64), value


class Exact:
    """η(·, β, ·) in closed form, shaped like a :class:`ReinforceSurrogate` (call and ``value``)."""

    def __init__(self, lq: LQ, beta: float, theta: float) -> None:
        self.lq, self.beta, self.theta = lq, beta, theta

    def __call__(self, th, psi):
        return self.lq.eta(th["w"], self.beta, psi).sum()

    def value(self, psi):
        return self.lq.eta(torch.tensor(self.theta, dtype=F64), self.beta, psi)


def test_gap_gradient_composition_is_exact_with_closed_form_objectives():
    lq, psi = LQ(), 2.0
    t_hat, t_star = (psi - 1) / lq.beta_hat, (psi - 1) / lq.beta_star
    th = {"w": torch.tensor([t_hat], dtype=F64, requires_grad=True)}
    p = torch.tensor([psi], dtype=F64)
    ours = suboptimality_gap_gradient(
        Exact(lq, lq.beta_hat, t_hat),  # type: ignore[arg-type]
        Exact(lq, lq.beta_star, t_hat),  # type: ignore[arg-type]
        Exact(lq, lq.beta_star, t_star),  # type: ignore[arg-type]
        th,
        p,
        solver="cg",
        iters=5,
        damping=0.0,
    )
    h = 1e-6

    def gap(x):
        return lq.eta((x - 1) / lq.beta_star, lq.beta_star, x) - lq.eta((x - 1) / lq.beta_hat, lq.beta_star, x)

    fd = (gap(psi + h) - gap(psi - h)) / (2 * h)
    assert float(ours) == pytest.approx(lq.gap_grad(psi), rel=1e-9)
    assert float(ours) == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize("form", ["trajectory", "per_step"])
def test_gap_gradient_from_samples_matches_the_closed_form(form):
    lq, psi, n = LQ(), 2.0, 1_000_000
    t_hat, t_star = (psi - 1) / lq.beta_hat, (psi - 1) / lq.beta_star
    th = {"w": torch.tensor([t_hat], dtype=F64, requires_grad=True)}
    th_star = {"w": torch.tensor([t_star], dtype=F64)}

    def surrogate(theta_value, params, beta, seed):
        logp, rew, dones, value = lq.rollouts(theta_value, beta, n, seed)
        if form == "trajectory":  # V(s₀) is constant in θ and ψ here: an unbiased baseline
            return trajectory_surrogate(logp, params, lambda p: rew(p[0]), dones, 1.0, baseline=value(psi))
        values = torch.stack([value(psi), torch.zeros(n, dtype=F64)])
        return per_step_surrogate(logp, params, lambda p: rew(p[0]), values, dones, 1.0, 1.0)

    model = surrogate(t_hat, th, lq.beta_hat, 1)
    real_hat = surrogate(t_hat, th, lq.beta_star, 2)
    real_star = surrogate(t_star, th_star, lq.beta_star, 3)
    for solver in ("cg", "normal_cg"):  # undamped: damping biases the solve (x = Hb/(H² + λ) for 1-D θ)
        grad, info = suboptimality_gap_gradient(
            model, real_hat, real_star, th, torch.tensor([psi], dtype=F64), solver=solver, damping=0.0,
            return_info=True,
        )  # fmt: skip
        assert float(grad) == pytest.approx(lq.gap_grad(psi), rel=0.05), (solver, float(grad), info)
        assert float(info["direct_star"]) == pytest.approx(lq.kappa, abs=0.01)  # ∂η*/∂ψ at the real optimum θ*


def test_surrogate_shape_mismatch_raises():
    sur = ReinforceSurrogate(
        lambda th: th["w"] * torch.ones(3), {"w": torch.ones(1)}, lambda p: p * torch.ones(4, dtype=p.dtype)
    )
    with pytest.raises(ValueError, match="log_prob gives"):
        sur({"w": torch.ones(1)}, torch.ones(1))
