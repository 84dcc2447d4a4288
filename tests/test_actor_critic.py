"""Dreamer actor-critic: λ-returns by hand, gradient routing, slow critic, a learning sanity check."""

import math
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recipes.agents.dreamer_ac import Actor, ActorCritic, lambda_return, replay_lambda_return, truncated_normal
from recipes.dreamer.config import DreamerConfig
from recipes.dreamer.dreamerv2 import AC_FIELDS
from recipes.dreamer.fast import CompiledImagination
from recipes.run.config import config_kwargs
from worldmodels import RSSMWorldModel


def make_ac(rssm, reward, discount, action_dim: int, discrete: bool, **over) -> ActorCritic:
    """The actor-critic a dreamerv2 run builds at DreamerConfig's defaults, with ``over`` (its argument names)."""
    kwargs = config_kwargs(DreamerConfig(), ActorCritic, AC_FIELDS, actor_grad=None, autocast_dtype=None)
    return ActorCritic(rssm, reward, discount, action_dim, discrete, **{**kwargs, **over})


def test_lambda_return_hand_computed():
    # H = 2, one trajectory: r1 = 1, r2 = 2; v0..v2 = 0.5, 1.0, 3.0; γ = 0.9; λ = 0.5
    reward = torch.tensor([[0.0], [1.0], [2.0]])
    value = torch.tensor([[0.5], [1.0], [3.0]])
    discount = torch.full((3, 1), 0.9)
    r1 = 2.0 + 0.9 * (0.5 * 3.0 + 0.5 * 3.0)  # R_1 = r_2 + γ((1-λ) v_2 + λ R_2), R_2 = v_2
    r0 = 1.0 + 0.9 * (0.5 * 1.0 + 0.5 * r1)
    torch.testing.assert_close(lambda_return(reward, value, discount, 0.5), torch.tensor([[r0], [r1]]))
    # λ = 1: discounted Monte-Carlo return bootstrapped at the horizon; λ = 0: one-step TD targets
    torch.testing.assert_close(lambda_return(reward, value, discount, 1.0)[0], torch.tensor([1 + 0.9 * 2 + 0.81 * 3]))
    torch.testing.assert_close(lambda_return(reward, value, discount, 0.0)[:, 0], torch.tensor([1 + 0.9, 2 + 2.7]))


@pytest.mark.parametrize("discrete", [False, True])
def test_actor_outputs(discrete):
    actor = Actor(6, 3, discrete, layers=1, units=8)
    a, logp, ent = actor(torch.randn(5, 6))
    assert a.shape == (5, 3) and logp.shape == (5,) and ent.shape == (5,)
    if discrete:
        assert torch.equal(a.detach().sum(-1), torch.ones(5))
    else:
        assert a.abs().max() <= 1.0


