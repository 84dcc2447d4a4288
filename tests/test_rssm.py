"""RSSM world model: shapes, gradients, KL balancing, resets, imagination, the per-sample interface."""

from __future__ import annotations

import pytest
import torch

import bilevel as B
from worldmodels import ModelLoss, RSSMWorldModel, WorldModel
from worldmodels.rssm import RSSM, ConvDecoder, ConvEncoder, free_nats_on_mean

SMALL = {"deter": 16, "stoch": 4, "hidden": 16, "mlp_layers": 1, "mlp_units": 16, "depth": 4}


def _batch(obs_shape, b=3, t=6, a=2, pixels=False):
    g = torch.Generator().manual_seed(0)
    obs = (
        torch.randint(0, 256, (b, t, *obs_shape), generator=g, dtype=torch.uint8)
        if pixels
        else torch.randn(b, t, *obs_shape, generator=g)
    )
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[1, 3] = True
    return {
        "obs": obs,
        "action": torch.randn(b, t, a, generator=g),
        "reward": torch.randn(b, t, generator=g),
        "discount": torch.ones(b, t),
        "is_first": is_first,
    }


@pytest.mark.parametrize("classes", [0, 5])
@pytest.mark.parametrize("obs_shape", [(7,), (1, 32, 32), (3, 64, 64)])
def test_loss_shapes_and_gradients(classes, obs_shape):
    pixels = len(obs_shape) == 3
    model = RSSMWorldModel(obs_shape, 2, classes=classes, discount_head=True, **SMALL)
    assert isinstance(model, WorldModel)
    out = model.loss(_batch(obs_shape, pixels=pixels))
    assert isinstance(out, ModelLoss)
    assert out.loss.shape == (3, 6)
    assert set(out.terms) == {"obs", "reward", "discount", "kl"}
    assert all(v.shape == (3, 6) for v in out.terms.values())
    stoch = 4 * classes if classes else 4
    assert out.states["post"]["stoch"].shape == (3, 6, stoch)
    assert out.states["feat"].shape == (3, 6, stoch + 16)
    out.loss.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_per_step_loss_depends_only_on_the_past():
    """ℓ_t must not see o_{t'} for t' > t: the filter is causal."""
    model = RSSMWorldModel((5,), 2, **SMALL)
    batch = _batch((5,))
    noise = (torch.randn(3, 6, 4), torch.randn(3, 6, 4))
    base = model.loss(batch, noise).loss
    batch["obs"][:, 4] += 10.0
    moved = model.loss(batch, noise).loss
    torch.testing.assert_close(moved[:, :4], base[:, :4])
    assert (moved[:, 4] != base[:, 4]).all()


def test_is_first_resets_the_state():
    rssm = RSSM(embed=6, action_dim=2, deter=8, stoch=3, hidden=8)
    embed, action = torch.randn(2, 5, 6), torch.randn(2, 5, 2)
    noise = (torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    first = torch.zeros(2, 5, dtype=torch.bool)
    first[:, 0] = True
    first[0, 2] = True
    post, _ = rssm.observe(embed, action, first, noise=noise)
    # sequence 0 restarted at t=2: same as a fresh sequence starting there
    fresh, _ = rssm.observe(embed[:1, 2:], action[:1, 2:], first[:1, 2:], noise=(noise[0][:1, 2:], noise[1][:1, 2:]))
    torch.testing.assert_close(post["deter"][0, 2:], fresh["deter"][0])
    assert not torch.allclose(post["deter"][1, 2:], fresh["deter"][0])


def test_kl_balancing_matches_formula():
    rssm = RSSM(embed=4, action_dim=1, deter=4, stoch=3, hidden=4)
    g = torch.Generator().manual_seed(1)
    q = {"mean": torch.randn(5, 3, generator=g, requires_grad=True), "std": torch.rand(5, 3, generator=g) + 0.5}
    p = {"mean": torch.randn(5, 3, generator=g, requires_grad=True), "std": torch.rand(5, 3, generator=g) + 0.5}
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q["mean"], q["std"]), torch.distributions.Normal(p["mean"], p["std"])
    ).sum(-1)
    value = rssm.kl(q, p, balance=0.8)
    torch.testing.assert_close(value, kl)  # value: both parts equal the KL
    # gradients: 0.8 of the KL's gradient reaches the prior, 0.2 the posterior
    gq, gp = torch.autograd.grad(value.sum(), [q["mean"], p["mean"]])
    rq, rp = torch.autograd.grad(kl.sum(), [q["mean"], p["mean"]])
    torch.testing.assert_close(gq, 0.2 * rq)
    torch.testing.assert_close(gp, 0.8 * rp)
    # second order: the balanced gradient field's exact Jacobian, checked against finite differences of it
    mq = q["mean"].detach().double().requires_grad_(True)
    sq, mp, sp = q["std"].double(), p["mean"].detach().double(), p["std"].double()

    def grad_field(x):
        v = rssm.kl({"mean": x, "std": sq}, {"mean": mp.requires_grad_(True), "std": sp}, balance=0.8).sum()
        return torch.autograd.grad(v, [x, mp], create_graph=True)

    _, gm = grad_field(mq)
    v = torch.randn_like(mq)
    (jvp_auto,) = torch.autograd.grad((gm * v).sum(), mq)  # Jᵀv = Jv: the Jacobian is diagonal here
    eps = 1e-6
    fd = (grad_field(mq + eps * v)[1] - grad_field(mq - eps * v)[1]) / (2 * eps)
    torch.testing.assert_close(jvp_auto, fd)  # a detach()-based balance would give 0 here
    # free nats clip each step from below
    assert (rssm.kl(q, p, free=100.0) == 100.0).all()


