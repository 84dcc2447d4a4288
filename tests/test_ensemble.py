"""The PETS/MBPO Gaussian ensemble and M3PO's history-conditioned meta-model (worldmodels/ensemble.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import bilevel as B
from worldmodels import GaussianEnsemble, HistoryEnsemble, WorldModel, bootstrap_counts, fit_to_holdout
from worldmodels.history import history_dim

D = torch.float64
O, A = 3, 2


def make_batch(n: int, seed: int = 0, dtype: torch.dtype = D, obs: int = O, act: int = A) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, obs, generator=g, dtype=dtype)
    a = torch.randn(n, act, generator=g, dtype=dtype)
    nxt = o + 0.3 * torch.tanh(o + a.sum(-1, keepdim=True)) + 0.05 * torch.randn(n, obs, generator=g, dtype=dtype)
    r = (o**2).sum(-1) - 0.1 * (a**2).sum(-1)
    return {"obs": o, "action": a, "reward": r, "next_obs": nxt}


def tiny(dtype: torch.dtype = D, **kw) -> GaussianEnsemble:
    kw = {"members": 3, "elites": 2, "layers": 2, "units": 8, **kw}
    return GaussianEnsemble(O, A, **kw).to(dtype)


def hand_forward(model: GaussianEnsemble, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Member by member with F.linear on slices of the batched weights: normalised mean and bounded logvar."""
    means, logvars = [], []
    for e in range(model.members):
        h = x
        for layer in model.hidden:
            h = F.silu(F.linear(h, layer.weight[e].T, layer.bias[e, 0]))
        out = F.linear(h, model.head.weight[e].T, model.head.bias[e, 0])
        mean, raw = out[:, : model.out_dim], out[:, model.out_dim :]
        hi, lo = model.max_logvar[0, 0], model.min_logvar[0, 0]
        logvar = hi - F.softplus(hi - raw)
        logvar = lo + F.softplus(logvar - lo)
        means.append(mean)
        logvars.append(logvar)
    return torch.stack(means), torch.stack(logvars)


def set_normalizer(model: GaussianEnsemble, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for norm in (model.input_norm, model.target_norm):
        norm.mean.copy_(torch.randn(norm.dim, generator=g))
        norm.std.copy_(0.5 + torch.rand(norm.dim, generator=g))


# -- the loss ---------------------------------------------------------------------------------------------------------
def test_nll_matches_normal_log_prob_with_known_normalizer():
    model = tiny()
    set_normalizer(model)
    batch = make_batch(16)
    out = model.loss(batch)
    y = torch.cat([batch["next_obs"] - batch["obs"], batch["reward"][:, None]], -1)
    y_tilde = (y - model.target_norm.mean) / model.target_norm.std
    x_tilde = (torch.cat([batch["obs"], batch["action"]], -1) - model.input_norm.mean) / model.input_norm.std
    torch.testing.assert_close(out.states["targets"], y_tilde)
    torch.testing.assert_close(out.states["inputs"], x_tilde)
    mean, logvar = hand_forward(model, x_tilde)
    expected = -torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(y_tilde).sum(-1)  # [E, N]
    torch.testing.assert_close(out.states["member_nll"], expected, rtol=1e-12, atol=1e-12)
    penalty = 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())
    torch.testing.assert_close(out.loss, expected.mean(0) + penalty, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["nll"], expected.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.terms["mse"], ((mean - y_tilde) ** 2).mean((0, 2)))
    assert float(penalty.detach()) == pytest.approx(0.01 * 4 * 10.5)
    # denormalised predictions in the states
    std_y, mu_y = model.target_norm.std, model.target_norm.mean
    torch.testing.assert_close(out.states["next_obs_mean"], batch["obs"] + mean[..., :O] * std_y[:O] + mu_y[:O])
    torch.testing.assert_close(out.states["reward_mean"], mean[..., O] * std_y[O] + mu_y[O])
    torch.testing.assert_close(out.states["next_obs_std"], torch.exp(0.5 * logvar[..., :O]) * std_y[:O])
    assert isinstance(model, WorldModel)