@pytest.mark.parametrize("discrete", [False, True])
def test_update_touches_only_actor_and_critic(discrete):
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8, discount_head=discrete)
    ac = make_ac(wm.rssm, wm.reward, wm.discount, 3, discrete, horizon=4, layers=1, units=8, slow_every=2)
    batch = {
        "obs": torch.randn(2, 5, 4),
        "action": torch.randn(2, 5, 3),
        "reward": torch.randn(2, 5),
        "discount": torch.ones(2, 5),
        "is_first": torch.zeros(2, 5, dtype=torch.bool),
    }
    post = wm.loss(batch).states["post"]
    wm_before = [p.detach().clone() for p in wm.parameters()]
    actor_before = [p.detach().clone() for p in ac.actor.parameters()]
    m1 = ac.update(post)
    assert all(p.grad is None for p in wm.parameters())
    assert all(torch.equal(a, b) for a, b in zip(wm.parameters(), wm_before, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(ac.actor.parameters(), actor_before, strict=True))
    assert not torch.equal(ac.slow_critic[0].weight, ac.critic[0].weight)
    ac.update(post)  # second update: slow critic copied (slow_every=2)
    assert torch.equal(ac.slow_critic[0].weight, ac.critic[0].weight)
    assert {"actor_loss", "critic_loss", "imag_return", "actor_entropy"} <= set(m1)
    assert ac.value(wm.rssm.features(post)).shape == (2, 5)


def _naive_losses(ac, wm, start, actor_grad):
    """DreamerV2's actor and critic losses written plainly: the whole rollout in the autograd graph, the REINFORCE
    baseline from a second slow-critic pass (what ``ActorCritic.update`` avoids), DreamerV2 §2.3 eq. 5-7."""
    logps, ents = [], []

    def policy(feat):
        action, logp, ent = ac.actor(feat)
        logps.append(logp)
        ents.append(ent)
        return action

    states, _ = wm.rssm.imagine(policy, start, ac.horizon)
    feat = wm.rssm.features(states)
    reward = wm.reward(feat).squeeze(-1)
    discount = ac.gamma * torch.sigmoid(wm.discount(feat).squeeze(-1))
    target = lambda_return(reward, ac.slow_critic(feat).squeeze(-1), discount, ac.lam)
    weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]], 0), 0)[:-1].detach()
    logp, ent = torch.stack(logps), torch.stack(ents)
    if actor_grad == "dynamics":
        objective = target
    else:
        objective = logp * (target - ac.slow_critic(feat[:-1].detach()).squeeze(-1)).detach()
    actor_loss = -(weight * (objective + ac.entropy * ent)).mean()
    critic_loss = (weight * 0.5 * (ac.critic(feat[:-1].detach()).squeeze(-1) - target.detach()) ** 2).mean()
    actor = torch.autograd.grad(actor_loss, list(ac.actor.parameters()))
    critic = torch.autograd.grad(critic_loss, list(ac.critic.parameters()))
    return actor, critic


@pytest.mark.parametrize(("discrete", "actor_grad"), [(True, "reinforce"), (False, "dynamics"), (True, "dynamics")])
def test_update_gradients_equal_the_naive_losses(discrete, actor_grad):
    """The update's actor and critic gradients (detached REINFORCE rollout, reused slow-critic baseline) equal
    those of the plain losses, same random draws."""
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8, discount_head=True)
    wm.double()
    ac = make_ac(
        wm.rssm, wm.reward, wm.discount, 3, discrete, horizon=4, layers=1, units=8, actor_grad=actor_grad
    ).double()
    with torch.no_grad():  # a slow critic unlike the critic, so the baseline and the critic target both matter
        for p in ac.slow_critic.parameters():
            p.add_(0.3 * torch.randn_like(p))
    start = {k: v.detach() for k, v in wm.rssm.initial(6, dtype=torch.float64).items()}
    start["deter"] = torch.randn(6, 8, dtype=torch.float64)
    got = {}
    ac.actor_opt.step = lambda: got.update(actor=[p.grad.clone() for p in ac.actor.parameters()])
    ac.critic_opt.step = lambda: got.update(critic=[p.grad.clone() for p in ac.critic.parameters()])
    ac.clip = 1e9  # no clipping: compare raw gradients
    torch.manual_seed(1)
    ac.update(start)
    torch.manual_seed(1)
    want_actor, want_critic = _naive_losses(ac, wm, start, actor_grad)
    assert sum(g.abs().sum() for g in want_actor) > 0
    for a, b in zip(got["actor"], want_actor, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(got["critic"], want_critic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_actor_learns_to_maximise_a_known_reward():
    """Dynamics backprop on a fixed random RSSM: reward = first feature; imagined return must rise."""
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 2, deter=8, stoch=3, hidden=16, mlp_layers=1, mlp_units=16)
    head = torch.nn.Linear(wm.rssm.feat_size, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, wm.rssm.stoch_size] = 1.0  # reward = h_0
        head.bias.zero_()
    ac = make_ac(
        wm.rssm, head, None, 2, False, horizon=5, layers=1, units=32, actor_lr=3e-3, critic_lr=3e-3, entropy=0.0
    )
    start = wm.rssm.initial(64)
    returns = [ac.update(start)["imag_reward"] for _ in range(60)]
    assert sum(returns[-10:]) / 10 > sum(returns[:10]) / 10 + 0.05


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 1.0), (0.7, 0.3), (-0.95, 2.0), (0.99, 0.1)])
def test_truncated_normal_matches_scipy(mu, sigma):
    truncnorm = pytest.importorskip("scipy.stats").truncnorm
    a, b = (-1 - mu) / sigma, (1 - mu) / sigma
    ref = truncnorm(a, b, loc=mu, scale=sigma)
    torch.manual_seed(0)
    mean = torch.full((200_000,), mu, dtype=torch.float64)
    std = torch.full_like(mean, sigma)
    x, logp, ent = truncated_normal(mean, std)
    assert x.min() >= -1 and x.max() <= 1
    assert abs(float(x.mean()) - ref.mean()) < 4 * ref.std() / 200_000**0.5 + 1e-6
    assert abs(float(x.std()) - ref.std()) < 0.01 * ref.std()
    assert torch.allclose(logp[:50], torch.as_tensor(ref.logpdf(x[:50].numpy())), atol=1e-9)
    assert abs(float(ent[0]) - ref.entropy()) < 1e-9