@pytest.mark.parametrize("classes", [0, 3])
def test_balanced_kl_forward_mode_matches_reverse_mode(classes):
    """torch.func.jvp through the balanced KL (its ``jvp`` rule) is the transpose of its ``backward``:
    ⟨u, J t⟩ = ⟨Jᵀ u, t⟩ for random u, t, with the balanced (surrogate) partials on both sides."""
    rssm = RSSM(embed=4, action_dim=1, deter=4, stoch=2, classes=classes, hidden=4)
    g = torch.Generator().manual_seed(3)

    def rand(*shape, positive=False):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return x.abs() + 0.5 if positive else x

    primals = (
        (rand(5, 2, 3), rand(5, 2, 3))
        if classes
        else (rand(5, 2), rand(5, 2, positive=True), rand(5, 2), rand(5, 2, positive=True))
    )

    def f(*x):
        return rssm.kl(*_states(classes, x), balance=0.8)

    tangents = tuple(rand(*x.shape) for x in primals)
    value, jv = torch.func.jvp(f, primals, tangents)
    leaves = [x.clone().requires_grad_(True) for x in primals]
    torch.testing.assert_close(value, f(*leaves).detach())
    u = rand(5)
    vjp = torch.autograd.grad((f(*leaves) * u).sum(), leaves)
    torch.testing.assert_close((jv * u).sum(), sum((a * t).sum() for a, t in zip(vjp, tangents, strict=True)))
    # the balance is visible: the unbalanced KL's forward derivative differs
    _, jv_half = torch.func.jvp(lambda *x: rssm.kl(*_states(classes, x), balance=0.5), primals, tangents)
    assert not torch.allclose(jv, jv_half)


@pytest.mark.parametrize("classes", [0, 3])
def test_balanced_kl_under_compile_has_the_same_first_order_derivatives(classes, monkeypatch):
    """Under torch.compile the balanced KL is the two-copy ``detach`` form (dynamo ignores an autograd.Function's
    ``jvp`` inside torch.func.jvp): same value, same forward-mode and reverse-mode derivatives as the function."""
    rssm = RSSM(embed=4, action_dim=1, deter=4, stoch=2, classes=classes, hidden=4)
    g = torch.Generator().manual_seed(5)
    shapes = [(5, 2, 3), (5, 2, 3)] if classes else [(5, 2)] * 4
    primals = tuple(
        torch.randn(*s, generator=g, dtype=torch.float64).abs() + 0.5
        if not classes and i % 2
        else torch.randn(*s, generator=g, dtype=torch.float64)
        for i, s in enumerate(shapes)
    )
    tangents = tuple(torch.randn(*x.shape, generator=g, dtype=torch.float64) for x in primals)
    u = torch.randn(5, generator=g, dtype=torch.float64)

    def derivatives():
        def f(*x):
            return rssm.kl(*_states(classes, x), balance=0.8, free=0.1)

        value, jv = torch.func.jvp(f, primals, tangents)
        leaves = [x.clone().requires_grad_(True) for x in primals]
        return value, jv, torch.autograd.grad((f(*leaves) * u).sum(), leaves)

    function = derivatives()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    composite = derivatives()
    torch.testing.assert_close(composite[0], function[0])
    torch.testing.assert_close(composite[1], function[1])
    for a, b in zip(composite[2], function[2], strict=True):
        torch.testing.assert_close(a, b)
    assert function[1].abs().sum() > 0