def test_logvar_stays_within_learned_bounds():
    model = tiny()
    with torch.no_grad():
        model.head.bias[..., model.out_dim :] = torch.tensor([-1e3, 1e3, 0.0, 0.2], dtype=D)
    logvar = model.loss(make_batch(8)).states["logvar"]
    assert (logvar >= -10).all() and (logvar <= 0.5 + 1e-4).all()  # min + softplus(10.5) overshoots by 3e-5
    assert logvar[..., 0].max() < -9.9 and logvar[..., 1].min() > 0.49


def test_batched_members_equal_per_member_loop():
    torch.manual_seed(3)
    model = tiny(torch.float32, members=4, units=16)
    batch = make_batch(32, dtype=torch.float32)
    model.update_normalizer(batch)
    out = model.loss(batch)
    mean, logvar = hand_forward(model, out.states["inputs"])
    torch.testing.assert_close(out.states["mean"], mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.states["logvar"], logvar, rtol=1e-6, atol=1e-6)
    # E single-member ensembles carrying the slices of the batched weights give the same per-member NLL
    for e in range(model.members):
        single = GaussianEnsemble(O, A, members=1, elites=1, layers=2, units=16)
        state = {k: (v[e : e + 1] if k.startswith(("hidden", "head")) else v) for k, v in model.state_dict().items()}
        state["elite_idx"] = torch.zeros(1, dtype=torch.long)
        single.load_state_dict(state)
        torch.testing.assert_close(single.loss(batch).states["member_nll"][0], out.states["member_nll"][e])


def test_gradients_flow_through_functional_call():
    model = tiny()
    batch = make_batch(12)
    model.update_normalizer(batch)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    out = functional_call(model, params, (batch,))
    torch.testing.assert_close(out.loss, model.loss(batch).loss)
    grads = torch.autograd.grad(out.states["next_obs_mean"].square().sum() + out.loss.sum(), list(params.values()))
    assert all(g.abs().sum() > 0 for g in grads)
    # a different θ gives a different loss: nothing derived from the parameters is cached
    shifted = {k: v + 0.1 for k, v in params.items()}
    assert not torch.allclose(functional_call(model, shifted, (batch,)).loss, out.loss)