def test_truncated_normal_reparameterised_gradient_matches_finite_differences():
    """d E[x] / dμ and d E[x] / dσ by the pathwise gradient equal those of scipy's exact mean."""
    truncnorm = pytest.importorskip("scipy.stats").truncnorm

    def exact_mean(mu, sigma):
        return truncnorm((-1 - mu) / sigma, (1 - mu) / sigma, loc=mu, scale=sigma).mean()

    mu, sigma, h = 0.4, 0.8, 1e-5
    torch.manual_seed(1)
    mean = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    std = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    x, _, _ = truncated_normal(mean.expand(400_000), std.expand(400_000))
    g_mu, g_sigma = torch.autograd.grad(x.mean(), (mean, std))
    fd_mu = (exact_mean(mu + h, sigma) - exact_mean(mu - h, sigma)) / (2 * h)
    fd_sigma = (exact_mean(mu, sigma + h) - exact_mean(mu, sigma - h)) / (2 * h)
    assert abs(float(g_mu) - fd_mu) < 0.01
    assert abs(float(g_sigma) - fd_sigma) < 0.01


def test_truncated_normal_entropy_is_bounded_by_the_uniform():
    std = torch.logspace(-1, 2, 20, dtype=torch.float64)
    ent = truncated_normal(torch.zeros_like(std), std, deterministic=True)[2]
    assert (ent[:10].diff() > 0).all() and (ent.diff() > -1e-12).all()
    assert float(ent.max()) < math.log(2.0) + 1e-12 and float(ent[-1]) > 0.693


def test_maybe_compiled_falls_back_to_eager_with_one_warning():
    from recipes.agents.compile import MaybeCompiled

    calls = []
    fn = MaybeCompiled(lambda x: calls.append(x) or x + 1, "the toy")

    def broken(*_):
        raise RuntimeError("no C++ compiler")

    fn.compiled = broken
    with pytest.warns(UserWarning, match="torch.compile of the toy failed"):
        assert fn(1) == 2
    assert fn.compiled is None and fn(2) == 3 and calls == [1, 2]
    with pytest.raises(ZeroDivisionError):  # the function's own errors are not swallowed
        MaybeCompiled(lambda x: 1 / x, "div", enabled=False)(0)


