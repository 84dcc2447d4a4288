"""AdMRL's task gradient: dL/dψ of the suboptimality gap L(ψ) = η*(θ*, ψ) − η*(θ̂(ψ), ψ) (Lin et al. 2020, §4.2).

θ̂(ψ) = argmax_θ η̂(θ, ψ) is the policy adapted to task ψ inside the learned model, θ* the policy trained on the real
environment.  Eq. 2:

    dL/dψ = ∂η*/∂ψ|θ* − ( (∂θ̂/∂ψ)ᵀ ∂η*/∂θ|θ̂ + ∂η*/∂ψ|θ̂ )

The bracket is exactly what ``bilevel.implicit_hypergradient`` returns for the lower objective −η̂ (θ̂ is its
minimiser) and the outer objective η*, both evaluated at θ̂ — provided their autograd derivatives *are* the Monte
Carlo estimators of eq. 3–7.  ``ReinforceSurrogate`` is built so that they are: with per-unit log-likelihood
ratios ρ_u(θ) = exp(log π_θ(u) − log π_θ̂(u)) (ρ = 1 at θ̂),

    S(θ, ψ) = mean_u value_u(ψ) + mean_u (ρ_u(θ) − 1) · adv_u(ψ)

has, at θ = θ̂,

* ∂S/∂ψ = mean_u ∂value_u/∂ψ — eq. 3 when value_u is the discounted return of a trajectory;
* ∇θS = mean_u ∇log π(u) · adv_u — the policy gradient, eq. 4;
* ∂²S/∂θ∂ψ = mean_u ∇log π(u) · ∂adv_u/∂ψ — eq. 6;
* ∇²θθS = mean_u (∇log π(u) ∇log π(u)ᵀ + ∇²log π(u)) · adv_u — the REINFORCE Hessian: eq. 7 when a unit is a
  trajectory and adv_u its return R_ψ(τ) (``trajectory_surrogate``), AdMRL's code when a unit is one step
  and adv_u its GAE advantage (``per_step_surrogate``).

So every second-order product is one more autograd pass through ``log π``, and nothing here is specific to a policy
class: ``log_prob(theta)`` is the caller's closure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

import bilevel
from recipes.agents.returns import discounted_sum, gae

#: ``theta -> Tensor[...]``: log π_θ(a|s) of the sampled actions, one entry per time step (shape [T, B]).
LogProb = Callable[[Mapping[str, Tensor]], Tensor]
#: ``psi -> Tensor[T, B]``: the rewards r_ψ(s_t, a_t) of the sampled steps, differentiable in ψ.
Rewards = Callable[[Tensor], Tensor]

HESSIAN_FORMS = ("trajectory", "per_step")
__all__ = [
    "HESSIAN_FORMS",
    "ReinforceSurrogate",
    "discounted_sum",
    "gae",
    "per_step_surrogate",
    "suboptimality_gap_gradient",
    "trajectory_surrogate",
]


class ReinforceSurrogate:
    """S(θ, ψ) = mean_u value_u(ψ) + mean_u (ρ_u(θ) − 1)·adv_u(ψ), ρ_u = exp(log π_θ(u) − log π_θ̂(u)).

    Its autograd derivatives at θ = θ̂ are the Monte Carlo estimators of AdMRL eq. 3, 4, 6 and 7 (module docstring);
    away from θ̂ it is an importance-weighted surrogate.  Call it as ``S(theta, psi)``, the signature
    ``bilevel.implicit_hypergradient`` takes.

    Args:
        log_prob: ``theta -> Tensor[U]``, log π_θ of each unit (a trajectory's summed log-probabilities, or one step's).
        theta_hat: θ̂, the parameters the units were sampled with (log π_θ̂ is computed once, detached).
        advantage: ``psi -> Tensor[U]``, adv_u(ψ) (returns, or GAE advantages), differentiable in ψ.
        value: ``psi -> Tensor[U']``, the units whose mean is the return estimate (eq. 3); None: no such term
            (∂S/∂ψ = 0 — enough for a lower objective, whose direct ψ-derivative the IFT never uses).

    Raises:
        ValueError: if ``log_prob(theta_hat)`` and ``advantage(psi)`` differ in shape (checked on call).
    """

    def __init__(
        self,
        log_prob: Callable[[Mapping[str, Tensor]], Tensor],
        theta_hat: Mapping[str, Tensor],
        advantage: Callable[[Tensor], Tensor],
        value: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.log_prob, self.advantage, self.value = log_prob, advantage, value
        with torch.no_grad():
            self.log_prob_hat = log_prob({k: v.detach() for k, v in theta_hat.items()}).detach()

    def __call__(self, theta: Mapping[str, Tensor], psi: Tensor) -> Tensor:
        logp = self.log_prob(theta)
        adv = self.advantage(psi)
        if logp.shape != adv.shape:
            raise ValueError(f"log_prob gives {tuple(logp.shape)} but advantage gives {tuple(adv.shape)}")
        ratio = torch.exp(logp - self.log_prob_hat)
        out = ((ratio - 1.0) * adv).mean()
        if self.value is not None:
            out = out + self.value(psi).mean()
        return out


def _alive_and_discount(dones: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """1 for the steps of each column up to and including its first ``done`` (0 after), and γ^t, both [T, *]."""
    d = dones.to(torch.float64)
    alive = torch.cumprod(torch.cat([torch.ones_like(d[:1]), 1.0 - d[:-1]]), 0)
    disc = gamma ** torch.arange(d.shape[0], dtype=torch.float64, device=d.device)
    return alive, disc.reshape(-1, *([1] * (d.dim() - 1)))


def trajectory_surrogate(
    log_prob: LogProb,
    theta_hat: Mapping[str, Tensor],
    rewards: Rewards,
    dones: Tensor,
    gamma: float,
    *,
    baseline: Tensor | None = None,
) -> ReinforceSurrogate:
    """The paper's form (eq. 3, 4, 6, 7): a unit is a trajectory, log π(τ) = Σ_t log π(a_t|s_t), adv = R_ψ(τ) − b.

    The batch is [T, B] with one trajectory per column starting at t = 0 (a column may end early: its steps after
    ``dones`` are ignored); R_ψ(τ) = Σ_t γ^t r_ψ(s_t, a_t).  ``baseline`` (Tensor[B], constant in θ and ψ) lowers
    the variance of the policy gradient and mixed term without biasing them; eq. 7 has none.

    Returns:
        A ``ReinforceSurrogate`` whose value term is mean_τ R_ψ(τ) (eq. 3).
    """
    alive, disc = _alive_and_discount(dones, gamma)

    def returns(psi: Tensor) -> Tensor:
        r = rewards(psi)
        return (disc.to(r.dtype) * alive.to(r.dtype) * r).sum(0)

    def log_prob_tau(theta: Mapping[str, Tensor]) -> Tensor:
        logp = log_prob(theta)
        return (alive.to(logp.dtype) * logp).sum(0)

    def advantage(psi: Tensor) -> Tensor:
        r = returns(psi)
        return r if baseline is None else r - baseline

    return ReinforceSurrogate(log_prob_tau, theta_hat, advantage, returns)


def per_step_surrogate(
    log_prob: LogProb,
    theta_hat: Mapping[str, Tensor],
    rewards: Rewards,
    values: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> ReinforceSurrogate:
    """AdMRL's code form: a unit is one step, adv = GAE_t(r_ψ) with the critic's V detached (its ``op_values``),
    so the Hessian is Σ_t (∇log π_t ∇log π_tᵀ + ∇²log π_t)·GAE_t — not eq. 7 (no cross-time terms).

    ``values`` is Tensor[T + 1, B] (see ``gae``).  The value term is mean_t of the returns-to-go from t = 0 of
    each column, as in ``trajectory_surrogate``.
    """
    values = values.detach()
    alive, disc = _alive_and_discount(dones, gamma)

    def advantage(psi: Tensor) -> Tensor:
        return gae(rewards(psi), values, dones, gamma, lam).reshape(-1)

    def returns(psi: Tensor) -> Tensor:
        r = rewards(psi)
        return (disc.to(r.dtype) * alive.to(r.dtype) * r).sum(0)

    def log_prob_steps(theta: Mapping[str, Tensor]) -> Tensor:
        return log_prob(theta).reshape(-1)

    return ReinforceSurrogate(log_prob_steps, theta_hat, advantage, returns)


def suboptimality_gap_gradient(
    model: ReinforceSurrogate,
    real_hat: ReinforceSurrogate,
    real_star: ReinforceSurrogate,
    theta_hat: Mapping[str, Tensor],
    psi: Tensor,
    *,
    solver: Literal["cg", "normal_cg"] = "normal_cg",
    iters: int = 200,
    damping: float = 0.1,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """dL/dψ of L(ψ) = η*(θ*, ψ) − η*(θ̂(ψ), ψ), AdMRL eq. 2 (Algorithm 1, lines 9–11).

    Args:
        model: η̂ around θ̂ from rollouts of π_θ̂ in the learned model (its Hessian and mixed term: eq. 5–7).
        real_hat: η* around θ̂ from real rollouts of π_θ̂ (its θ-gradient is eq. 4, its ψ-gradient eq. 3).
        real_star: η* around θ* from real rollouts of π_θ* (its ψ-gradient is eq. 3 at θ*).
        theta_hat: θ̂, name → tensor (``requires_grad=True`` for the tensors the policy trains).
        psi: ψ, Tensor[k].
        solver, iters, damping: the IFT solve (``bilevel.implicit_hypergradient``); defaults are AdMRL's code
            (CG on the normal equations, 200 iterations, damping 0.1).  Its code also divides the normal-equation
            products by the number of policy parameters (``meanAAx``), which rescales the damping; we do not.
        return_info: also return the parts: ``direct_star`` (∂η*/∂ψ|θ*), ``bracket`` (the parenthesis of eq. 2)
            and ``ift`` (``bilevel.ImplicitInfo``).

    Returns:
        dL/dψ, detached, of ``psi``'s shape; ascend it to find harder tasks (Algorithm 1, line 12).
    """
    p = psi.detach().requires_grad_(True)
    (direct_star,) = torch.autograd.grad(real_star.value(p).mean(), p) if real_star.value else (torch.zeros_like(p),)

    def lower(theta: Mapping[str, Tensor], ps: Tensor) -> Tensor:  # θ̂ maximises η̂: it minimises −η̂
        return -model(theta, ps)

    bracket, info = bilevel.implicit_hypergradient(
        lower, real_hat, theta_hat, psi, solver=solver, iters=iters, damping=damping, return_info=True
    )
    grad = direct_star.detach() - bracket
    if not return_info:
        return grad
    return grad, {"direct_star": direct_star.detach(), "bracket": bracket, "ift": info}