# -- bootstrap, normaliser, elites -----------------------------------------------------------------------------------
def test_bootstrap_counts():
    counts = bootstrap_counts(5, 40, generator=torch.Generator().manual_seed(0))
    assert counts.shape == (5, 40) and counts.dtype == torch.get_default_dtype()
    assert torch.equal(counts.sum(1), torch.full((5,), 40.0))
    assert (counts >= 0).all() and torch.equal(counts, counts.round())
    assert all(not torch.equal(counts[i], counts[j]) for i in range(5) for j in range(i + 1, 5))
    assert (counts == 0).any()  # a resample leaves some samples out
    again = bootstrap_counts(5, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(counts, again)


def test_bootstrap_weights_each_member_loss():
    model = tiny()
    batch = make_batch(10)
    model.update_normalizer(batch)
    plain = model.loss(batch)
    ones = model.loss({**batch, "bootstrap": torch.ones(3, 10)})
    torch.testing.assert_close(ones.loss, plain.loss, rtol=0, atol=0)
    counts = bootstrap_counts(3, 10, generator=torch.Generator().manual_seed(1))
    boot = model.loss({**batch, "bootstrap": counts})
    member = plain.states["member_nll"]
    torch.testing.assert_close(boot.terms["nll"], (counts.to(D) * member).mean(0))
    # member e's total equals its NLL over its own resample
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(10, (3, 10), generator=g)
    for e in range(3):
        torch.testing.assert_close((counts[e].to(D) * member[e]).sum(), member[e, idx[e]].sum())


def test_normalizer_equals_statistics_of_all_data():
    model = tiny()
    batches = [make_batch(n, seed=s) for n, s in ((7, 0), (1, 1), (30, 2), (12, 3))]
    batches[2]["obs"] = 5.0 + 3.0 * batches[2]["obs"]  # different distributions per batch
    for b in batches:
        model.update_normalizer(b)
    x = torch.cat([torch.cat([b["obs"], b["action"]], -1) for b in batches])
    y = torch.cat([torch.cat([b["next_obs"] - b["obs"], b["reward"][:, None]], -1) for b in batches])
    torch.testing.assert_close(model.input_norm.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.input_norm.std, x.std(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.target_norm.mean, y.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.target_norm.std, y.std(0), rtol=1e-12, atol=1e-12)
    assert int(model.input_norm.count) == 50
    # a constant dimension gets std 1, not a blow-up
    const = tiny()
    b = make_batch(9)
    b["reward"] = torch.zeros(9, dtype=D)
    const.update_normalizer(b)
    assert float(const.target_norm.std[O]) == 1.0
    # predict() returns denormalised values
    mean, std = model.predict(batches[0]["obs"], batches[0]["action"])
    states = model.loss(batches[0]).states
    torch.testing.assert_close(mean, states["mean"] * model.target_norm.std + model.target_norm.mean)
    torch.testing.assert_close(std, torch.exp(0.5 * states["logvar"]) * model.target_norm.std)


def test_elites_are_the_members_with_lowest_holdout_loss():
    model = tiny(members=7, elites=3)
    batch = make_batch(64)
    model.update_normalizer(batch)
    offsets = torch.tensor([3.0, 0.1, 2.0, 0.0, 5.0, 0.2, 4.0], dtype=D)
    with torch.no_grad():  # member e predicts the constant normalised mean offsets[e] in every dimension
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[:, 0, : model.out_dim] = offsets[:, None]
    holdout = model.holdout_loss(batch)
    assert holdout.shape == (7,) and not holdout.requires_grad
    torch.testing.assert_close(holdout, (offsets**2 + 1.0) - 1.0 / 64, rtol=1e-9, atol=1e-9)  # ỹ: mean 0, var 63/64
    model.select_elites(holdout)
    assert model.elite_idx.tolist() == [3, 1, 5]
    # sampling only uses elites, each of them
    g = torch.Generator().manual_seed(0)
    obs, act = batch["obs"].repeat(4, 1), batch["action"].repeat(4, 1)
    next_obs, reward = model.sample(obs, act, generator=g, deterministic=True)
    delta = (next_obs - obs - model.target_norm.mean[:O]) / model.target_norm.std[:O]
    used = {round(v, 6) for v in delta[:, 0].tolist()}
    assert used == {0.0, 0.1, 0.2}
    assert reward.shape == (256,)
    # the elites are checkpointed
    clone = tiny(members=7, elites=3)
    clone.load_state_dict(model.state_dict())
    assert clone.elite_idx.tolist() == [3, 1, 5]


def test_sample_is_reproducible_and_noisy():
    model = tiny()
    batch = make_batch(20)
    model.update_normalizer(batch)
    a = model.sample(batch["obs"], batch["action"], generator=torch.Generator().manual_seed(5))
    b = model.sample(batch["obs"], batch["action"], generator=torch.Generator().manual_seed(5))
    c = model.sample(batch["obs"], batch["action"], generator=torch.Generator().manual_seed(5), deterministic=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], c[0])
    assert a[0].shape == (20, O) and a[1].shape == (20,)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="elites"):
        GaussianEnsemble(O, A, members=3, elites=4)
    with pytest.raises(ValueError, match="activation"):
        GaussianEnsemble(O, A, activation="nope")
    with pytest.raises(ValueError, match="context"):
        GaussianEnsemble(O, A, members=2, elites=1, context_dim=4).loss(make_batch(3, dtype=torch.float32))


# -- the history-conditioned meta-model ------------------------------------------------------------------------------
def test_history_len_zero_is_exactly_gaussian_ensemble():
    kw = {"members": 3, "elites": 2, "layers": 2, "units": 8}
    torch.manual_seed(7)
    plain = GaussianEnsemble(O, A, **kw)
    torch.manual_seed(7)
    hist = HistoryEnsemble(O, A, history_len=0, history_hidden=16, **kw)
    p1, p2 = list(plain.named_parameters()), list(hist.named_parameters())
    assert [n for n, _ in p1] == [n for n, _ in p2]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(p1, p2, strict=True))
    assert [n for n, _ in plain.named_buffers()] == [n for n, _ in hist.named_buffers()]
    batch = make_batch(10, dtype=torch.float32)
    plain.update_normalizer(batch)
    hist.update_normalizer(batch)
    assert torch.equal(plain.loss(batch).loss, hist.loss(batch).loss)
    s1 = plain.sample(batch["obs"], batch["action"], generator=torch.Generator().manual_seed(1))
    window = torch.zeros(10, 0, history_dim(O, A))
    s2 = hist.sample(batch["obs"], batch["action"], window, window[..., 0], generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1])


