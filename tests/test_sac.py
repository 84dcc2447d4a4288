"""SAC meta-policy (recipes.agents.sac): tanh-Gaussian log-density, Polyak averaging, temperature direction, the TD
target by hand, ∇ₛV through ``value_fn``, and two tiny learning checks (a bandit, and a 2-task bandit whose task
is revealed only through the history)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from recipes.agents.sac import LOG_STD_MAX, LOG_STD_MIN, SAC, SquashedGaussianActor, squashed_gaussian_log_prob
from tasklosses.vagram import value_gradient
from worldmodels.history import roll_history

O, A = 3, 2


def _batch(n: int, length: int, *, done: float = 0.0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A random batch with left-padded windows (the first rows are younger than L) and their rolled successors."""
    batch = {
        "obs": torch.randn(n, O, dtype=dtype),
        "action": torch.rand(n, A, dtype=dtype) * 2 - 1,
        "reward": torch.randn(n, dtype=dtype),
        "next_obs": torch.randn(n, O, dtype=dtype),
        "done": torch.full((n,), done, dtype=dtype),
    }
    mask = torch.ones(n, length, dtype=dtype)
    for i in range(min(n, length)):
        mask[i, : length - i] = 0.0  # row i has i valid steps
    batch["history"] = torch.randn(n, length, O + A + 1, dtype=dtype) * mask.unsqueeze(-1)
    batch["history_mask"] = mask
    args = (batch["history"], mask, batch["obs"], batch["action"], batch["reward"])
    batch["next_history"], batch["next_history_mask"] = roll_history(*args)
    return batch


# -- the squashed Gaussian -----------------------------------------------------------------------------------------
def test_squashed_log_prob_matches_change_of_variables():
    torch.manual_seed(1)
    mean = torch.randn(64, A) * 2
    log_std = torch.randn(64, A).clamp(-3, 1)
    u = mean + log_std.exp() * torch.randn(64, A)
    u[:3] = torch.tensor([[9.0, -12.0], [20.0, 0.5], [-30.0, 15.0]])  # saturated: naive log(1 − tanh²) is −inf
    tanh = TanhTransform(cache_size=1)
    a = tanh(u)  # cached, so the reference inverts to this very u
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [tanh]).log_prob(a).sum(-1)
    ours = squashed_gaussian_log_prob(u, mean, log_std)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference)


def test_actor_head_samples_and_scores_the_tanh_gaussian():
    actor = SquashedGaussianActor(O, A, layers=1, units=16)
    with torch.no_grad():
        actor.net[-1].bias[A:] = torch.tensor([30.0, -40.0])  # log-std far outside [−20, 2]: clamped
    obs, noise = torch.randn(7, O), torch.randn(7, A)
    action, log_prob = actor.head(obs, None, noise=noise)
    mean, log_std = actor.net(obs).chunk(2, -1)
    log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
    u = mean + log_std.exp() * noise
    tanh = TanhTransform(cache_size=1)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [tanh]).log_prob(tanh(u)).sum(-1)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, reference)
    assert action.abs().max() <= 1.0
    assert torch.equal(actor.head(obs, None, deterministic=True)[0], torch.tanh(mean))


# -- construction and API -------------------------------------------------------------------------------------------
def test_negative_history_len_raises():
    with pytest.raises(ValueError, match="history_len"):
        SAC(O, A, history_len=-1)


def test_api_shapes_state_and_optimizers():
    sac = SAC(O, A, history_len=2, history_hidden=8, layers=1, units=16)
    batch = _batch(5, 2)
    action = sac.act(batch["obs"], batch["history"], batch["history_mask"])
    assert action.shape == (5, A) and not action.requires_grad and action.abs().max() <= 1.0
    with pytest.raises(ValueError, match="history"):
        sac.act(batch["obs"])
    keys = sac.state_dict().keys()
    assert "log_alpha" in keys and "updates" in keys
    assert any(k.startswith("critic_target.encoder.") for k in keys)
    assert any(k.startswith("critic_target.qs.") for k in keys)
    assert any(k.startswith("actor.encoder.") for k in keys)
    assert set(sac.optimizers()) == {"actor_opt", "critic_opt", "alpha_opt"}
    assert sac.target_entropy == -A
    # L = 0: plain SAC, an (empty) history is ignored
    plain = SAC(O, A, layers=1, units=16)
    assert plain.actor.encoder is None and plain.critic.encoder is None
    empty = torch.zeros(5, 0, O + A + 1)
    assert plain.act(batch["obs"], empty, torch.zeros(5, 0)).shape == (5, A)
    metrics = plain.update({k: batch[k] for k in ("obs", "action", "reward", "next_obs", "done")})
    assert set(metrics) == {"critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean"}


