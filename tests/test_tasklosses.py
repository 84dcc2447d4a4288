"""Task-aware upper losses: formulas by hand, shapes, invariances, the registry, and hypergradient checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import tasklosses as T
from bilevel import Lookahead, SameState, check_hypergradient, format_report
from tasklosses import base

D = torch.float64


def _critic(inp: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, 5), nn.Tanh(), nn.Linear(5, 1)).to(D).requires_grad_(False)


@pytest.fixture
def registry():
    """Restore the registry after a test that registers losses."""
    saved = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)


# ---------------------------------------------------------------------------------------------------- V-VAML


def test_vvaml_hand_computed():
    post, prior = torch.tensor([1.0, 2.0, 3.0], dtype=D), torch.tensor([1.0, 0.0, 3.0], dtype=D)
    # joint statistics of [1, 2, 3, 1, 0, 3]: mean 5/3, biased variance 11/9
    expected = torch.tensor([0.0, 4.0, 0.0], dtype=D) / (11 / 9 + 1e-3)
    torch.testing.assert_close(T.VVAML().from_values(post, prior), expected)
    torch.testing.assert_close(T.VVAML(eps=0.5).from_values(post, prior), expected * (11 / 9 + 1e-3) / (11 / 9 + 0.5))
    n_post, n_prior = T.VVAML().normalize(post, prior)
    torch.testing.assert_close(n_post, (post - 5 / 3) / (11 / 9 + 1e-3) ** 0.5)
    torch.testing.assert_close(n_prior, (prior - 5 / 3) / (11 / 9 + 1e-3) ** 0.5)


def test_vvaml_from_features_is_from_values_of_the_critic():
    critic = _critic(4)
    post, prior = torch.randn(3, 5, 4, dtype=D), torch.randn(3, 5, 4, dtype=D)
    loss = T.VVAML()
    out = loss(prior, post, critic)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, loss.from_values(critic(post).squeeze(-1), critic(prior).squeeze(-1)))


@pytest.mark.parametrize("normalizer", ["batch", "moving"])
def test_vvaml_zero_iff_post_equals_prior(normalizer):
    loss = T.VVAML(normalizer)
    v = torch.randn(4, 6, dtype=D)
    assert torch.equal(loss.from_values(v, v.clone()), torch.zeros_like(v))
    out = loss.from_values(v, v + 0.1 * torch.randn(4, 6, dtype=D))
    assert (out > 0).all()
    # a constant offset between posterior and prior values is a disparity (shared statistics keep it)
    assert (loss.from_values(v, v + 1.0) > 0).all()


def test_vvaml_joint_statistics_keep_a_constant_offset():
    v = torch.randn(50, dtype=D)
    joint = torch.cat([v, v + 2.0])
    expected = 4.0 / (joint.var(unbiased=False) + 1e-3)
    torch.testing.assert_close(T.VVAML().from_values(v, v + 2.0), expected.expand(50))


def test_vvaml_batch_normalizer_invariant_to_affine_value_changes():
    loss = T.VVAML("batch", eps=1e-12)
    post, prior = torch.randn(3, 7, dtype=D), torch.randn(3, 7, dtype=D)
    base_loss = loss.from_values(post, prior)
    for a, b in [(3.0, -2.0), (0.01, 5.0), (250.0, 1e3)]:
        torch.testing.assert_close(loss.from_values(a * post + b, a * prior + b), base_loss, rtol=1e-8, atol=1e-10)


def test_vvaml_gradients_flow_into_posterior_and_prior():
    critic = _critic(4)
    post = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    prior = torch.randn(2, 3, 4, dtype=D, requires_grad=True)
    T.VVAML()(prior, post, critic).mean().backward()
    assert post.grad is not None and post.grad.abs().sum() > 0
    assert prior.grad is not None and prior.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_vvaml_batch_gradient_includes_the_statistics():
    """d/dV of the batch-normalised loss differs from the one with statistics held constant."""
    post = torch.randn(8, dtype=D, requires_grad=True)
    prior = torch.randn(8, dtype=D)
    (g,) = torch.autograd.grad(T.VVAML().from_values(post, prior).mean(), post)
    var = torch.cat([post, prior]).var(unbiased=False).detach()
    frozen = (2 * (post - prior) / (var + 1e-3) / 8).detach()
    assert not torch.allclose(g, frozen)


def test_vvaml_moving_normalizer_updates_in_train_mode_only():
    loss = T.VVAML("moving", momentum=0.5)
    assert {"normalizer.mean", "normalizer.var", "normalizer.initialized"} <= set(loss.state_dict())
    post, prior = torch.randn(10, dtype=D), torch.randn(10, dtype=D)
    loss.train()
    loss.from_values(post, prior)
    joint = torch.cat([post, prior])
    torch.testing.assert_close(loss.normalizer.var, joint.var(unbiased=False).float())
    torch.testing.assert_close(loss.normalizer.mean, joint.mean().float())
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.from_values(post + 3.0, 2.0 * prior)
    changed = {k: v.clone() for k, v in loss.state_dict().items()}
    assert not torch.equal(before["normalizer.mean"], changed["normalizer.mean"])
    loss.eval()
    out = loss.from_values(post, prior)
    assert all(torch.equal(changed[k], v) for k, v in loss.state_dict().items())
    expected = (post - prior) ** 2 / (changed["normalizer.var"].to(D) + 1e-3)
    torch.testing.assert_close(out, expected)


def test_vvaml_errors():
    with pytest.raises(ValueError, match="unknown normalizer"):
        T.VVAML("layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        T.VVAML().from_values(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="same shape"):
        T.VVAML()(torch.zeros(3, 2), torch.zeros(3, 4), lambda f: f.sum(-1))
    with pytest.raises(ValueError, match="value_fn must map"):
        T.VVAML()(torch.zeros(3, 2), torch.zeros(3, 2), lambda f: f)


# ---------------------------------------------------------------------------------------------------- VAML


def test_vaml_hand_computed():
    def value(s):
        return s[..., 0] ** 2

    samples = torch.tensor([[[1.0], [0.0]], [[3.0], [2.0]]], dtype=D)  # K = 2 samples of N = 2 predictions
    target = torch.tensor([[2.0], [1.0]], dtype=D)
    # sample 0: V(s') = 4, mean V(ŝ) = (1 + 9)/2 = 5 → 1;  sample 1: V(s') = 1, mean = (0 + 4)/2 = 2 → 1
    torch.testing.assert_close(T.VAML()(samples, target, value), torch.tensor([1.0, 1.0], dtype=D))
    # a single prediction
    torch.testing.assert_close(T.VAML()(samples[1], target, value), torch.tensor([25.0, 9.0], dtype=D))
    torch.testing.assert_close(T.VAML()(samples[:1], target, value), T.VAML()(samples[0], target, value))


def test_vaml_errors():
    with pytest.raises(ValueError, match="model samples"):
        T.VAML()(torch.zeros(2, 3, 4), torch.zeros(3, 5), lambda s: s.sum(-1))
    with pytest.raises(ValueError, match="model samples"):
        T.VAML()(torch.zeros(2, 2, 3, 4), torch.zeros(3, 4), lambda s: s.sum(-1))


# ---------------------------------------------------------------------------------------------------- VaGraM


def test_vagram_hand_computed():
    def v1(s):
        return s[..., 0] ** 2 + 3 * s[..., 1]

    def v2(s):
        return -s[..., 1]

    pred, target = torch.tensor([2.0, 0.0], dtype=D), torch.tensor([1.0, 2.0], dtype=D)
    # ∇V1(target) = (2, 3), Δ = (1, −2): 2² + 6² = 40;  ∇V2 = (0, −1): 0 + 2² = 4
    torch.testing.assert_close(T.VaGraM()(pred, target, v1), torch.tensor(40.0, dtype=D))
    torch.testing.assert_close(T.VaGraM()(pred, target, [v1, v2]), torch.tensor(22.0, dtype=D))
    torch.testing.assert_close(T.VaGraM()(pred, target, (v1, v2)), torch.tensor(22.0, dtype=D))
    grads = torch.tensor([[2.0, 3.0], [0.0, -1.0]], dtype=D)
    torch.testing.assert_close(T.VaGraM()(pred, target, value_grad=grads), torch.tensor(22.0, dtype=D))
    torch.testing.assert_close(T.VaGraM()(pred, target, value_grad=grads[0]), torch.tensor(40.0, dtype=D))


def test_vagram_linear_value_is_weighted_mse():
    c = torch.tensor([0.5, -2.0, 3.0], dtype=D)
    pred, target = torch.randn(6, 3, dtype=D), torch.randn(6, 3, dtype=D)
    out = T.VaGraM()(pred, target, lambda s: s @ c + 1.0)
    torch.testing.assert_close(out, ((pred - target) ** 2 * c**2).sum(-1))


def test_vagram_gradient_at_the_real_state_and_constant():
    critic = _critic(3)
    critic[0].weight.requires_grad_(True)  # even a trainable critic gets no gradient from the loss
    pred = torch.randn(5, 3, dtype=D, requires_grad=True)
    target = torch.randn(5, 3, dtype=D, requires_grad=True)
    out = T.VaGraM()(pred, target, critic)
    x = target.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x)
    torch.testing.assert_close(out, ((g * (pred - target)) ** 2).sum(-1))
    y = pred.detach().requires_grad_(True)
    (g_pred,) = torch.autograd.grad(critic(y).sum(), y)
    assert not torch.allclose(out, ((g_pred * (pred - target)) ** 2).sum(-1))
    out.sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    # the weights are constants: target only enters through the error ŝ − s
    torch.testing.assert_close(target.grad, -pred.grad)


def test_value_gradient_under_no_grad():
    critic = _critic(3)
    s = torch.randn(4, 3, dtype=D)
    with torch.no_grad():
        g = T.value_gradient(critic, s)
    x = s.clone().requires_grad_(True)
    torch.testing.assert_close(g, torch.autograd.grad(critic(x).sum(), x)[0])
    assert not g.requires_grad
    torch.testing.assert_close(T.value_gradient(lambda s: torch.ones(s.shape[:-1]), s), torch.zeros_like(s))


def test_vagram_clip_quantile():
    grads = torch.tensor([[1.0, 0.0], [0.0, 10.0]], dtype=D)  # norms 1 and 10
    torch.testing.assert_close(T.clip_gradient_norms(grads, 0.0), torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D))
    torch.testing.assert_close(T.clip_gradient_norms(grads, 1.0), grads)
    pred, target = torch.ones(2, 2, dtype=D), torch.zeros(2, 2, dtype=D)
    torch.testing.assert_close(
        T.VaGraM(clip_quantile=0.0)(pred, target, value_grad=grads), torch.tensor([1.0, 1.0], dtype=D)
    )
    with pytest.raises(ValueError, match="clip_quantile"):
        T.VaGraM(clip_quantile=1.5)


def test_vagram_critic_containers():
    critics = nn.ModuleList([_critic(3, seed=1), _critic(3, seed=2)])
    pred, target = torch.randn(5, 3, dtype=D), torch.randn(5, 3, dtype=D)
    expected = (T.VaGraM()(pred, target, critics[0]) + T.VaGraM()(pred, target, critics[1])) / 2
    torch.testing.assert_close(T.VaGraM()(pred, target, critics), expected)
    single = critics[0]  # an nn.Sequential is one value function, not a sequence of them
    torch.testing.assert_close(T.VaGraM()(pred, target, single), T.VaGraM()(pred, target, [single]))


def test_vagram_ensemble_broadcast():
    critic = _critic(3)
    pred, target = torch.randn(4, 6, 3, dtype=D), torch.randn(6, 3, dtype=D)
    out = T.VaGraM()(pred, target, critic)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out[2], T.VaGraM()(pred[2], target, critic))


def test_vagram_errors():
    pred = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="exactly one"):
        T.VaGraM()(pred, pred)
    with pytest.raises(ValueError, match="exactly one"):
        T.VaGraM()(pred, pred, lambda s: s.sum(-1), value_grad=pred)
    with pytest.raises(ValueError, match="broadcast"):
        T.VaGraM()(pred, torch.zeros(4, 2), lambda s: s.sum(-1))
    with pytest.raises(ValueError, match="value_grad"):
        T.VaGraM()(pred, pred, value_grad=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="empty"):
        T.VaGraM()(pred, pred, [])


# ---------------------------------------------------------------------------------------------------- all losses


@pytest.mark.parametrize("name", ["vvaml", "vaml", "vagram"])
def test_shapes_follow_the_per_sample_mle_loss(name):
    critic = _critic(4)
    pred, target = torch.randn(3, 5, 4, dtype=D), torch.randn(3, 5, 4, dtype=D)
    loss = T.make_task_loss(name)
    assert isinstance(loss, T.TaskLoss)
    assert loss(pred, target, critic).shape == (3, 5)
    assert loss(pred[0], target[0], critic).shape == (5,)
    if name == "vaml":
        assert loss(torch.randn(7, 3, 5, 4, dtype=D), target, critic).shape == (3, 5)


def test_evaluate_value_squeezes_and_checks():
    s = torch.randn(2, 3, 4)
    assert T.evaluate_value(lambda x: x.sum(-1, keepdim=True), s).shape == (2, 3)
    with pytest.raises(ValueError, match="value_fn must map"):
        T.evaluate_value(lambda x: x.sum(), s)
    with pytest.raises(ValueError, match="feature dimension"):
        T.evaluate_value(lambda x: x, torch.zeros(()))


# ---------------------------------------------------------------------------------------------------- registry


def test_builtins_are_registered():
    assert {"vvaml", "vaml", "vagram"} <= set(T.available_task_losses())
    assert isinstance(T.make_task_loss("vvaml", normalizer="moving").normalizer, T.VVAML("moving").normalizer.__class__)
    assert T.make_task_loss("vagram", clip_quantile=0.95).clip_quantile == 0.95


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'no_such_loss'") as err:
        T.make_task_loss("no_such_loss")
    assert "'vvaml'" in str(err.value)


def test_user_registered_loss_is_found_by_name(registry):
    @T.register_task_loss("test_abs_value_gap")
    class AbsValueGap(nn.Module):
        def __init__(self, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, predicted, target, value_fn):
            return self.scale * (T.evaluate_value(value_fn, predicted) - T.evaluate_value(value_fn, target)).abs()

    assert "test_abs_value_gap" in T.available_task_losses()
    loss = T.make_task_loss("test_abs_value_gap", scale=2.0)
    assert isinstance(loss, AbsValueGap) and isinstance(loss, T.TaskLoss)
    out = loss(torch.ones(3, 2), torch.zeros(3, 2), lambda s: s.sum(-1))
    torch.testing.assert_close(out, torch.full((3,), 4.0))

    @T.register_task_loss("factory_loss")
    def factory(power: int = 2):
        return lambda predicted, target, value_fn: (value_fn(predicted) - value_fn(target)) ** power

    assert T.make_task_loss("factory_loss", power=1)(torch.ones(1, 2), torch.zeros(1, 2), lambda s: s.sum(-1)) == 2


def test_duplicate_registration_raises(registry):
    with pytest.raises(ValueError, match="'vvaml'"):
        T.register_task_loss("vvaml")
    T.register_task_loss("mine")(T.VAML)
    with pytest.raises(ValueError, match="'mine' is already registered"):
        T.register_task_loss("mine")(T.VaGraM)
    T.register_task_loss("mine", replace=True)(T.VaGraM)
    assert isinstance(T.make_task_loss("mine"), T.VaGraM)


def test_registration_errors(registry):
    with pytest.raises(ValueError, match="non-empty string"):
        T.register_task_loss("")
    with pytest.raises(TypeError, match="decorates"):
        T.register_task_loss("not_callable")(3)
    T.register_task_loss("returns_int")(lambda: 3)
    with pytest.raises(TypeError, match="returns_int"):
        T.make_task_loss("returns_int")


# ---------------------------------------------------------------------------------------------------- hypergradients


def _weights(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def latent_problem(normalizer: str):
    """A toy latent model: prior tanh(xW), posterior tanh(xW + oU), decoder D; ℓ[B, T] = recon + ½‖post − prior‖²."""
    g = torch.Generator().manual_seed(0)
    b, t, nx, no, nf = 3, 4, 3, 2, 4
    x, o = torch.randn(b, t, nx, generator=g, dtype=D), torch.randn(b, t, no, generator=g, dtype=D)
    params = {
        k: (0.7 * torch.randn(*shape, generator=g, dtype=D)).requires_grad_(True)
        for k, shape in {"W": (nx, nf), "U": (no, nf), "D": (nf, no)}.items()
    }
    critic = _critic(nf)
    loss = T.VVAML(normalizer)
    if normalizer == "moving":  # initialise the statistics, then freeze them: closures must be deterministic
        with torch.no_grad():
            loss(torch.tanh(x @ params["W"]), torch.tanh(x @ params["W"] + o @ params["U"]), critic)
        loss.eval()

    def states(p):
        prior = torch.tanh(x @ p["W"])
        return prior, torch.tanh(x @ p["W"] + o @ p["U"])

    def per_sample_loss(p):
        prior, post = states(p)
        return ((post @ p["D"] - o) ** 2).sum(-1) + 0.5 * ((post - prior) ** 2).sum(-1)

    def upper_loss(p):
        prior, post = states(p)
        return loss(prior, post, critic).mean()

    return per_sample_loss, upper_loss, params, _weights((b, t))


def dynamics_problem(kind: str):
    """A Gaussian dynamics MLP: ℓ[N] = Gaussian NLL of s' with learned log-std; upper = VAML or VaGraM."""
    g = torch.Generator().manual_seed(0)
    n, ns, na, k = 10, 3, 2, 4
    s, a = torch.randn(n, ns, generator=g, dtype=D), torch.randn(n, na, generator=g, dtype=D)
    s_next = s + 0.5 * torch.tanh(a.sum(-1, keepdim=True)) + 0.1 * torch.randn(n, ns, generator=g, dtype=D)
    noise = torch.randn(k, n, ns, generator=g, dtype=D)  # fixed reparameterisation noise
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(ns + na, 6), nn.Tanh(), nn.Linear(6, ns)).to(D)
    params = {**dict(net.named_parameters()), "log_std": torch.full((ns,), -0.5, dtype=D, requires_grad=True)}
    critics = [_critic(ns, seed=1), _critic(ns, seed=2)]
    inp = torch.cat([s, a], -1)

    def mean(p):
        return functional_call(net, {k: v for k, v in p.items() if k != "log_std"}, (inp,))

    def per_sample_loss(p):
        z = (s_next - mean(p)) / p["log_std"].exp()
        return (0.5 * z**2 + p["log_std"]).sum(-1)

    def upper_loss(p):
        mu = mean(p)
        if kind == "vaml":
            return T.VAML()(mu + p["log_std"].exp() * noise, s_next, critics[0]).mean()
        if kind == "vagram":
            return T.VaGraM()(mu, s_next, critics[0]).mean()
        return T.VaGraM(clip_quantile=0.8)(mu, s_next, critics).mean()

    return per_sample_loss, upper_loss, params, _weights((n,))


@pytest.mark.parametrize("problem", ["vvaml-batch", "vvaml-moving", "vaml", "vagram", "vagram-2critics-clipped"])
def test_check_hypergradient_passes(problem):
    if problem.startswith("vvaml"):
        psl, up, params, w = latent_problem(problem.split("-")[1])
    else:
        psl, up, params, w = dynamics_problem(problem)
    rows = check_hypergradient(psl, up, params, w, strategies=[SameState(0.1), Lookahead(0.1, steps=1)])
    assert len(rows) == 2
    assert all(r.passed and r.analytic_norm > 1e-8 for r in rows), format_report(rows)
