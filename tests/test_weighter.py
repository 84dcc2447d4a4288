"""MetaWeighter and normalisers."""

import pytest
import torch

from bilevel import BatchNormalizer, MetaWeighter, MovingNormalizer, make_normalizer


def test_tempo_defaults_and_weight_range():
    w = MetaWeighter(266)
    linears = [m for m in w.modules() if isinstance(m, torch.nn.Linear)]
    # TEMPO's "5-layer dense network": 4 hidden layers and the output layer (the official MLP_meta)
    assert len(linears) == 5 and all(m.out_features == 400 for m in linears[:-1])
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in w.modules()) == 4
    assert sum(isinstance(m, torch.nn.ELU) for m in w.modules()) == 4
    out = w(100 * torch.randn(16, 50, 266))
    assert out.shape == (16, 50)
    assert out.min() > 0.75 and out.max() < 1.25


def test_inputs_are_detached():
    w = MetaWeighter(4, layers=2, hidden=8)
    x = torch.randn(10, 4, requires_grad=True)
    w(x).sum().backward()
    assert x.grad is None
    assert all(p.grad is not None for p in w.parameters())


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_norm_options_and_output_norm(norm):
    w = MetaWeighter(3, layers=2, hidden=8, norm=norm, activation="relu", output_norm=True, scale=1.0, shift=0.0)
    out = w(torch.randn(5, 7, 3))
    assert out.shape == (5, 7) and (out > 0).all() and (out < 1).all()
    # the official code's output BatchNorm centres the logits of the batch
    assert abs(float(w.logits(torch.randn(64, 3)).mean().detach())) < 1e-5


def test_output_norm_spreads_initial_weights_as_the_official_code():
    # official TEMPO: BatchNorm (learnable γ = 1, β = 0) on the logit, then 0.5σ(·) + 0.75: std ≈ 0.5·std(σ(z)) ≈
    # 0.105 for z ~ N(0, 1), whatever the scale of the raw logits; without it the spread is the raw logits'
    torch.manual_seed(0)
    x = torch.randn(4096, 20)
    normed = MetaWeighter(20, layers=3, hidden=64, output_norm=True)
    plain = MetaWeighter(20, layers=3, hidden=64)
    plain.load_state_dict(normed.state_dict(), strict=False)
    z = torch.randn(1_000_000)
    expected = float((0.5 * torch.sigmoid(z) + 0.75).std())
    with torch.no_grad():  # raw logits 10x smaller: the plain weighter's spread shrinks with them
        for w in (normed, plain):
            w.head.weight.mul_(0.1)
            w.head.bias.zero_()
    with torch.no_grad():
        assert abs(float(normed(x).std()) - expected) < 0.005 and 0.1 < expected < 0.11
        assert float(plain(x).std()) < 0.1 * expected
        assert abs(float(normed(x).mean()) - 1.0) < 0.005
    # the affine parameters are learnable and set the spread: γ = 0 gives w = 0.5σ(β) + 0.75 everywhere
    bn = normed.output_norm
    assert bn is not None and bn.affine and {n for n, _ in bn.named_parameters()} == {"weight", "bias"}
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.fill_(2.0)
    torch.testing.assert_close(normed(x), torch.full((4096,), 0.5 * torch.sigmoid(torch.tensor(2.0)).item() + 0.75))


def test_weighter_errors():
    with pytest.raises(ValueError, match="activation"):
        MetaWeighter(3, activation="swish2")
    with pytest.raises(ValueError, match="norm"):
        MetaWeighter(3, norm="group")
    with pytest.raises(ValueError, match="expects 3 features"):
        MetaWeighter(3, layers=1, hidden=4)(torch.randn(2, 4))


def test_batch_normalizer_uses_batch_statistics_with_gradient():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = BatchNormalizer(eps=0.0)(x)
    torch.testing.assert_close(y, (x - 2.5) / x.detach().std(unbiased=False))
    (g,) = torch.autograd.grad(y[0], x)
    assert (g[1:] != 0).all()  # the statistics are differentiated through


def test_moving_normalizer_updates_then_freezes():
    n = MovingNormalizer(momentum=0.5, eps=0.0)
    n(torch.tensor([0.0, 2.0]))  # initialises to mean 1, var 1
    assert float(n.mean) == 1.0 and float(n.var) == 1.0
    n(torch.tensor([4.0, 6.0]))  # batch mean 5, var 1
    assert float(n.mean) == 3.0 and float(n.var) == 1.0
    n.eval()
    y = n(torch.tensor([3.0, 100.0]))
    assert float(n.mean) == 3.0 and y[0] == 0.0
    x = torch.tensor([1.0, 5.0], requires_grad=True)
    n.train()
    (g,) = torch.autograd.grad(n(x).sum(), x)
    torch.testing.assert_close(g, torch.ones(2) / torch.sqrt(n.var))  # statistics are constants
    assert "mean" in n.state_dict()


def test_make_normalizer():
    assert isinstance(make_normalizer("batch"), BatchNormalizer)
    assert isinstance(make_normalizer("moving"), MovingNormalizer)
    with pytest.raises(ValueError, match="unknown normalizer"):
        make_normalizer("layer")
    with pytest.raises(ValueError, match="momentum"):
        MovingNormalizer(momentum=0.0)