def test_update_trains_each_encoder_with_its_own_loss():
    sac = SAC(O, A, history_len=2, history_hidden=8, layers=1, units=16)
    before = {k: v.clone() for k, v in sac.state_dict().items()}
    sac.update(_batch(16, 2))
    after = sac.state_dict()
    for name in ("actor.encoder.gru.weight_ih_l0", "critic.encoder.gru.weight_ih_l0", "log_alpha"):
        assert not torch.equal(before[name], after[name]), name
    # separate encoders: the actor's optimiser holds the actor and its encoder, the critic's the twin Qs and theirs,
    # and no optimiser (or gradient) reaches the target critic
    opts = sac.optimizers()
    held = {name: {id(p) for group in opt.param_groups for p in group["params"]} for name, opt in opts.items()}
    assert held["actor_opt"] == {id(p) for p in sac.actor.parameters()}
    assert held["critic_opt"] == {id(p) for p in sac.critic.parameters()}
    assert held["alpha_opt"] == {id(sac.log_alpha)}
    assert all(p.grad is None and not p.requires_grad for p in sac.critic_target.parameters())


# -- targets and temperature ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 2])
def test_polyak_update(length):
    tau = 0.1
    sac = SAC(O, A, history_len=length, history_hidden=8, layers=1, units=16, tau=tau)
    old = {k: v.clone() for k, v in sac.critic_target.state_dict().items()}
    sac.update(_batch(16, length))
    online, target = sac.critic.state_dict(), sac.critic_target.state_dict()
    assert any(not torch.equal(online[k], old[k]) for k in old)
    for k in old:  # exact up to one rounding of the fused multiply-add
        torch.testing.assert_close(target[k], (1 - tau) * old[k] + tau * online[k], rtol=1e-6, atol=1e-7)
    # target_update_every = 2: the first update leaves the target alone
    lazy = SAC(O, A, layers=1, units=16, tau=tau, target_update_every=2)
    old = {k: v.clone() for k, v in lazy.critic_target.state_dict().items()}
    lazy.update(_batch(16, 0))
    assert all(torch.equal(v, old[k]) for k, v in lazy.critic_target.state_dict().items())
    lazy.update(_batch(16, 0))
    assert any(not torch.equal(v, old[k]) for k, v in lazy.critic_target.state_dict().items())


@pytest.mark.parametrize(("target_entropy", "direction"), [(-50.0, -1), (50.0, 1)])
def test_temperature_moves_toward_the_target_entropy(target_entropy, direction):
    sac = SAC(O, A, layers=1, units=16, target_entropy=target_entropy, init_alpha=0.5)
    metrics = sac.update(_batch(32, 0))
    above = metrics["entropy"] > target_entropy  # a tanh-Gaussian in [−1, 1]² has entropy ≤ 2 log 2
    assert above == (direction < 0)
    assert metrics["alpha"] == pytest.approx(0.5)
    change = float(sac.alpha) - 0.5
    assert change * direction > 0


@pytest.mark.parametrize("length", [0, 2])
def test_td_target_by_hand(length):
    sac = SAC(O, A, history_len=length, history_hidden=8, layers=1, units=16, gamma=0.9, init_alpha=0.3)
    for _ in range(2):  # move the target critic away from the critic
        sac.update(_batch(16, length))
    terminal = _batch(6, length, done=1.0)
    assert torch.equal(sac.td_target(terminal), terminal["reward"])  # no bootstrap at all
    batch = _batch(6, length)
    batch["done"][:2] = 1.0
    torch.manual_seed(3)
    target = sac.td_target(batch)
    torch.manual_seed(3)  # the same a' ~ π(· | o', z_π')
    with torch.no_grad():
        hist = (batch["next_history"], batch["next_history_mask"]) if length else (None, None)
        a2, logp2 = sac.actor.head(batch["next_obs"], sac.actor.encode(*hist))
        q2 = sac.critic_target.q(batch["next_obs"], sac.critic_target.encode(*hist), a2)
        soft = torch.minimum(q2[0], q2[1]) - sac.alpha * logp2
    expected = batch["reward"] + 0.9 * (1 - batch["done"]) * soft
    torch.testing.assert_close(target, expected)
    assert not torch.allclose(target[2:], batch["reward"][2:])


