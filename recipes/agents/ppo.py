"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347) with a diagonal Gaussian policy, for policy
optimisation inside a learned model (AdMRL's VirtualTraining, Lin et al. 2020 Algorithm 1).

* Policy: π_θ(a|s) = N(μ_θ(s), diag(exp(2·log σ))) with a state-independent log σ (Schulman et al. 2015/2017's
  continuous-control policy; SLBO and AdMRL's code use the same), tanh hidden layers.  Actions are *not* squashed:
  the env clips them (recipes.envs.Env clips to [−1, 1]), and log π stays the plain Gaussian log-density, so its
  derivatives in θ — which AdMRL's task gradient needs (eq. 4–7) — are exact.
* Loss (eq. 7 and 9 of the PPO paper): −E[min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)] + c_v·E[(V(s) − R̂)²] − c_H·H[π],
  ρ = π_θ(a|s)/π_θold(a|s), A the GAE advantages (λ = 0.95) normalised per batch, R̂ = A + V_old.
* Defaults: the PPO paper's MuJoCo settings (Table 3): Adam 3·10⁻⁴, 10 epochs, minibatch 64, γ = 0.99, λ = 0.95,
  ε = 0.2; 2×64 tanh units; gradient-norm clip 0.5 and value coefficient 0.5 as OpenAI baselines' ``ppo2``.

Why ours and not Stable-Baselines3's PPO: AdMRL's task gradient differentiates log π_θ of the *same* trajectories
twice in θ and once in ψ through the rewards (``recipes.admrl.taskgrad``), which needs a functional
``log_prob(params, obs, act)`` and rewards recomputable from stored next observations; SB3's rollout buffer keeps
numpy rewards and its ``learn()`` owns the environment loop, so the model-as-vectorised-env and the task gradient
would both sit outside it.  ``PPO.update`` takes any [T, B] batch the caller collects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from recipes.agents.returns import discounted_sum
from worldmodels.nets import mlp


class GaussianPolicy(nn.Module):
    """π_θ(a|s) = N(μ_θ(s), σ²), state-independent log σ.

    Args:
        obs_dim, act_dim: sizes.
        layers, units: the mean network's tanh hidden layers.
        init_log_std: initial log σ (every action dimension).
    """

    def __init__(self, obs_dim: int, act_dim: int, layers: int = 2, units: int = 64, init_log_std: float = -0.5):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, layers, units, nn.Tanh)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        last = self.mean[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():  # small initial means: the policy starts near a ~ N(0, σ²)
            last.weight.mul_(0.01)
            last.bias.zero_()

    def log_prob(self, obs: Tensor, act: Tensor) -> Tensor:
        """log π(a|s), summed over action dimensions: [..., obs_dim], [..., act_dim] → [...]."""
        mu = self.mean(obs)
        z = (act - mu) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, obs: Tensor, *, deterministic: bool = False) -> Tensor:
        """a ~ π(·|s) ([..., act_dim]); the mean when ``deterministic``."""
        mu = self.mean(obs)
        return mu if deterministic else mu + torch.exp(self.log_std) * torch.randn_like(mu)

    def entropy(self) -> Tensor:
        """H[π] (state-independent), a 0-dim tensor."""
        return (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        """``log_prob`` (so ``torch.func.functional_call(policy, params, (obs, act))`` gives log π at θ)."""
        return self.log_prob(obs, act)

    def functional_log_prob(self, params: Mapping[str, Tensor], obs: Tensor, act: Tensor) -> Tensor:
        """``log_prob`` at parameters ``params`` (name → tensor, as ``named_parameters()``), for autograd in θ."""
        return functional_call(self, dict(params), (obs, act))


class GaussianActorCritic:
    """A ``GaussianPolicy`` and a tanh-MLP value function V(s), with GAE (Schulman et al. 2016, eq. 16): what
    ``PPO`` and ``recipes.agents.trpo.TRPO`` share."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        layers: int,
        units: int,
        gamma: float,
        lam: float,
        init_log_std: float,
        device: str | torch.device,
    ) -> None:
        self.policy = GaussianPolicy(obs_dim, act_dim, layers, units, init_log_std).to(device)
        self.value = mlp(obs_dim, 1, layers, units, nn.Tanh).to(device)
        self.gamma, self.lam = gamma, lam

    @torch.no_grad()
    def act(self, obs: Tensor, *, deterministic: bool = False) -> Tensor:
        """Actions for observations [..., obs_dim]."""
        return self.policy.sample(obs, deterministic=deterministic)

    @torch.no_grad()
    def values(self, obs: Tensor) -> Tensor:
        """V(s): [..., obs_dim] → [...]."""
        return self.value(obs).squeeze(-1)

    @torch.no_grad()
    def advantages(
        self, obs: Tensor, reward: Tensor, done: Tensor, last_obs: Tensor, truncated: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """GAE advantages and returns-to-go (A + V), both [T, B], for the batch of ``PPO.update``.

        GAE stops at terminals and truncations; only terminals drop V(s_{t+1}) from δ_t.
        """
        v = self.value(torch.cat([obs, last_obs[None]])).squeeze(-1)  # [T + 1, B]
        cut = done if truncated is None else torch.clamp(done + truncated, max=1.0)
        delta = reward + self.gamma * (1.0 - done) * v[1:] - v[:-1]
        adv = discounted_sum(delta, cut, self.gamma * self.lam)
        return adv, adv + v[:-1]


class PPO(GaussianActorCritic):
    """PPO-clip with GAE on [T, B] batches (module docstring for the loss and defaults).

    Args:
        obs_dim, act_dim: sizes.
        layers, units: hidden tanh layers of the policy mean and of the value network.
        lr: Adam learning rate (policy and value).
        epochs, minibatch: passes over each batch and samples per gradient step.
        clip: ε.  gamma, lam: γ and λ of GAE.
        value_coef, entropy_coef: c_v and c_H.  max_grad_norm: global gradient-norm clip.
        init_log_std: the policy's initial log σ.
        device: torch device.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        layers: int = 2,
        units: int = 64,
        lr: float = 3e-4,
        epochs: int = 10,
        minibatch: int = 64,
        clip: float = 0.2,
        gamma: float = 0.99,
        lam: float = 0.95,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        max_grad_norm: float = 0.5,
        init_log_std: float = -0.5,
        device: str | torch.device = "cpu",
    ) -> None:
        if epochs < 1 or minibatch < 1:
            raise ValueError(f"epochs and minibatch must be >= 1, got {epochs} and {minibatch}")
        if not 0.0 < clip < 1.0:
            raise ValueError(f"clip must be in (0, 1), got {clip}")
        super().__init__(
            obs_dim, act_dim, layers=layers, units=units, gamma=gamma, lam=lam, init_log_std=init_log_std, device=device
        )
        self.opt = torch.optim.Adam([*self.policy.parameters(), *self.value.parameters()], lr=lr)
        self.epochs, self.minibatch, self.clip = epochs, minibatch, clip
        self.value_coef, self.entropy_coef, self.max_grad_norm = value_coef, entropy_coef, max_grad_norm

    def update(
        self, obs: Tensor, act: Tensor, reward: Tensor, done: Tensor, last_obs: Tensor, truncated: Tensor | None = None
    ) -> dict[str, float]:
        """One PPO update on a batch of B parallel rollouts of T steps.

        Args:
            obs: [T, B, obs_dim] s_t.  act: [T, B, act_dim] a_t (as sampled; log π_old is computed here).
            reward: [T, B] r_t.  done: [T, B], 1 where s_{t+1} is terminal (no bootstrap).
            last_obs: [B, obs_dim] s_T, to bootstrap V at the end of the batch.
            truncated: [T, B] or None, 1 where the episode was cut after step t without terminating: GAE does not
                run across it, and its δ_t bootstraps from V(obs[t + 1]) — so the caller stores the cut episode's
                final state there only if it does not reset (the model rollouts here never truncate inside a batch).

        Returns:
            Means of the losses over the update, the approximate KL and the clip fraction.
        """
        T, B = reward.shape
        adv, ret = self.advantages(obs, reward, done, last_obs, truncated)
        with torch.no_grad():
            logp_old = self.policy.log_prob(obs, act)
        flat = {
            "obs": obs.reshape(T * B, -1),
            "act": act.reshape(T * B, -1),
            "adv": adv.reshape(-1),
            "ret": ret.reshape(-1),
            "logp": logp_old.reshape(-1),
        }
        stats = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_frac": 0.0}
        n, count = T * B, 0
        for _ in range(self.epochs):
            perm = torch.randperm(n, device=obs.device)
            for start in range(0, n, self.minibatch):
                idx = perm[start : start + self.minibatch]
                a_mb = flat["adv"][idx]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std(unbiased=False) + 1e-8) if idx.numel() > 1 else a_mb
                logp = self.policy.log_prob(flat["obs"][idx], flat["act"][idx])
                ratio = torch.exp(logp - flat["logp"][idx])
                pg = -torch.min(ratio * a_mb, ratio.clamp(1 - self.clip, 1 + self.clip) * a_mb).mean()
                vl = (self.value(flat["obs"][idx]).squeeze(-1) - flat["ret"][idx]).square().mean()
                ent = self.policy.entropy()
                loss = pg + self.value_coef * vl - self.entropy_coef * ent
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in self.opt.param_groups for p in g["params"]]
                nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                self.opt.step()
                with torch.no_grad():
                    log_ratio = logp - flat["logp"][idx]
                    stats["approx_kl"] += float(((ratio - 1) - log_ratio).mean())
                    stats["clip_frac"] += float(((ratio - 1).abs() > self.clip).float().mean())
                stats["policy_loss"] += float(pg.detach())
                stats["value_loss"] += float(vl.detach())
                stats["entropy"] += float(ent.detach())
                count += 1
        return {k: v / count for k, v in stats.items()}

    def state_dict(self) -> dict[str, object]:
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.policy.load_state_dict(state["policy"])  # type: ignore[arg-type]
        self.value.load_state_dict(state["value"])  # type: ignore[arg-type]
        self.opt.load_state_dict(state["opt"])  # type: ignore[arg-type]


__all__ = ["PPO", "GaussianActorCritic", "GaussianPolicy"]