@pytest.mark.parametrize(("discrete", "imag_chunk"), [(False, 0), (True, 0), (False, 2)])
def test_compiled_update_equals_eager(discrete, imag_chunk):
    """compile=True (inductor, random ops through torch's generator: the same draws) gives the eager update's
    gradients, with the rollout and losses as one graph or the rollout in chunks (imag_chunk=2 over a horizon of
    5: two runs of the 2-step graph and one of a 1-step graph)."""
    (eager, m0), (compiled, m1) = [_update_grads(discrete, compile, imag_chunk) for compile in (False, True)]
    for key in ("actor", "critic"):
        for a, b in zip(compiled[key], eager[key], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert m1["imag_return"] == pytest.approx(m0["imag_return"], rel=1e-5)


def _update_grads(discrete, compile, imag_chunk=0):
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 2, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8, discount_head=True)
    horizon = 5 if imag_chunk else 3
    ac = make_ac(
        wm.rssm,
        wm.reward,
        wm.discount,
        2,
        discrete,
        horizon=horizon,
        layers=1,
        units=8,
    )
    if compile:
        ac.loss_fn = CompiledImagination(ac, imag_chunk)
        assert ac.loss_fn.chunked == (imag_chunk > 0)
    got = {}
    ac.actor_opt.step = lambda ac=ac, got=got: got.update(actor=[p.grad.clone() for p in ac.actor.parameters()])
    ac.critic_opt.step = lambda ac=ac, got=got: got.update(critic=[p.grad.clone() for p in ac.critic.parameters()])
    start = {k: v + 0.1 * torch.randn_like(v) for k, v in wm.rssm.initial(5).items()}
    with warnings.catch_warnings():
        # a silent fallback to eager would make this test vacuous
        warnings.filterwarnings("error", message="torch.compile of")
        for _ in range(2):  # the second call runs the compiled graph from the cache
            torch.manual_seed(1)
            metrics = ac.update(start)
    return got, metrics


def _pair_with_return_norm(discrete: bool, actor_grad: str, reward_bias: float):
    """Two actor-critics with equal weights, the second with DreamerV3's return normalisation; float64."""
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8).double()
    with torch.no_grad():
        wm.reward[-1].bias.fill_(reward_bias)
        wm.reward[-1].weight.mul_(20.0)  # returns that differ between states
    kw = {"horizon": 5, "layers": 1, "units": 8, "actor_grad": actor_grad, "entropy": 0.0}
    plain = make_ac(wm.rssm, wm.reward, wm.discount, 3, discrete, **kw).double()
    normed = make_ac(wm.rssm, wm.reward, wm.discount, 3, discrete, return_norm=True, **kw).double()
    normed.load_state_dict(plain.state_dict(), strict=False)
    start = {k: v.detach() for k, v in wm.rssm.initial(16, dtype=torch.float64).items()}
    start["deter"] = torch.randn(16, 8, dtype=torch.float64)
    return plain, normed, start


def _actor_grads(ac: ActorCritic, start: dict, seed: int) -> tuple[list[torch.Tensor], dict]:
    got = {}
    ac.actor_opt.step = lambda: got.update(actor=[p.grad.clone() for p in ac.actor.parameters()])
    ac.clip = 1e9
    torch.manual_seed(seed)
    metrics = ac.update(start)
    return got["actor"], metrics


@pytest.mark.parametrize(("discrete", "actor_grad"), [(True, "reinforce"), (False, "dynamics")])
def test_return_norm_divides_the_actor_gradient_by_the_return_range(discrete, actor_grad):
    plain, normed, start = _pair_with_return_norm(discrete, actor_grad, reward_bias=30.0)
    g_plain, _ = _actor_grads(plain, start, seed=1)
    g_norm, metrics = _actor_grads(normed, start, seed=1)
    scale = float(normed.return_scale)
    assert scale > 1.0 and metrics["return_scale"] == pytest.approx(scale)  # first batch: S = its own range
    for a, b in zip(g_norm, g_plain, strict=True):
        torch.testing.assert_close(a, b / scale, rtol=1e-9, atol=1e-12)


def test_return_scale_is_the_percentile_range_of_the_lambda_returns():
    _, normed, start = _pair_with_return_norm(True, "reinforce", reward_bias=30.0)
    seen = []
    inner = normed._return_scale
    normed._return_scale = lambda target: (seen.append(target.detach().clone()), inner(target))[1]
    _actor_grads(normed, start, seed=1)
    (target,) = seen
    assert target.shape == (5, 16)  # [H, N]
    lo, hi = np.percentile(target.numpy().ravel(), [5, 95])  # numpy's (linear) percentiles, independently
    assert float(normed.return_scale) == pytest.approx(hi - lo, rel=1e-12)