def _states(classes, x):
    if classes:
        return {"logits": x[0]}, {"logits": x[1]}
    return {"mean": x[0], "std": x[1]}, {"mean": x[2], "std": x[3]}


def test_categorical_kl_and_straight_through_sample():
    rssm = RSSM(embed=4, action_dim=1, deter=4, stoch=2, classes=3, hidden=4)
    lq = torch.randn(4, 2, 3, requires_grad=True)
    lp = torch.randn(4, 2, 3)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=lq), torch.distributions.Categorical(logits=lp)
    ).sum(-1)
    torch.testing.assert_close(rssm.kl({"logits": lq}, {"logits": lp}), kl)
    sample = rssm._sample({"logits": lq}, None).reshape(4, 2, 3)
    assert torch.equal(sample.detach().sum(-1), torch.ones(4, 2))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    (g,) = torch.autograd.grad((sample * torch.randn(4, 2, 3)).sum(), lq)
    assert g.abs().sum() > 0  # straight-through gradient
    assert rssm.noise_shape(4) == (4, 2)
    with pytest.raises(ValueError, match="noise_shape"):  # per-class noise (Gumbel-max's shape) is refused
        rssm._sample({"logits": lq}, torch.rand(4, 2, 3))


def test_categorical_one_hot_samples_the_categorical():
    """Inverse-CDF one-hot samples: frequencies match the probabilities (chi-square), a class of probability 0 is
    never drawn, the last class takes u beyond a CDF that rounds below 1, and a given u picks the class whose CDF
    interval holds it."""
    from scipy.stats import chisquare

    from worldmodels.rssm import categorical_one_hot

    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.0, 0.25, 0.05, 0.6])
    n = 200_000
    onehot = categorical_one_hot(p.expand(n, 5), torch.rand(n))
    assert torch.equal(onehot.sum(-1), torch.ones(n)) and set(onehot.unique().tolist()) == {0.0, 1.0}
    counts = onehot.sum(0)
    assert counts[1] == 0
    keep = p > 0
    assert chisquare(counts[keep].numpy(), (n * p[keep]).numpy()).pvalue > 1e-3
    # a wrong sampler (e.g. the CDF compared the wrong way) fails this by far: the test can fail
    shifted = categorical_one_hot(p.roll(1).expand(n, 5), torch.rand(n)).sum(0)[keep]
    assert chisquare(shifted.numpy(), (shifted.sum() * p[keep] / p[keep].sum()).numpy()).pvalue < 1e-6
    u = torch.tensor([0.0, 0.0999, 0.1, 0.349, 0.35, 0.3999, 0.4, 0.99999])
    index = categorical_one_hot(p.expand(len(u), 5), u).argmax(-1)
    assert index.tolist() == [0, 0, 2, 2, 3, 3, 4, 4]
    short = torch.tensor([[0.5, 0.4999]])  # its CDF ends below 1: u past it goes to the last class
    assert categorical_one_hot(short, torch.tensor([0.99995])).tolist() == [[0.0, 1.0]]


def test_imagine_shapes():
    model = RSSMWorldModel((5,), 2, **SMALL)
    out = model.loss(_batch((5,)))
    start = {k: v.detach().flatten(0, 1) for k, v in out.states["post"].items()}
    policy = torch.nn.Linear(model.rssm.feat_size, 2)
    states, actions = model.rssm.imagine(lambda f: torch.tanh(policy(f)), start, horizon=4)
    assert states["deter"].shape == (5, 18, 16) and actions.shape == (4, 18, 2)
    assert set(states) == {"deter", "stoch", "mean", "std"}


@pytest.mark.parametrize("classes", [0, 3])
def test_imagine_features_only_equals_features_of_the_states(classes):
    """``keys=("feat",)`` (the actor-critic's call) gives exactly features(states) of the full rollout under the same
    random draws, with the same gradient to the policy's parameters; an unknown key raises."""
    model = RSSMWorldModel((5,), 2, classes=classes, **SMALL)
    start = {k: v.detach().flatten(0, 1) for k, v in model.loss(_batch((5,))).states["post"].items()}
    policy = torch.nn.Linear(model.rssm.feat_size, 2)
    act = lambda f: torch.tanh(policy(f))  # noqa: E731
    torch.manual_seed(3)
    full, a_full = model.rssm.imagine(act, start, horizon=4)
    feat_full = model.rssm.features(full)
    (g_full,) = torch.autograd.grad(feat_full.square().sum(), policy.weight)
    torch.manual_seed(3)
    only, a_only = model.rssm.imagine(act, start, horizon=4, keys=("feat",))
    assert set(only) == {"feat"} and only["feat"].shape == (5, 18, model.rssm.feat_size)
    torch.testing.assert_close(only["feat"], feat_full, rtol=0, atol=0)
    torch.testing.assert_close(a_only, a_full, rtol=0, atol=0)
    (g_only,) = torch.autograd.grad(only["feat"].square().sum(), policy.weight)
    torch.testing.assert_close(g_only, g_full)
    assert g_only.abs().sum() > 0
    with pytest.raises(KeyError, match="unknown state keys"):
        model.rssm.imagine(act, start, horizon=2, keys=("feat", "features"))


