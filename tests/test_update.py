"""BilevelUpdate: one full bi-level step on real modules and optimisers."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bilevel as B


def _setup(strategy, bn: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 1)]
    model = nn.Sequential(*layers)
    weighter = B.MetaWeighter(2, layers=1, hidden=8, norm="none")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_w = torch.optim.SGD(weighter.parameters(), lr=0.5)
    x, y = torch.randn(12, 3), torch.randn(12)
    xm, ym = torch.randn(6, 3), torch.randn(6)

    def forward(fn):
        loss = (fn(x).squeeze(-1) - y) ** 2
        return B.LevelOutputs(loss=loss, features=torch.stack([loss.detach(), y], -1))

    def upper(fn):
        return ((fn(xm).squeeze(-1) - ym) ** 2).mean()

    upd = B.BilevelUpdate(
        model,
        opt,
        strategy,
        weighter if strategy.trains_weighter else None,
        opt_w if strategy.trains_weighter else None,
    )
    return upd, model, weighter, forward, upper, (x, y, xm, ym)


@pytest.mark.parametrize("strategy", [B.SameState(0.1), B.Lookahead(0.1, 2), B.Implicit("cg", iters=5, damping=1.0)])
def test_step_equals_manual_bilevel_update(strategy):
    upd, model, weighter, forward, upper, (x, y, xm, ym) = _setup(strategy)
    model_ref, weighter_ref = copy.deepcopy(model), copy.deepcopy(weighter)

    metrics = upd.step(forward, upper)

    # Manual reference with the functional API.
    loss_ref = (model_ref(x).squeeze(-1) - y) ** 2
    w = weighter_ref(torch.stack([loss_ref.detach(), y], -1))

    def psl(p):
        return (torch.func.functional_call(model_ref, p, (x,)).squeeze(-1) - y) ** 2

    def up(p):
        return ((torch.func.functional_call(model_ref, p, (xm,)).squeeze(-1) - ym) ** 2).mean()

    g = B.hypergradient(strategy, psl, up, dict(model_ref.named_parameters()), w.detach())
    w.backward(g)
    with torch.no_grad():
        for p in weighter_ref.parameters():
            p -= 0.5 * p.grad
    (w.detach() * loss_ref).mean().backward()
    with torch.no_grad():
        for p in model_ref.parameters():
            p -= 0.1 * p.grad

    for a, b in zip(model.parameters(), model_ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(weighter.parameters(), weighter_ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert metrics["hypergrad_norm"] == pytest.approx(float(g.norm()), rel=1e-4)
    for key in (
        "lower_loss",
        "lower_loss_unweighted",
        "weight_mean",
        "weight_std",
        "weight_min",
        "weight_max",
        "model_grad_norm",
        "weighter_grad_norm",
    ):
        assert key in metrics
    assert 0.75 < metrics["weight_min"] <= metrics["weight_mean"] <= metrics["weight_max"] < 1.25


@pytest.mark.parametrize("strategy", [B.SameState(0.1), B.Lookahead(0.1, 3), B.Implicit("cg", iters=3, damping=1.0)])
def test_batchnorm_running_statistics_change_only_by_the_real_forward(strategy):
    upd, model, _, forward, upper, (x, _, _, _) = _setup(strategy, bn=True)
    reference = copy.deepcopy(model)
    reference(x)  # exactly one real training-mode forward on the lower batch
    upd.step(forward, upper)
    bn, bn_ref = model[1], reference[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_shared_forward_upper_and_grad_clip():
    """TEMPO's shape: the upper loss comes from the same forward as the lower loss."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    weighter = B.MetaWeighter(2, layers=1, hidden=4)
    upd = B.BilevelUpdate(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        B.SameState(0.1),
        weighter,
        torch.optim.Adam(weighter.parameters()),
        grad_clip=1e-3,
    )
    x = 100 * torch.randn(20, 3)

    def forward(fn):
        out = fn(x)
        return B.LevelOutputs(loss=(out**2).sum(-1), features=out.detach(), upper=(out[:, 0] - out[:, 1]) ** 2)

    before = [p.detach().clone() for p in model.parameters()]
    metrics = upd.step(forward)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert metrics["model_grad_norm"] > 1.0
    assert float(moved.detach()) == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr · clipped norm
    assert "upper_loss" in metrics