def test_return_norm_ema_and_limit():
    _, normed, start = _pair_with_return_norm(True, "reinforce", reward_bias=30.0)
    _actor_grads(normed, start, seed=1)
    s1 = float(normed.return_scale)
    with torch.no_grad():
        normed._wm["reward"][-1].bias.fill_(90.0)  # larger returns: a larger range is blended in at rate 0.01
        normed._wm["reward"][-1].weight.mul_(3.0)
    seen = []
    inner = normed._return_scale
    normed._return_scale = lambda target: (seen.append(target.detach().clone()), inner(target))[1]
    _actor_grads(normed, start, seed=2)
    lo, hi = np.percentile(seen[0].numpy().ravel(), [5, 95])
    assert hi - lo > 2 * s1  # a larger range this batch ...
    # ... blended in at rate 1 − decay = 0.01 (DreamerV3's EMA)
    assert float(normed.return_scale) == pytest.approx(0.99 * s1 + 0.01 * (hi - lo), rel=1e-12)
    # tiny returns: S < L = 1 leaves the gradient unscaled
    plain, normed, start = _pair_with_return_norm(True, "reinforce", reward_bias=0.0)
    with torch.no_grad():
        for ac in (plain, normed):
            ac._wm["reward"][-1].weight.mul_(1e-4)
    g_plain, _ = _actor_grads(plain, start, seed=3)
    g_norm, _ = _actor_grads(normed, start, seed=3)
    assert float(normed.return_scale) < 1.0
    for a, b in zip(g_norm, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_bad_settings_raise():
    wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8)
    with pytest.raises(ValueError, match="return_norm_decay"):
        make_ac(wm.rssm, wm.reward, None, 3, True, return_norm=True, return_norm_decay=1.0)
    with pytest.raises(ValueError, match="return_norm_limit"):
        make_ac(wm.rssm, wm.reward, None, 3, True, return_norm=True, return_norm_limit=0.0)
    with pytest.raises(ValueError, match="imag_chunk"):
        CompiledImagination(make_ac(wm.rssm, wm.reward, None, 3, True), -1)


def test_unimix_actor_keeps_every_action_possible():
    torch.manual_seed(0)
    actor = Actor(6, 3, True, layers=1, units=8, unimix=0.01)
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([40.0, -40.0, 0.0]))
    with torch.no_grad():
        _, logp, ent = actor(torch.randn(4000, 6))
    probs_floor = 0.01 / 3
    assert float(logp.exp().min()) >= probs_floor * (1 - 1e-5)
    assert float(ent.min()) > 0.01  # the plain softmax's entropy is ~0 here
    with pytest.raises(ValueError, match="unimix"):
        Actor(6, 3, True, unimix=1.0)


def test_bounded_normal_actor_matches_torch_normal_and_keeps_std_in_bounds():
    """DreamerV3's bounded Normal (actor_dist=normal): log-probabilities and entropies are torch's Normal's at the
    actor's mean and std, the std stays in [0.1, max_std] for any logit, and the deterministic action is the mean."""
    torch.manual_seed(0)
    actor = Actor(6, 3, False, layers=1, units=16, dist="normal", max_std=1.0)
    with torch.no_grad():
        actor.net[-1].weight.mul_(100.0)  # extreme logits: the bounds must hold
    feat = torch.randn(4000, 6)
    action, log_prob, entropy = actor(feat)
    mean, raw_std = actor.net(feat).chunk(2, -1)
    std = 0.9 * torch.sigmoid(raw_std + 2.0) + 0.1
    assert std.min() >= 0.1 - 1e-6 and std.max() <= 1.0 + 1e-6 and std.min() < 0.2 and std.max() > 0.9
    normal = torch.distributions.Normal(torch.tanh(mean), std)
    torch.testing.assert_close(log_prob, normal.log_prob(action).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, normal.entropy().sum(-1), rtol=1e-5, atol=1e-5)
    det, _, _ = actor(feat, deterministic=True)
    torch.testing.assert_close(det, torch.tanh(mean))
    assert (action.abs() > 1).any()  # not truncated: the environment clips
    with pytest.raises(ValueError, match="dist"):
        Actor(6, 3, False, dist="beta")
    with pytest.raises(ValueError, match="max_std"):
        Actor(6, 3, False, dist="normal", max_std=0.05)


