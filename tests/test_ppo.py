"""PPO (recipes.agents.ppo): the Gaussian log-density, its functional form, and learning on a batched control task."""

from __future__ import annotations

import pytest
import torch

from recipes.agents.ppo import PPO, GaussianPolicy


def test_log_prob_is_the_gaussian_density_and_functional_agrees():
    torch.manual_seed(0)
    pi = GaussianPolicy(3, 2, init_log_std=-0.3)
    obs, act = torch.randn(7, 3), torch.randn(7, 2)
    ref = torch.distributions.Normal(pi.mean(obs), pi.log_std.exp()).log_prob(act).sum(-1)
    torch.testing.assert_close(pi.log_prob(obs, act), ref)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in pi.named_parameters()}
    out = pi.functional_log_prob(params, obs, act)
    torch.testing.assert_close(out, ref.detach())
    grads = torch.autograd.grad(out.sum(), list(params.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    ent = torch.distributions.Normal(torch.zeros(2), pi.log_std.exp()).entropy().sum()
    torch.testing.assert_close(pi.entropy(), ent)


def _rollout(agent: PPO, b: int = 32, horizon: int = 30, *, deterministic: bool = False):
    """Point mass: s' = s + 0.2·clip(a, −1, 1), r = −‖s‖²; B parallel episodes of ``horizon`` steps."""
    s = torch.rand(b, 2) * 2 - 1
    obs, acts, rews = [], [], []
    for _ in range(horizon):
        a = agent.act(s, deterministic=deterministic)
        obs.append(s)
        acts.append(a)
        s = s + 0.2 * a.clamp(-1, 1)
        rews.append(-(s**2).sum(-1))
    return torch.stack(obs), torch.stack(acts), torch.stack(rews), s


def test_ppo_learns_to_reach_the_origin():
    torch.manual_seed(0)
    agent = PPO(2, 2, minibatch=128, epochs=5, lr=1e-3, gamma=0.95)
    before = float(_rollout(agent, 256, deterministic=True)[2].sum(0).mean())
    for _ in range(40):
        obs, act, rew, last = _rollout(agent)
        done = torch.zeros_like(rew)
        trunc = torch.zeros_like(rew)
        trunc[-1] = 1.0
        stats = agent.update(obs, act, rew, done, last, trunc)
    after = float(_rollout(agent, 256, deterministic=True)[2].sum(0).mean())
    assert stats["approx_kl"] < 0.1
    # a policy that does nothing scores ≈ −20 (E‖s‖² = 2/3 over 30 steps); reaching the origin fast scores ≈ −3
    assert before < -15
    assert after > -6, (before, after)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="clip"):
        PPO(2, 2, clip=1.5)
    with pytest.raises(ValueError, match="epochs"):
        PPO(2, 2, epochs=0)


def test_trpo_keeps_its_trust_region_and_learns():
    from recipes.agents.trpo import TRPO

    torch.manual_seed(0)
    agent = TRPO(2, 2, max_kl=0.01, gamma=0.95)
    before = float(_rollout(agent, 256, deterministic=True)[2].sum(0).mean())  # type: ignore[arg-type]
    accepted = 0
    for _ in range(60):
        obs, act, rew, last = _rollout(agent)  # type: ignore[arg-type]
        trunc = torch.zeros_like(rew)
        trunc[-1] = 1.0
        stats = agent.update(obs, act, rew, torch.zeros_like(rew), last, trunc)
        assert stats["kl"] <= 0.015 + 1e-6  # the line search's acceptance bound 1.5 δ
        accepted += int(stats["accepted"])
    after = float(_rollout(agent, 256, deterministic=True)[2].sum(0).mean())  # type: ignore[arg-type]
    assert accepted >= 40
    assert after > before + 5, (before, after)
    with pytest.raises(ValueError, match="max_kl"):
        TRPO(2, 2, max_kl=0.0)
