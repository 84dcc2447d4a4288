"""Trust Region Policy Optimization (Schulman et al. 2015, arXiv:1502.05477) as SLBO and AdMRL's code use it inside
the learned model: max-KL δ = 0.01, the natural-gradient step by conjugate gradients on Fisher-vector products
(Appendix C), a backtracking line search that requires improvement of the surrogate and KL ≤ δ, and a value
function fitted by Adam regression on the GAE returns.

Same interface as ``recipes.agents.ppo.PPO`` (``act``, ``values``, ``update``, ``policy``, ``value``), so the
AdMRL recipe takes either (``policy_opt``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from bilevel import conjugate_gradient
from recipes.agents.ppo import GaussianActorCritic


def _flat(xs: list[Tensor]) -> Tensor:
    return torch.cat([x.reshape(-1) for x in xs])


class TRPO(GaussianActorCritic):
    """TRPO on [T, B] batches of a diagonal Gaussian policy.

    Args:
        obs_dim, act_dim: sizes.  layers, units: tanh hidden layers of the policy mean and the value network.
        max_kl: δ, the trust region (SLBO: 0.01).  cg_iters, cg_damping: the Fisher solve (10 and 0.1, as
            OpenAI baselines' TRPO).  backtracks, backtrack_ratio: line search (10 halvings… of 0.8).
        value_lr, value_epochs, value_minibatch: Adam regression of V on the returns.
        gamma, lam: GAE.  init_log_std: the policy's initial log σ.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        layers: int = 2,
        units: int = 64,
        max_kl: float = 0.01,
        cg_iters: int = 10,
        cg_damping: float = 0.1,
        backtracks: int = 10,
        backtrack_ratio: float = 0.8,
        value_lr: float = 1e-3,
        value_epochs: int = 5,
        value_minibatch: int = 256,
        gamma: float = 0.99,
        lam: float = 0.95,
        init_log_std: float = -0.5,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_kl <= 0:
            raise ValueError(f"max_kl must be > 0, got {max_kl}")
        super().__init__(
            obs_dim, act_dim, layers=layers, units=units, gamma=gamma, lam=lam, init_log_std=init_log_std, device=device
        )
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=value_lr)
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.backtracks, self.backtrack_ratio = backtracks, backtrack_ratio
        self.value_epochs, self.value_minibatch = value_epochs, value_minibatch

    def _kl(self, obs: Tensor, mu_old: Tensor, log_std_old: Tensor) -> Tensor:
        """Mean KL(π_old ‖ π_θ) over ``obs`` for diagonal Gaussians."""
        mu, log_std = self.policy.mean(obs), self.policy.log_std
        var_old, var = torch.exp(2 * log_std_old), torch.exp(2 * log_std)
        kl = log_std - log_std_old + (var_old + (mu_old - mu) ** 2) / (2 * var) - 0.5
        return kl.sum(-1).mean()

    def update(
        self, obs: Tensor, act: Tensor, reward: Tensor, done: Tensor, last_obs: Tensor, truncated: Tensor | None = None
    ) -> dict[str, float]:
        """One TRPO step on B rollouts of T steps (arguments as ``recipes.agents.ppo.PPO.update``)."""
        T, B = reward.shape
        adv, ret = self.advantages(obs, reward, done, last_obs, truncated)
        ret = ret.reshape(-1)
        with torch.no_grad():
            o, a = obs.reshape(T * B, -1), act.reshape(T * B, -1)
            adv = adv.reshape(-1)
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
            logp_old = self.policy.log_prob(o, a)
            mu_old, log_std_old = self.policy.mean(o), self.policy.log_std.detach().clone()
        params = list(self.policy.parameters())

        def surrogate() -> Tensor:
            return (torch.exp(self.policy.log_prob(o, a) - logp_old) * adv).mean()

        loss = surrogate()
        g = _flat(list(torch.autograd.grad(loss, params)))
        kl = self._kl(o, mu_old, log_std_old)
        grad_kl = _flat(list(torch.autograd.grad(kl, params, create_graph=True)))

        def fvp(vec: Tensor) -> Tensor:
            hv = torch.autograd.grad(grad_kl @ vec, params, retain_graph=True)
            return _flat(list(hv)) + self.cg_damping * vec

        step = conjugate_gradient(fvp, g, iters=self.cg_iters, tol=1e-5).detach()
        shs = 0.5 * (step @ fvp(step))
        full = step * torch.sqrt(2 * self.max_kl / shs.clamp_min(1e-12))
        expected = float(g @ full)
        old = [p.detach().clone() for p in params]
        accepted, frac, new_kl, improve = False, 1.0, 0.0, 0.0
        with torch.no_grad():
            for _ in range(self.backtracks):
                _assign(params, old, full * frac)
                improve = float(surrogate() - loss.detach())
                new_kl = float(self._kl(o, mu_old, log_std_old))
                if new_kl <= self.max_kl * 1.5 and improve > 0:
                    accepted = True
                    break
                frac *= self.backtrack_ratio
            if not accepted:
                _assign(params, old, full * 0.0)
        value_loss = 0.0
        n = T * B
        for _ in range(self.value_epochs):
            perm = torch.randperm(n, device=o.device)
            for start in range(0, n, self.value_minibatch):
                idx = perm[start : start + self.value_minibatch]
                vl = (self.value(o[idx]).squeeze(-1) - ret[idx]).square().mean()
                self.value_opt.zero_grad(set_to_none=True)
                vl.backward()
                self.value_opt.step()
                value_loss = float(vl.detach())
        return {
            "kl": new_kl if accepted else 0.0,
            "improvement": improve if accepted else 0.0,
            "expected_improvement": expected,
            "accepted": float(accepted),
            "step_fraction": frac if accepted else 0.0,
            "value_loss": value_loss,
            "entropy": float(self.policy.entropy().detach()),
        }

    def state_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "opt": self.value_opt.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.policy.load_state_dict(state["policy"])  # type: ignore[arg-type]
        self.value.load_state_dict(state["value"])  # type: ignore[arg-type]
        self.value_opt.load_state_dict(state["opt"])  # type: ignore[arg-type]


def _assign(params: list[Tensor], base: list[Tensor], delta: Tensor) -> None:
    i = 0
    for p, b in zip(params, base, strict=True):
        k = p.numel()
        p.copy_(b + delta[i : i + k].view_as(p))
        i += k


__all__ = ["TRPO"]