def test_naive_and_uniform_need_no_weighter():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(10, 3), torch.randn(10)

    def forward(fn):
        loss = (fn(x).squeeze(-1) - y) ** 2
        return B.LevelOutputs(loss=loss, upper=loss.detach() * torch.arange(10.0))

    m = B.BilevelUpdate(model, torch.optim.SGD(model.parameters(), lr=0.01), B.Naive()).step(forward)
    assert m["weight_mean"] == pytest.approx(1.0, abs=1e-6) and m["weight_std"] > 0.5
    m = B.BilevelUpdate(model, torch.optim.SGD(model.parameters(), lr=0.01), B.Uniform()).step(forward)
    assert m["weight_std"] == 0.0 and m["lower_loss"] == pytest.approx(m["lower_loss_unweighted"])


def test_update_errors():
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="trains a weighter"):
        B.BilevelUpdate(model, torch.optim.SGD(model.parameters(), lr=0.1), B.SameState(0.1))
    weighter = B.MetaWeighter(1, layers=1, hidden=2)
    upd = B.BilevelUpdate(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        B.SameState(0.1),
        weighter,
        torch.optim.SGD(weighter.parameters(), lr=0.1),
    )
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="must return features"):
        upd.step(lambda fn: B.LevelOutputs(loss=fn(x).squeeze(-1) ** 2))
    naive = B.BilevelUpdate(model, torch.optim.SGD(model.parameters(), lr=0.1), B.Naive())
    with pytest.raises(ValueError, match="per-sample upper loss"):
        naive.step(lambda fn: B.LevelOutputs(loss=fn(x).squeeze(-1) ** 2, upper=torch.ones(())))


def test_step_without_meta_uses_the_weights_but_leaves_the_weighter_alone():
    upd, model, weighter, forward, upper, (x, y, _xm, _ym) = _setup(B.SameState(0.1))
    model_ref, weighter_before = copy.deepcopy(model), copy.deepcopy(weighter)
    calls = []

    def counted_upper(fn):
        calls.append(1)
        return upper(fn)

    metrics = upd.step(forward, counted_upper, meta=False)
    assert not calls  # no upper level this call
    assert "hypergrad_norm" not in metrics
    for a, b in zip(weighter.parameters(), weighter_before.parameters(), strict=True):
        assert torch.equal(a, b)
    loss_ref = (model_ref(x).squeeze(-1) - y) ** 2
    w = weighter_before(torch.stack([loss_ref.detach(), y], -1)).detach()
    assert not torch.allclose(w, torch.ones_like(w))
    (w * loss_ref).mean().backward()
    with torch.no_grad():
        for p in model_ref.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), model_ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    upd.step(forward, counted_upper, meta=True)
    assert calls


