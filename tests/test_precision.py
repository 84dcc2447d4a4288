"""Mixed precision (recipes/run/precision.py) and the meta-model's training step under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

import bilevel as B
from recipes.run.precision import autocast, autocast_fn, bf16_speedup, resolve_precision
from worldmodels import GaussianEnsemble, HistoryEnsemble, bootstrap_counts
from worldmodels.history import history_dim


def test_resolve_precision():
    assert resolve_precision("fp32") is None
    assert resolve_precision("bf16") is torch.bfloat16
    auto = resolve_precision("auto")
    # auto follows the measurement, never the CPU's name
    assert auto is (torch.bfloat16 if bf16_speedup("cpu") >= 2.0 else None)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16")  # type: ignore[arg-type]


def test_bf16_speedup_is_measured_once_per_device():
    first = bf16_speedup("cpu")
    assert first > 0.0
    assert bf16_speedup("cpu") == first  # cached: ``auto`` picks one precision per process


def test_autocast_fn_is_the_function_itself_in_fp32():
    def f(x: torch.Tensor) -> torch.Tensor:
        return x @ x

    assert autocast_fn(f, "cpu", None) is f
    x = torch.randn(4, 4)
    assert autocast_fn(f, "cpu", torch.bfloat16)(x).dtype == torch.bfloat16
    assert f(x).dtype == torch.float32
    with autocast("cpu", None):
        assert torch.is_autocast_enabled("cpu") is False


def _linear_system(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    o = 2.0 * torch.randn(n, 1, generator=g)
    a = torch.rand(n, 1, generator=g) * 2 - 1
    nxt = 0.8 * o + 0.5 * a + 0.1 * torch.randn(n, 1, generator=g)
    return {"obs": o, "action": a, "reward": (-0.5 * o - a).squeeze(-1), "next_obs": nxt}


def _fit(dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train, hold = _linear_system(512, g), _linear_system(256, g)
    model = GaussianEnsemble(1, 1, members=3, elites=2, layers=2, units=32)
    model.update_normalizer(train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    counts = bootstrap_counts(3, 512, generator=g)
    before = model.holdout_loss(hold)
    for _ in range(200):
        idx = torch.randint(512, (128,), generator=g)
        batch = {**{k: v[idx] for k, v in train.items()}, "bootstrap": counts[:, idx]}
        with autocast("cpu", dtype):
            out = model.loss(batch)
        assert out.loss.dtype == torch.float32  # the NLL stays fp32 under autocast
        opt.zero_grad()
        out.loss.mean().backward()
        opt.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    return before, model.holdout_loss(hold)


def test_bf16_autocast_fits_the_ensemble_as_well_as_fp32():
    before32, after32 = _fit(None)
    before16, after16 = _fit(torch.bfloat16)
    assert torch.equal(before32, before16)
    assert (after16 < 0.1 * before16).all(), (before16, after16)
    # bf16 products cost some accuracy, not the fit: within 2x of fp32's hold-out MSE (measured ~1.1x)
    assert float(after16.mean()) < 2.0 * float(after32.mean()), (after32, after16)


def test_bf16_gradient_is_close_to_fp32():
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    batch = _linear_system(256, g)
    model = GaussianEnsemble(1, 1, members=3, elites=2, layers=2, units=32)
    model.update_normalizer(batch)

    def grad(dtype: torch.dtype | None) -> torch.Tensor:
        model.zero_grad()
        with autocast("cpu", dtype):
            loss = model.loss(batch).loss.mean()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    g32, g16 = grad(None), grad(torch.bfloat16)
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0)
    assert cos > 0.999, cos
    assert (g16 - g32).norm() < 0.05 * g32.norm()


def test_bilevel_update_of_a_history_ensemble_under_bf16():
    """The recipes' path: BilevelUpdate with the forward closure under autocast, a GRU history encoder included."""
    torch.manual_seed(0)
    model = HistoryEnsemble(3, 2, history_len=4, history_hidden=8, members=3, elites=2, layers=2, units=16)
    g = torch.Generator().manual_seed(0)
    n = 32
    batch = {
        "obs": torch.randn(n, 3, generator=g),
        "action": torch.randn(n, 2, generator=g),
        "reward": torch.randn(n, generator=g),
        "next_obs": torch.randn(n, 3, generator=g),
        "history": torch.randn(n, 4, history_dim(3, 2), generator=g),
        "history_mask": torch.ones(n, 4),
    }
    model.update_normalizer(batch)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    update = B.BilevelUpdate(model, opt, B.Uniform())
    forward = autocast_fn(lambda fn: B.LevelOutputs(loss=fn(batch).loss), "cpu", torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = update.step(forward)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert all(moved)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# -- the Dreamer family under bf16 autocast ----------------------------------------------------------------------------
def _dreamer(recipe: str, precision: str, classes: int):
    from recipes.dreamer.config import DreamerConfig, TempoConfig
    from recipes.dreamer.dreamerv2 import DreamerAgent
    from recipes.dreamer.tempo import TempoAgent

    cls, agent_cls = (TempoConfig, TempoAgent) if recipe == "tempo" else (DreamerConfig, DreamerAgent)
    extra = {"meta_every": 1} if recipe == "tempo" else {}
    cfg = cls(
        deter=16, stoch=4, classes=classes, hidden=16, mlp_layers=1, mlp_units=16, ac_layers=1, ac_units=16,
        batch_size=3, seq_len=6, horizon=3, model_precision=precision, ac_precision=precision, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    agent = agent_cls(cfg, (5,), 2, classes > 0)
    g = torch.Generator().manual_seed(0)
    action = torch.rand(3, 6, 2, generator=g) * 2 - 1
    if classes:
        action = torch.nn.functional.one_hot(torch.randint(0, 2, (3, 6), generator=g), 2).float()
    batch = {
        "obs": torch.randn(3, 6, 5, generator=g),
        "action": action,
        "reward": torch.rand(3, 6, generator=g),
        "is_first": torch.zeros(3, 6, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    return agent, batch


@pytest.mark.parametrize("classes", [0, 4])
def test_world_model_loss_under_bf16_is_fp32_and_close(classes):
    agent, batch = _dreamer("dreamerv2", "fp32", classes)
    shape = agent.wm.rssm.noise_shape(3, 6)
    draw = torch.rand if classes else torch.randn
    noise = (draw(shape), draw(shape))
    out32 = agent.wm.loss(batch, noise)
    with autocast("cpu", torch.bfloat16):
        out16 = agent.wm.loss(batch, noise)
    assert out16.loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out16.states["post"].values())  # states and statistics in fp32
    rel = (out16.loss - out32.loss).abs().mean() / out32.loss.abs().mean()
    assert rel < 0.02, rel


@pytest.mark.parametrize(("recipe", "classes"), [("dreamerv2", 0), ("dreamerv2", 4), ("tempo", 0)])
def test_train_step_under_bf16(recipe, classes):
    agent, batch = _dreamer(recipe, "bf16", classes)
    assert agent.autocast[1] is torch.bfloat16 and agent.ac.autocast_dtype is torch.bfloat16
    before = [p.detach().clone() for p in agent.parameters()]
    metrics = agent.train_step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    moved = sum(not torch.equal(b, p) for b, p in zip(before, agent.parameters(), strict=True))
    assert moved > len(before) // 2
    if recipe == "tempo":
        assert metrics["model/hypergrad_norm"] > 0