# -- V for the task losses ------------------------------------------------------------------------------------------
def test_value_fn_broadcasts_and_has_a_state_gradient():
    sac = SAC(O, A, history_len=2, history_hidden=8, layers=1, units=16).double()
    batch = _batch(5, 2, dtype=torch.float64)
    fn = sac.value_fn(batch["next_history"], batch["next_history_mask"], samples=4)
    states = torch.randn(3, 5, O, dtype=torch.float64)  # [E, N, O] ensemble predictions
    values = fn(states)
    assert values.shape == (3, 5)
    torch.testing.assert_close(fn(states), values)  # a deterministic function of the states
    for e in range(3):  # the per-row code and noise are broadcast over E
        torch.testing.assert_close(fn(states[e]), values[e])
    grad = value_gradient(fn, states)
    assert grad.shape == states.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    h = 1e-6  # central differences on a few coordinates
    for e, n, d in [(0, 0, 0), (1, 3, 2), (2, 4, 1)]:
        step = torch.zeros_like(states)
        step[e, n, d] = h
        with torch.no_grad():
            numeric = (fn(states + step) - fn(states - step))[e, n] / (2 * h)
        assert float(numeric) == pytest.approx(float(grad[e, n, d]), rel=1e-4, abs=1e-6)
    assert all(p.grad is None for p in sac.parameters())  # parameters untouched
    # value(): differentiable w.r.t. the observations, with the current critics
    obs = batch["next_obs"].clone().requires_grad_(True)
    sac.value(obs, batch["next_history"], batch["next_history_mask"], samples=2).sum().backward()
    assert obs.grad is not None and torch.isfinite(obs.grad).all() and obs.grad.abs().sum() > 0
    # without a history the noise is per row of each call, still fixed per closure
    plain = SAC(O, A, layers=1, units=16)
    fn0 = plain.value_fn(samples=2)
    s = torch.randn(4, 6, O)
    torch.testing.assert_close(fn0(s), fn0(s))
    assert value_gradient(fn0, s).shape == s.shape


# -- learning ---------------------------------------------------------------------------------------------------------
def test_learns_a_continuous_bandit():
    """reward −(a − 0.5)², episodes of one step: the deterministic action goes to 0.5."""
    sac = SAC(1, 1, layers=2, units=32, lr=3e-3, alpha_lr=1e-2)
    obs = torch.ones(128, 1)
    for _ in range(400):
        action = torch.rand(128, 1) * 2 - 1  # half uniform, half on-policy (as a replay buffer would hold)
        action[:64] = sac.act(obs[:64])
        reward = -((action[:, 0] - 0.5) ** 2)
        sac.update({"obs": obs, "action": action, "reward": reward, "next_obs": obs, "done": torch.ones(128)})
    best = sac.act(obs[:1], deterministic=True)
    assert float(best) == pytest.approx(0.5, abs=0.1)


def _two_task_batch(n: int) -> dict[str, torch.Tensor]:
    """Episodes of two steps with a hidden task c = ±1.  Step 0 (obs [1, 0]): reward c whatever the action — the
    cue.  Step 1 (obs [0, 1]): reward −(a − c/2)², terminal.  Half the rows are step 0, half step 1."""
    c = torch.randint(0, 2, (n,)).float() * 2 - 1
    first = torch.arange(n) < n // 2
    o0, o1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    a0 = torch.rand(n, 1) * 2 - 1
    step0 = torch.cat([o0.expand(n, 2), a0, c.unsqueeze(-1)], -1).unsqueeze(1)  # [N, 1, O + A + 1]
    action = torch.rand(n, 1) * 2 - 1
    obs = torch.where(first.unsqueeze(-1), o0, o1)
    history = torch.where(first.view(n, 1, 1), torch.zeros_like(step0), step0)
    mask = (~first).float().unsqueeze(-1)
    reward = torch.where(first, c, -((action[:, 0] - c / 2) ** 2))
    batch = {"obs": obs, "action": action, "reward": reward, "next_obs": o1.expand(n, 2), "done": (~first).float()}
    batch["history"], batch["history_mask"] = history, mask
    batch["next_history"], batch["next_history_mask"] = roll_history(history, mask, obs, action, reward)
    return batch


def _second_step_return(sac: SAC) -> float:
    batch = _two_task_batch(400)
    last = batch["done"] == 1
    c = batch["history"][last, 0, -1]
    action = sac.act(batch["obs"][last], batch["history"][last], batch["history_mask"][last], deterministic=True)
    return float(-((action[:, 0] - c / 2) ** 2).mean())


def test_history_conditioning_reveals_the_task():
    """The optimal last action is ±0.5 by a hidden task seen only through the previous reward in the history:
    L = 1 learns it (return ≈ 0), L = 0 can at best play 0 (return −0.25)."""
    returns = {}
    for length in (0, 1):
        torch.manual_seed(0)
        sac = SAC(2, 1, history_len=length, history_hidden=16, layers=2, units=32, lr=3e-3, alpha_lr=3e-3)
        for _ in range(400):
            sac.update(_two_task_batch(128))
        returns[length] = _second_step_return(sac)
    assert returns[1] > -0.05, returns
    assert returns[0] < -0.2, returns