def test_outputs_passed_in_are_reused_and_give_the_same_step():
    """``step(forward, outputs=forward(model))`` runs no second real forward and equals ``step(forward)``."""
    upd, model, weighter, forward, upper, _ = _setup(B.SameState(0.1))
    upd_ref, model_ref, weighter_ref, forward_ref, upper_ref, _ = _setup(B.SameState(0.1))
    calls = []

    def counting(fn):
        calls.append(fn is model)
        return forward(fn)

    levels = counting(model)
    metrics = upd.step(counting, upper, outputs=levels)
    metrics_ref = upd_ref.step(forward_ref, upper_ref)
    assert calls.count(True) == 1  # only the caller's own real forward
    assert metrics["upper_loss"] == pytest.approx(metrics_ref["upper_loss"])
    for p, q in zip(
        [*model.parameters(), *weighter.parameters()],
        [*model_ref.parameters(), *weighter_ref.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(p, q)


def test_a_supplied_jvp_replaces_the_double_backward_and_gives_the_same_step():
    """``step(..., jvp=)``: SameState(method="auto") computes (1/N) J a by the caller's forward-mode function (called
    once, at θ, along a = ∇θ L_up) and θ's gradient by a plain backward: the same step as the double backward's
    (float64); an explicit ``method="double_backward"`` ignores the function."""
    torch.set_default_dtype(torch.float64)
    try:
        runs = [_setup(B.SameState(0.1)) for _ in range(2)] + [_setup(B.SameState(0.1, method="double_backward"))]
    finally:
        torch.set_default_dtype(torch.float32)
    calls = []

    def jvp_of(model, x, y):
        def jvp(params, tangents):
            calls.append(sorted(tangents) == sorted(dict(model.named_parameters())))

            def loss(p):
                return (torch.func.functional_call(model, {**params, **p}, (x.double(),)).squeeze(-1) - y.double()) ** 2

            return torch.func.jvp(loss, ({n: params[n] for n in tangents},), (tangents,))

        return jvp

    (
        (upd, model, weighter, forward, upper, (x, y, _, _)),
        (upd_ref, model_ref, weighter_ref, forward_ref, upper_ref, _),
    ) = runs[:2]
    metrics = upd.step(forward, upper, jvp=jvp_of(model, x, y))
    metrics_ref = upd_ref.step(forward_ref, upper_ref)
    assert calls == [True]
    assert metrics["hypergrad_norm"] > 0
    assert metrics["hypergrad_norm"] == pytest.approx(metrics_ref["hypergrad_norm"], rel=1e-10)
    for p, q in zip(
        [*model.parameters(), *weighter.parameters()],
        [*model_ref.parameters(), *weighter_ref.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    upd2, model2, _, forward2, upper2, (x2, y2, _, _) = runs[2]
    calls.clear()
    upd2.step(forward2, upper2, jvp=jvp_of(model2, x2, y2))
    assert calls == []


def test_auto_falls_back_to_the_double_backward_with_a_warning_once_and_jvp_raises():
    """A supplied forward-mode function that fails (RuntimeError): ``method="auto"`` takes the double backward —
    the same step as without the function — and says so once, naming the error; ``method="jvp"`` raises it."""
    torch.set_default_dtype(torch.float64)
    try:
        (upd, model, _, forward, upper, _), (upd_ref, model_ref, _, forward_ref, upper_ref, _) = [
            _setup(B.SameState(0.1)) for _ in range(2)
        ]
        upd_jvp, _, _, forward_jvp, upper_jvp, _ = _setup(B.SameState(0.1, method="jvp"))
    finally:
        torch.set_default_dtype(torch.float32)

    def broken(params, tangents):
        raise RuntimeError("no forward-mode formula here")

    with pytest.warns(UserWarning, match="falling back to the double backward.*no forward-mode formula here"):
        metrics = upd.step(forward, upper, jvp=broken)
    metrics_ref = upd_ref.step(forward_ref, upper_ref)
    assert metrics["hypergrad_norm"] > 0
    assert metrics["hypergrad_norm"] == pytest.approx(metrics_ref["hypergrad_norm"], rel=1e-10)
    for p, q in zip(model.parameters(), model_ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per strategy
        upd.step(forward, upper, jvp=broken)
    with pytest.raises(RuntimeError, match="no forward-mode formula here"):
        upd_jvp.step(forward_jvp, upper_jvp, jvp=broken)


class _Factored(nn.Module):
    """z = tanh(A x), u = B x per sample (the 'filtering'), ℓ = (head([z, u]) − y)² + ‖u‖² (per-sample 'heads')."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.aux, self.head = nn.Linear(3, 4), nn.Linear(3, 2), nn.Linear(6, 1)

    def forward(self, x):
        z, u = torch.tanh(self.enc(x)), self.aux(x)
        return z, u, self.head(torch.cat([z, u], -1)).squeeze(-1)


class _ReluWeighter(nn.Module):
    """w = relu(linear(features)): exact zeros for some samples (FactoredJvp's second route)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        with torch.no_grad():  # w = relu(0.1 ℓ + y): zero for about half the samples
            self.lin.weight.copy_(torch.tensor([[0.1, 1.0]]))
            self.lin.bias.zero_()

    def forward(self, features):
        return torch.relu(self.lin(features)).squeeze(-1)


def _factored_setup(relu: bool):
    torch.manual_seed(3)
    model = _Factored()
    weighter = _ReluWeighter() if relu else B.MetaWeighter(2, layers=1, hidden=8, norm="none")
    upd = B.BilevelUpdate(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        B.SameState(0.1),
        weighter,
        torch.optim.SGD(weighter.parameters(), lr=0.5),
    )
    x, y = torch.randn(12, 3), torch.randn(12)
    keep = {}

    def forward(fn):
        z, u, pred = fn(x)
        loss = (pred - y) ** 2 + u.pow(2).sum(-1)
        keep.update(z=z, u=u)
        # the upper loss reads the intermediates alone: a = 0 on the head
        return B.LevelOutputs(loss=loss, features=torch.stack([loss.detach(), y], -1), upper=(z.sum(-1) - u[:, 0]) ** 2)

    def tangents_of(names):
        def tangents(params, tangents):
            def inter(p):
                z, u, _ = torch.func.functional_call(model, {**params, **p}, (x,))
                return {"z": z, "u": u}

            t = torch.func.jvp(inter, ({n: params[n] for n in tangents},), (tangents,))[1]
            return {k: t[k] for k in names}

        return tangents

    return upd, model, weighter, forward, keep, tangents_of


@pytest.mark.parametrize("relu", [False, True])
def test_a_factored_jvp_gives_the_double_backward_step(relu):
    """``step(jvp=FactoredJvp)``: J a from the intermediates' tangents and the lower backward's per-sample cotangents
    (divided by w_i/N, or by a backward of Σ ℓ where some w_i = 0) gives the double backward's step (float64); with an
    intermediate left out it does not (the test can fail)."""
    torch.set_default_dtype(torch.float64)
    try:
        runs = [_factored_setup(relu) for _ in range(3)]
    finally:
        torch.set_default_dtype(torch.float32)
    results = []
    for (upd, model, weighter, forward, keep, tangents_of), names in zip(runs, (None, ("z", "u"), ("z",)), strict=True):
        if names is None:
            metrics = upd.step(forward)
        else:
            out = forward(model)
            metrics = upd.step(forward, outputs=out, jvp=B.FactoredJvp(dict(keep), tangents_of(names)))
        results.append((metrics, [p.detach().clone() for p in [*model.parameters(), *weighter.parameters()]]))
    (ref, ref_params), (got, got_params), (partial, _) = results
    assert ref["hypergrad_norm"] > 0
    assert (ref["weight_min"] == 0.0 and ref["weight_max"] > 0) == relu  # the second route: some w_i exactly 0
    assert got["hypergrad_norm"] == pytest.approx(ref["hypergrad_norm"], rel=1e-10)
    assert got["model_grad_norm"] == pytest.approx(ref["model_grad_norm"], rel=1e-10)
    for p, q in zip(got_params, ref_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert partial["hypergrad_norm"] != pytest.approx(ref["hypergrad_norm"], rel=1e-3)


def test_a_factored_jvp_rejects_intermediates_and_tangents_of_the_wrong_shape():
    theta = torch.ones(3, requires_grad=True)
    z = theta.sum() * torch.ones(4, 5, 2)
    loss, w = z.sum(-1) ** 2, torch.rand(4, 5) + 0.5
    with pytest.raises(ValueError, match="leading dimensions"):
        B.FactoredJvp({"z": z, "y": torch.zeros(5, 4)}, lambda p, t: {"z": z}).at(loss, w, [theta])
    for name, shape, match in (("q", (4, 5, 2), "not one of the intermediates"), ("z", (4, 5, 1), "has shape")):
        z = theta.sum() * torch.ones(4, 5, 2)
        tangents = {name: torch.zeros(shape)}
        jvp = B.FactoredJvp({"z": z}, lambda p, t, tangents=tangents: tangents).at(z.sum(-1) ** 2, w, [theta])
        with pytest.raises(ValueError, match=match):
            jvp({}, {})


def test_assigned_gradients_take_the_parameters_layout():
    """A gradient in another memory format (a compiled backward's channels-last conv weight gradient) is copied into
    the parameter's strides before fused optimisers see it; one already laid out as the parameter is used as is."""
    from bilevel.update import _laid_out_as

    param = torch.randn(6, 4, 3, 3)
    grad = torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert grad.stride() != param.stride()
    out = _laid_out_as(grad, param)
    assert out.stride() == param.stride()
    torch.testing.assert_close(out, grad, rtol=0, atol=0)
    same = torch.randn(6, 4, 3, 3)
    assert _laid_out_as(same, param) is same


def test_unit_norm_hypergradient_is_the_exact_direction_at_unit_scale():
    """hypergradient_scale='unit_norm' backpropagates g / ‖g‖ into the weighter: its gradient is the exact one
    divided by ‖g‖, so a plain SGD step is the exact step scaled by 1 / ‖g‖."""
    exact, model_e, weighter_e, forward_e, upper_e, _ = _setup(B.SameState(0.1))
    unit, model_u, weighter_u, forward_u, upper_u, _ = _setup(B.SameState(0.1))
    unit.hypergradient_scale = "unit_norm"
    before = [p.detach().clone() for p in weighter_e.parameters()]
    metrics = exact.step(forward_e, upper_e)
    unit.step(forward_u, upper_u)
    norm = metrics["hypergrad_norm"]
    for b, e, u in zip(before, weighter_e.parameters(), weighter_u.parameters(), strict=True):
        torch.testing.assert_close((u - b) * norm, e - b, rtol=1e-4, atol=1e-7)
    for a, b in zip(model_e.parameters(), model_u.parameters(), strict=True):  # θ's step does not depend on it
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="hypergradient_scale"):
        B.BilevelUpdate(model_e, torch.optim.SGD(model_e.parameters(), 0.1), B.Uniform(), hypergradient_scale="unit")


@pytest.mark.parametrize("scale", ["exact", "unit_norm"])
def test_weighter_step_metrics_and_adam_epsilon(scale):
    """The logged effective step: ‖Δα‖/‖α‖ and ‖Δα‖/(lr·√P) as measured from the parameters.  SameState's g
    scales with η: at η = 1e-7 the exact g leaves the weighter's gradients far below Adam's ε = 1e-5 and its first
    step a small fraction of lr per parameter, while unit_norm takes Adam's full first step (|Δα_j| = lr for every
    parameter with a gradient, so the ratio is √(share of such parameters))."""
    upd, _, weighter, forward, upper, _ = _setup(B.SameState(1e-7))
    upd.hypergradient_scale = scale
    upd.weighter_optimizer = torch.optim.Adam(weighter.parameters(), lr=1e-3, eps=1e-5)
    before = torch.cat([p.detach().flatten().clone() for p in weighter.parameters()])
    metrics = upd.step(forward, upper)
    after = torch.cat([p.detach().flatten() for p in weighter.parameters()])
    delta = float((after - before).norm())
    assert metrics["weighter_step"] == pytest.approx(delta / float(before.norm()), rel=1e-5)
    assert metrics["weighter_step_vs_lr"] == pytest.approx(delta / (1e-3 * before.numel() ** 0.5), rel=1e-5)
    if scale == "exact":
        assert metrics["weighter_step_vs_lr"] < 0.05
    else:
        moved = float(((after - before).abs() > 0).float().mean())
        assert metrics["weighter_step_vs_lr"] == pytest.approx(moved**0.5, rel=0.02) and moved > 0.5


def test_effective_sample_size_and_probe_correlations_of_the_weights():
    """weight_ess = (Σw)² / (N Σw²) and weight_corr/<probe> = Pearson's r of w with the probe, against numpy."""
    upd, _, weighter, forward, _, (x, y, _, _) = _setup(B.SameState(0.1))
    probe = y * 3 + torch.randn(12)

    def probed(fn):
        return B.LevelOutputs(**{**vars(forward(fn)), "probes": {"target": probe, "const": torch.ones(12)}})

    with torch.no_grad():
        w = weighter(forward(upd.model).features).double().numpy()
    m = upd.step(probed, meta=False)  # the weighter unchanged: the same w
    assert m["weight_ess"] == pytest.approx(w.sum() ** 2 / (12 * (w**2).sum()), rel=1e-5)
    assert m["weight_corr/target"] == pytest.approx(float(np.corrcoef(w, probe.numpy())[0, 1]), abs=1e-5)
    assert m["weight_corr/const"] == 0.0  # a constant probe has no correlation, not NaN
    # uniform weights use the whole batch
    model = nn.Linear(3, 1)
    uniform = B.BilevelUpdate(model, torch.optim.SGD(model.parameters(), lr=0.1), B.Uniform())
    m = uniform.step(lambda fn: B.LevelOutputs(loss=(fn(x).squeeze(-1) - y) ** 2))
    assert m["weight_ess"] == pytest.approx(1.0)


def test_a_probe_of_another_shape_is_refused():
    upd, _, _, forward, _, _ = _setup(B.SameState(0.1))
    with pytest.raises(ValueError, match="probe"):
        upd.step(lambda fn: B.LevelOutputs(**{**vars(forward(fn)), "probes": {"r": torch.ones(5)}}), meta=False)