@pytest.mark.parametrize("classes", [0, 3])
def test_rssm_hypergradient_matches_finite_differences(classes):
    """The bi-level core on the real RSSM (float64, fixed latent noise) vs finite differences.

    Gaussian latents: SameState and Lookahead K = 2 (exact second derivatives through the balanced KL).
    Categorical latents: SameState only — the straight-through sample is piecewise constant in θ, so an unrolled
    step moves argmax boundaries and finite differences of L_up(θ') measure jumps, not the ST surrogate.
    """
    torch.manual_seed(0)
    model = RSSMWorldModel((3,), 1, deter=6, stoch=2, classes=classes, hidden=6, mlp_layers=1, mlp_units=6).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch((3,), b=2, t=4, a=1).items()}
    shape = model.rssm.noise_shape(2, 4)
    noise = (
        (torch.rand(shape, dtype=torch.float64), torch.rand(shape, dtype=torch.float64))
        if classes
        else (torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64))
    )
    critic = torch.nn.Linear(model.rssm.feat_size, 1).double().requires_grad_(False)

    def _call(p):
        return torch.func.functional_call(model, p, (batch,), {"noise": noise})  # forward is loss()

    def per_sample_loss(p):
        return _call(p).loss

    def upper_loss(p):
        states = _call(p).states
        post, prior = states["post"], states["prior"]
        v_post = critic(model.rssm.features(post))
        v_prior = critic(model.rssm.features(prior))
        return ((v_post - v_prior) ** 2).mean()

    weights = 0.75 + 0.5 * torch.rand(2, 4, dtype=torch.float64)
    rows = B.check_hypergradient(
        per_sample_loss,
        upper_loss,
        dict(model.named_parameters()),
        weights,
        [B.SameState(0.1)] + ([] if classes else [B.Lookahead(0.1, 2)]),
    )
    assert all(r.passed for r in rows), B.format_report(rows)


def test_unimix_latents_are_a_normalised_mixture_with_the_uniform():
    torch.manual_seed(0)
    u, c = 0.01, 4
    mixed = RSSM(6, 2, deter=8, stoch=3, classes=c, hidden=8, unimix=u)
    plain = RSSM(6, 2, deter=8, stoch=3, classes=c, hidden=8)
    plain.load_state_dict(mixed.state_dict())
    x = 30.0 * torch.randn(5, 3 * c)  # large logits: the plain softmax has classes at probability ~0
    p_mixed, p_plain = mixed._stats(x)["logits"].exp(), plain._stats(x)["logits"].softmax(-1)
    torch.testing.assert_close(p_mixed.sum(-1), torch.ones(5, 3))
    torch.testing.assert_close(p_mixed, (1 - u) * p_plain + u / c)
    assert p_mixed.min() >= u / c * (1 - 1e-5) and p_plain.min() < 1e-6
    # the sample follows the mixture: a class of plain probability ~0 is drawn at rate ~u/C
    stats = {"logits": mixed._stats(x[:1].expand(20000, -1))["logits"]}
    sample = mixed._sample(stats, None).reshape(20000, 3, c)
    rare = p_plain[0] < 1e-9
    freq = sample[rare.expand(20000, -1, -1)].reshape(20000, -1).mean(0)
    assert ((freq - u / c).abs() < 5 * (u / c / 20000) ** 0.5 + 1e-4).all(), freq
    # the KL of two unimix distributions stays bounded where the plain one explodes
    post, prior = mixed._stats(x[:1]), mixed._stats(-x[:1])
    assert float(mixed.kl(post, prior)) < 3 * c * torch.log(torch.tensor(c / u))


def test_unimix_zero_is_dreamerv2_and_bad_values_raise():
    torch.manual_seed(0)
    a = RSSM(6, 2, deter=8, stoch=3, classes=4, hidden=8, unimix=0.0)
    x = torch.randn(5, 12)
    torch.testing.assert_close(a._stats(x)["logits"], x.reshape(5, 3, 4), rtol=0, atol=0)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="unimix"):
            RSSM(6, 2, classes=4, unimix=bad)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("which", ["all", "later layers", "biases"])