def test_replay_lambda_return_cuts_at_episode_starts():
    # one sequence of T = 5: steps 0-2 are one episode (time limit after step 2), step 3 starts the next
    reward = torch.tensor([0.0, 1.0, 2.0, 0.0, 4.0])[:, None]
    value = torch.tensor([0.5, 1.0, 3.0, 7.0, 2.0])[:, None]
    is_first = torch.tensor([True, False, False, True, False])[:, None]
    discount = torch.full((5, 1), 0.9)
    ret, mask = replay_lambda_return(reward, value, discount, is_first, 0.5)
    r2 = 3.0  # no transition 2 -> 3: bootstrap with v_2, and no weight
    r1 = 2.0 + 0.9 * (0.5 * 3.0 + 0.5 * r2)
    r0 = 1.0 + 0.9 * (0.5 * 1.0 + 0.5 * r1)
    r3 = 4.0 + 0.9 * 2.0  # R_3 = r_4 + γ v_4 (λ-return ends at the last step)
    torch.testing.assert_close(ret[:, 0], torch.tensor([r0, r1, r2, r3]))
    torch.testing.assert_close(mask[:, 0], torch.tensor([1.0, 1.0, 0.0, 1.0]))
    # with no episode start inside, it is lambda_return over the same arrays
    none = torch.zeros(5, 1, dtype=torch.bool)
    torch.testing.assert_close(
        replay_lambda_return(reward, value, discount, none, 0.5)[0], lambda_return(reward, value, discount, 0.5)
    )
    # a termination (γ_t = 0) ends the return at its reward
    discount[2] = 0.0
    ret, _ = replay_lambda_return(reward, value, discount, none, 0.5)
    torch.testing.assert_close(ret[1, 0], torch.tensor(2.0))


@pytest.mark.parametrize("twohot_bins", [0, 15])
def test_replay_value_loss_adds_the_critic_regression_on_real_rewards(twohot_bins):
    """repval_scale > 0: the critic's gradient is the imagined loss's plus repval_scale × the gradient of the masked
    regression to replay_lambda_return's targets (computed independently here); the actor's is unchanged."""

    def make(repval_scale):
        torch.manual_seed(0)
        wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8).double()
        kw = {"horizon": 3, "layers": 1, "units": 8, "twohot_bins": twohot_bins, "repval_scale": repval_scale}
        ac = make_ac(wm.rssm, wm.reward, wm.discount, 3, False, **kw).double()
        with torch.no_grad():  # a slow critic that differs from the critic, so bootstrap values matter
            for p in ac.slow_critic.parameters():
                p.add_(0.3 * torch.randn_like(p))
        got = {}
        ac.actor_opt.step = lambda: got.update(actor=[p.grad.clone() for p in ac.actor.parameters()])
        ac.critic_opt.step = lambda: got.update(critic=[p.grad.clone() for p in ac.critic.parameters()])
        ac.clip = 1e9
        return wm, ac, got

    gen = torch.Generator().manual_seed(3)
    feat_b = torch.randn(2, 6, 8 + 3, generator=gen, dtype=torch.float64)
    replay = {
        "feat": feat_b,
        "reward": torch.rand(2, 6, generator=gen, dtype=torch.float64),
        "is_first": torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool),
    }
    start = {
        k: v.detach() for k, v in RSSMWorldModel((4,), 3, deter=8, stoch=3).rssm.initial(4, dtype=torch.float64).items()
    }
    start["deter"] = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    grads = {}
    for scale in (0.0, 0.3):
        _, ac, got = make(scale)
        torch.manual_seed(1)
        metrics = ac.update(start, replay=replay)
        grads[scale] = got
    assert "repval_loss" in metrics
    for a, b in zip(grads[0.3]["actor"], grads[0.0]["actor"], strict=True):
        torch.testing.assert_close(a, b)
    # the expected extra gradient, by hand: targets from the slow critic, mask where a real transition follows
    _, ac, _ = make(0.3)
    with torch.no_grad():
        v = ac.slow_critic(feat_b).squeeze(-1)  # [B, T]
    lam, gamma = ac.lam, ac.gamma
    loss, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            if replay["is_first"][b, t + 1]:
                continue
            ret, k = None, 5  # walk back from the end of this episode segment
            for j in range(t + 1, 6):
                if j == 5 or replay["is_first"][b, j + 1]:
                    k = j
                    break
            ret = v[b, k]
            for j in range(k, t, -1):
                ret = replay["reward"][b, j] + gamma * ((1 - lam) * v[b, j] + lam * ret)
            if twohot_bins:
                nll = ac.critic.nll(feat_b[b, t], ret)
            else:
                nll = 0.5 * (ac.critic(feat_b[b, t]).squeeze(-1) - ret) ** 2
            loss, count = loss + nll, count + 1
    extra = torch.autograd.grad(0.3 * loss / count, list(ac.critic.parameters()))
    for got, base, e in zip(grads[0.3]["critic"], grads[0.0]["critic"], extra, strict=True):
        torch.testing.assert_close(got, base + e)