def test_history_len_negative_raises():
    with pytest.raises(ValueError, match="history_len"):
        HistoryEnsemble(O, A, history_len=-1)


def history_batch(n: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = make_batch(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    hist = torch.randn(n, length, history_dim(O, A), generator=g, dtype=D)
    valid = torch.arange(n) % (length + 1)  # 0 … L valid steps, left-padded
    mask = (torch.arange(length)[None, :] >= length - valid[:, None]).to(D)
    return {**batch, "history": hist * mask[..., None], "history_mask": mask}


def test_history_padding_does_not_change_the_output():
    torch.manual_seed(0)
    model = HistoryEnsemble(O, A, history_len=4, history_hidden=6, members=3, elites=2, layers=1, units=8).to(D)
    batch = history_batch(10, 4)
    model.update_normalizer(batch)
    base = model.loss(batch).loss
    junk = batch["history"] + 7.0 * (1 - batch["history_mask"])[..., None] * torch.randn_like(batch["history"])
    assert not torch.equal(junk, batch["history"])
    torch.testing.assert_close(model.loss({**batch, "history": junk}).loss, base, rtol=0, atol=0)
    # ... but the valid steps do matter (for rows with at least one)
    changed = batch["history"] + batch["history_mask"][..., None]
    moved = (model.loss({**batch, "history": changed}).loss - base).abs()
    has_history = batch["history_mask"].sum(1) > 0
    assert (moved[has_history] > 1e-9).all() and (moved[~has_history] == 0).all()
    # one encoder shared by all members, trained through the loss
    grads = torch.autograd.grad(base.sum(), list(model.encoder.parameters()))
    assert all(gr.abs().sum() > 0 for gr in grads)
    with pytest.raises(ValueError, match="history"):
        model.sample(batch["obs"], batch["action"])
    nxt, rew = model.sample(batch["obs"], batch["action"], batch["history"], batch["history_mask"])
    assert nxt.shape == (10, O) and rew.shape == (10,)


# -- learning ----------------------------------------------------------------------------------------------------------
def test_training_lowers_holdout_mse_on_linear_gaussian_system():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    def data(n: int) -> dict[str, torch.Tensor]:
        o = 2.0 * torch.randn(n, 1, generator=g)
        a = torch.rand(n, 1, generator=g) * 2 - 1
        nxt = 0.8 * o + 0.5 * a + 0.1 * torch.randn(n, 1, generator=g)
        return {"obs": o, "action": a, "reward": (-0.5 * o - a).squeeze(-1), "next_obs": nxt}

    train, hold = data(512), data(256)
    model = GaussianEnsemble(1, 1, members=3, elites=2, layers=2, units=32)
    model.update_normalizer(train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    counts = bootstrap_counts(3, 512, generator=g)
    before = model.holdout_loss(hold)
    for step in range(200):
        idx = torch.randint(512, (128,), generator=g)
        batch = {k: v[idx] for k, v in train.items()}
        loss = model.loss({**batch, "bootstrap": counts[:, idx]}).loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 0:
            first = float(loss.detach())
    after = model.holdout_loss(hold)
    assert (after < 0.1 * before).all(), (before, after)
    assert float(loss.detach()) < first - 1.0
    # the learned noise scale of Δo approaches the true 0.1
    _, std = model.predict(hold["obs"], hold["action"])
    assert 0.05 < float(std[..., 0].mean().detach()) < 0.3


# -- the bi-level core -------------------------------------------------------------------------------------------------
def test_one_bilevel_update_with_uniform_weights():
    model = tiny(torch.float32)
    batch = make_batch(16, dtype=torch.float32)
    model.update_normalizer(batch)
    update = B.BilevelUpdate(model, torch.optim.Adam(model.parameters(), 1e-3), B.Uniform())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    metrics = update.step(lambda fn: B.LevelOutputs(loss=fn(batch).loss))
    assert math.isfinite(metrics["lower_loss"]) and metrics["weight_mean"] == 1.0
    assert all(not torch.equal(before[k], v) for k, v in model.named_parameters())


def meta_problem(model: GaussianEnsemble, history_len: int = 0):
    batch = {**history_batch(8, history_len, seed=0), "bootstrap": bootstrap_counts(model.members, 8).to(D)}
    meta = history_batch(6, history_len, seed=1)
    model.update_normalizer(batch)

    def per_sample_loss(p):
        return functional_call(model, p, (batch,)).loss

    def upper_loss(p):
        pred = functional_call(model, p, (meta,)).states["next_obs_mean"]  # [E, N, O]
        return ((pred - meta["next_obs"]) ** 2).sum(-1).mean()

    return batch, meta, per_sample_loss, upper_loss


@pytest.mark.parametrize("history_len", [0, 2])
def test_hypergradient_matches_finite_differences(history_len):
    torch.manual_seed(0)
    model = HistoryEnsemble(O, A, history_len=history_len, history_hidden=3, members=2, elites=1, layers=1, units=6)
    _, _, psl, up = meta_problem(model.to(D), history_len)
    params = dict(model.named_parameters())
    w = 0.5 + torch.rand(8, dtype=D)
    rows = B.check_hypergradient(psl, up, params, w, [B.SameState(0.1), B.Lookahead(0.1, 1)])
    assert len(rows) == 2
    assert all(r.passed for r in rows), B.format_report(rows)
    assert all(r.fd_norm > 1e-8 for r in rows)


def test_bilevel_update_trains_a_meta_weighter():
    torch.manual_seed(0)
    model = tiny()
    batch, meta, _, _ = meta_problem(model)
    weighter = B.MetaWeighter(O + A + 1, layers=1, hidden=8, norm="none").to(D)
    update = B.BilevelUpdate(
        model,
        torch.optim.SGD(model.parameters(), 0.1),
        B.SameState(0.1),
        weighter,
        torch.optim.SGD(weighter.parameters(), 1.0),
    )

    def forward(fn):
        out = fn(batch)
        features = torch.cat([out.states["inputs"], out.loss.detach()[:, None]], -1)
        return B.LevelOutputs(loss=out.loss, features=features)

    def upper(fn):
        return ((fn(meta).states["next_obs_mean"] - meta["next_obs"]) ** 2).sum(-1).mean()

    w_before = {k: v.detach().clone() for k, v in weighter.named_parameters()}
    metrics = update.step(forward, upper)
    assert metrics["hypergrad_norm"] > 0 and math.isfinite(metrics["upper_loss"])
    assert any(not torch.equal(w_before[k], v) for k, v in weighter.named_parameters())


def test_fit_to_holdout_stops_after_patience_keeps_the_best_epoch_and_picks_elites():
    """The shared fit loop (m3po and admrl): a fit that improves for two epochs and then only gets worse stops
    after ``patience`` epochs without improvement, restores the second epoch's parameters, and picks the elites by
    their hold-out MSE there; an epoch is the full minibatches of a fresh shuffle, one of all N when N < batch."""
    torch.manual_seed(0)
    model = tiny()
    model.update_normalizer(make_batch(64))
    hold = make_batch(32, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = make_batch(40, seed=2)
    seen, snapshots = [], []

    def minibatch(pos):
        seen.append(pos.clone())
        if len(seen) <= 4:  # two epochs of two minibatches of real training
            loss = model.loss({k: v[pos] for k, v in train.items()}).loss.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:  # then every epoch shifts every member's predicted mean further off: worse for all
            with torch.no_grad():
                model.head.bias.add_(0.5)
        if len(seen) % 2 == 0:  # the epoch's last minibatch: its parameters
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    epochs, final = fit_to_holdout(
        model, hold, 40, minibatch, batch=16, max_epochs=None, patience=3, generator=torch.Generator().manual_seed(0)
    )
    assert epochs == 5  # 2 improving epochs, then patience = 3 without improvement
    assert [len(p) for p in seen] == [16] * 10 and len(set(torch.cat(seen[:2]).tolist())) == 32
    for k, v in model.state_dict().items():
        if k != "elite_idx":
            torch.testing.assert_close(v, snapshots[1][k])
    torch.testing.assert_close(final, model.holdout_loss(hold))
    assert set(model.elite_idx.tolist()) == set(final.argsort()[:2].tolist())
    calls = []
    fit_to_holdout(
        model, hold, 5, calls.append, batch=16, max_epochs=2, patience=9, generator=torch.Generator().manual_seed(0)
    )
    assert [len(c) for c in calls] == [5, 5]  # N < batch: one minibatch of all N per epoch, max_epochs honoured