def test_conv_encoder_tangent_from_the_forwards_activations_equals_torch_func_jvp(size, which):
    """ConvEncoder.tangent (two convs per layer, ELU′ from the ELU output) gives torch.func.jvp's tangent (float64),
    for tangents on every parameter, on the later layers only (the first layers' tangent zero) and on biases only."""
    torch.manual_seed(0)
    enc = ConvEncoder(3, size, depth=4).double()
    x = torch.rand(2, 3, 3, size, size, dtype=torch.float64) - 0.5
    params = {n: p.detach() for n, p in enc.named_parameters()}
    keep = {
        "all": lambda n: True,
        "later layers": lambda n: not n.startswith(("net.0.", "net.2.")),
        "biases": lambda n: n.endswith("bias"),
    }[which]
    tangents = {n: torch.randn_like(p) for n, p in params.items() if keep(n)}

    def f(p):
        return torch.func.functional_call(enc, {**params, **p}, (x,))

    want = torch.func.jvp(f, ({n: params[n] for n in tangents},), (tangents,))[1]
    embed, acts = enc.forward_with_activations(x)
    torch.testing.assert_close(embed, enc(x), rtol=0, atol=0)
    got = enc.tangent(x, [a.detach() for a in acts], params, tangents)
    assert want.abs().max() > 0 and got.shape == (2, 3, enc.out_size)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", [32, 64])
def test_conv_decoder_equals_its_transposed_convs_on_the_1x1_input(size):
    """ConvDecoder computes its first transposed conv (on a 1×1 input) as a matrix product: the same images and
    parameter gradients as running ``net`` as a plain stack of ConvTranspose2d on the [N, first, 1, 1] input."""
    torch.manual_seed(0)
    dec = ConvDecoder(10, 3, size, depth=4).double()
    feat = torch.randn(2, 3, 10, dtype=torch.float64)
    got = dec(feat)
    assert got.shape == (2, 3, 3, size, size)
    params = [p for _, p in sorted(dec.named_parameters())]
    g_got = torch.autograd.grad((got * torch.cos(got)).sum(), params)
    want = dec.net(dec.linear(feat).reshape(-1, dec.first, 1, 1)).reshape(2, 3, 3, size, size)
    g_want = torch.autograd.grad((want * torch.cos(want)).sum(), params)
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b)


def test_free_nats_on_the_batch_mean_are_dreamerv2s_max_of_the_mean():
    kl = torch.tensor([[0.2, 0.4], [0.6, 3.0]], requires_grad=True)  # mean 1.05
    for free, active in ((1.0, True), (1.1, False), (0.0, True)):
        out = free_nats_on_mean(kl, free)
        assert float(out.detach().mean()) == pytest.approx(max(float(kl.detach().mean()), free))
        (grad,) = torch.autograd.grad(out.sum(), kl)
        torch.testing.assert_close(grad, torch.ones_like(kl) if active else torch.zeros_like(kl))


def test_kl_free_avg_lets_a_steps_weight_reach_its_kl_below_free_nats():
    """Per-step free nats cut w_t off from KL_t wherever KL_t < free; on the batch mean they do not (while the
    mean is above free nats), and with w = 1 the mean loss is DreamerV2's max(mean KL, free) either way."""
    torch.manual_seed(0)
    batch = _batch((5,))
    noise = (torch.randn(3, 6, 4), torch.randn(3, 6, 4))
    model = RSSMWorldModel((5,), 2, **SMALL)
    raw = model.loss(batch, noise).terms["kl"].detach()
    free = float(raw.quantile(0.3))  # a third of the steps below it, the mean above it
    assert float(raw.mean()) > free
    b, t = [int(i[0]) for i in (raw < free).nonzero(as_tuple=True)]
    prior = [p for n, p in model.named_parameters() if n.startswith("rssm.img_out")]
    assert prior
    grads = {}
    for avg in (False, True):
        model.kl_free, model.kl_free_avg = free, avg
        out = model.loss(batch, noise)
        grads[avg] = torch.autograd.grad(out.terms["kl"][b, t], prior, allow_unused=True)
        expected = raw.mean() if avg else raw.clamp_min(free).mean()
        assert float(out.terms["kl"].detach().mean()) == pytest.approx(float(expected), rel=1e-5)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads[False])  # clipped: no gradient
    assert sum(float(g.abs().sum()) for g in grads[True] if g is not None) > 0