def test_replay_value_loss_needs_the_replay():
    wm = RSSMWorldModel((4,), 3, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8)
    with pytest.raises(ValueError, match="repval_scale must be"):
        make_ac(wm.rssm, wm.reward, wm.discount, 3, False, repval_scale=-1.0)
    ac = make_ac(wm.rssm, wm.reward, wm.discount, 3, False, horizon=2, layers=1, units=8, repval_scale=0.3)
    with pytest.raises(ValueError, match="needs the replayed sequences"):
        ac.update(wm.rssm.initial(4))


def test_tanh_normal_actor_matches_torch_and_its_entropy_stops_saturation():
    """actor_dist=tanh_normal: log π(a) is torch's tanh-transformed Normal's at DreamerV1's mean and std; the
    deterministic action is tanh(μ); and an actor saturated at full action turns round when the reward does, which
    the bounded Normal (tanh on the mean) cannot."""
    torch.manual_seed(0)
    actor = Actor(6, 2, False, layers=1, units=16, dist="tanh_normal").double()
    feat = torch.randn(500, 6, dtype=torch.float64)
    action, log_prob, entropy = actor(feat)
    raw_mean, raw_std = actor.net(feat).chunk(2, -1)
    mean = 5.0 * torch.tanh(raw_mean / 5.0)
    std = torch.nn.functional.softplus(raw_std + math.log(math.expm1(5.0))) + 1e-4
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, std), [torch.distributions.TanhTransform(cache_size=1)]
    )
    inside = action.abs().amax(-1) < 1 - 1e-6  # where atanh is still exact in float64
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(log_prob[inside], dist.log_prob(action).sum(-1)[inside], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, -log_prob)
    torch.testing.assert_close(actor(feat, deterministic=True)[0], torch.tanh(mean))

    def mean_action_after_reversal(dist_name: str) -> float:
        """Start saturated (pre-tanh mean 20, where fp32 tanh′ is exactly 0), then maximise −action with Adam."""
        torch.manual_seed(1)
        a = Actor(4, 1, False, layers=0, units=1, dist=dist_name)
        with torch.no_grad():
            a.net[-1].weight.zero_()
            a.net[-1].bias[0] = 20.0
        opt = torch.optim.Adam(a.parameters(), 1e-2)
        x = torch.ones(256, 4)
        for _ in range(300):
            act, _, ent = a(x)
            loss = -(-act.squeeze(-1).clamp(-1, 1) + 3e-4 * ent).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(a(x, deterministic=True)[0].detach().mean())

    assert mean_action_after_reversal("normal") > 0.99  # stuck at full torque: no gradient reaches the mean
    assert mean_action_after_reversal("tanh_normal") < 0.0  # the squashed sample keeps a gradient: it turns round


def test_actor_mean_bound_penalty_and_a_saturated_actor_turns_round():
    """mean_bound b: sample() returns Σ_a max(0, |μ̃_a| − b)² of the pre-tanh mean μ̃ (none when off or discrete);
    the actor-critic adds its mean over imagined states to the actor's loss; and an actor saturated at pre-tanh mean
    20 (fp32 tanh′ exactly 0) is pulled back into range and turns round when the reward flips, which the same actor
    without the bound cannot (test above)."""
    torch.manual_seed(0)
    for dist in ("trunc_normal", "normal"):
        actor = Actor(6, 2, False, layers=1, units=16, dist=dist, mean_bound=3.0)
        feat = 20.0 * torch.randn(300, 6)
        _, _, _, penalty = actor.sample(feat)
        raw_mean = actor.net(feat).chunk(2, -1)[0]
        expected = ((raw_mean.abs() - 3.0).clamp(min=0) ** 2).sum(-1)
        torch.testing.assert_close(penalty, expected)
        assert (penalty == 0).any() and (penalty > 0).any()  # both sides of the hinge are exercised
        assert Actor(6, 2, False, layers=1, units=16, dist=dist).sample(feat)[3] is None
    assert Actor(6, 3, True, layers=1, units=8).sample(torch.randn(4, 6))[3] is None
    for kwargs, match in (
        ({"dist": "tanh_normal", "mean_bound": 3.0}, "tanh-mean actor"),
        ({"mean_bound": 0.0}, "mean_bound must be positive"),
    ):
        with pytest.raises(ValueError, match=match):
            Actor(6, 2, False, **kwargs)
    with pytest.raises(ValueError, match="tanh-mean actor"):
        Actor(6, 2, True, mean_bound=3.0)
    with pytest.raises(ValidationError, match="actor_mean_bound"):
        DreamerConfig(actor_dist="tanh_normal", actor_mean_bound=3.0)

    # the actor-critic's loss carries the penalty: equal to the same loss without it plus the penalty's mean
    wm = RSSMWorldModel((4,), 2, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8)
    start = wm.rssm.initial(16)
    ac_off = make_ac(wm.rssm, wm.reward, wm.discount, 2, False, horizon=3, layers=1, units=8)
    ac_on = make_ac(wm.rssm, wm.reward, wm.discount, 2, False, horizon=3, layers=1, units=8, actor_mean_bound=0.01)
    ac_on.load_state_dict(ac_off.state_dict())
    losses = {}
    for bound, ac in ((None, ac_off), (0.01, ac_on)):
        torch.manual_seed(1)
        losses[bound] = ac.losses(start, None)
    penalty = losses[0.01][2]["actor_mean_penalty"]
    assert penalty > 0
    torch.testing.assert_close(losses[0.01][0], losses[None][0] + penalty)
    torch.testing.assert_close(losses[0.01][1], losses[None][1])

    def mean_action_after_reversal(bound: float | None) -> float:
        torch.manual_seed(1)
        a = Actor(4, 1, False, layers=0, units=1, dist="normal", mean_bound=bound)
        with torch.no_grad():
            a.net[-1].weight.zero_()
            a.net[-1].bias[0] = 20.0
        opt = torch.optim.Adam(a.parameters(), 0.2)
        x = torch.ones(256, 4)
        for _ in range(400):
            act, _, ent, pen = a.sample(x)
            loss = -(-act.squeeze(-1).clamp(-1, 1) + 3e-4 * ent).mean() + (0.0 if pen is None else pen.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(a(x, deterministic=True)[0].detach().mean())

    assert mean_action_after_reversal(None) > 0.99
    assert mean_action_after_reversal(3.0) < -0.9
