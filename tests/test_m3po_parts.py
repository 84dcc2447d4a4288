"""The M3PO family's parts that need no trained network: histories, D_env windows, branched rollouts, the mixture
schedule and bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.data.transitions import TransitionBuffer, next_history
from recipes.m3po.config import M3POConfig, MBPOConfig, SACConfig
from recipes.m3po.rollouts import branched_rollouts, termination_fn
from worldmodels.history import HistoryEncoder, history_dim, roll_history

O, A = 3, 2


def _env_buffer(episodes: list[int], capacity: int = 64) -> TransitionBuffer:
    """D_env holding episodes of the given lengths in order; obs of row i is [i, i, i], reward i, action [i, -i]."""
    f32 = torch.float32
    buf = TransitionBuffer(
        capacity,
        {
            "obs": ((O,), f32),
            "action": ((A,), f32),
            "reward": ((), f32),
            "next_obs": ((O,), f32),
            "done": ((), f32),
            "pos": ((), torch.long),
        },
        wrap=False,
    )
    row = 0
    for length in episodes:
        for t in range(length):
            buf.add(
                obs=torch.full((1, O), float(row)),
                action=torch.tensor([[row, -row]], dtype=f32),
                reward=torch.tensor([float(row)]),
                next_obs=torch.full((1, O), row + 1.0),
                done=torch.zeros(1),
                pos=torch.tensor([t]),
            )
            row += 1
    return buf


def test_history_windows_never_reach_into_the_previous_episode():
    buf = _env_buffer([3, 4])  # rows 0–2 episode one, rows 3–6 episode two
    hist, mask = buf.history(torch.tensor([0, 2, 3, 4, 6]), 3)
    assert hist.shape == (5, 3, history_dim(O, A)) and mask.shape == (5, 3)
    assert mask.tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 1], [1, 1, 1]]
    # row 6's window is rows 3, 4, 5 as (o, a, r), oldest first; masked slots hold zeros
    assert hist[4, :, 0].tolist() == [3.0, 4.0, 5.0] and hist[4, :, -1].tolist() == [3.0, 4.0, 5.0]
    assert hist[4, 0, O : O + A].tolist() == [3.0, -3.0]
    assert hist[2].abs().sum() == 0 and hist[3, :2].abs().sum() == 0


def test_next_history_is_the_window_of_the_next_row():
    buf = _env_buffer([6])
    index = torch.tensor([1, 2, 4])
    batch = buf.get(index)
    batch["history"], batch["history_mask"] = buf.history(index, 3)
    rolled, rolled_mask = next_history(batch)
    want, want_mask = buf.history(index + 1, 3)
    torch.testing.assert_close(rolled, want)
    torch.testing.assert_close(rolled_mask, want_mask)


def test_buffer_wraps_fifo_or_refuses():
    buf = TransitionBuffer(3, {"x": ((), torch.float32)})
    buf.add(x=torch.arange(5.0))
    assert len(buf) == 3 and sorted(buf.get(buf.indices())["x"].tolist()) == [2.0, 3.0, 4.0]
    assert buf.get(buf.indices())["x"].tolist() == [2.0, 3.0, 4.0]  # oldest first
    strict = TransitionBuffer(2, {"x": ((), torch.float32)}, wrap=False)
    strict.add(x=torch.zeros(2))
    with pytest.raises(RuntimeError, match="full"):
        strict.add(x=torch.zeros(1))
    with pytest.raises(KeyError):
        buf.add(y=torch.zeros(1))
    restored = TransitionBuffer(3, {"x": ((), torch.float32)})
    restored.load_state_dict(buf.state_dict())
    assert restored.get(restored.indices())["x"].tolist() == [2.0, 3.0, 4.0]
    larger = TransitionBuffer(10, {"x": ((), torch.float32)}, wrap=False)  # a run resumed with more steps
    larger.load_state_dict(buf.state_dict())
    larger.add(x=torch.tensor([5.0]))
    assert larger.get(larger.indices())["x"].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_env_buffer_windows_survive_a_checkpoint_into_a_larger_buffer():
    buf = _env_buffer([3, 4], capacity=7)
    bigger = _env_buffer([], capacity=20)
    bigger.load_state_dict(buf.state_dict())
    index = torch.arange(7)
    for a, b in zip(buf.history(index, 3), bigger.history(index, 3), strict=True):
        torch.testing.assert_close(a, b)


def test_history_encoder_ignores_padding_and_empty_windows_give_zero():
    torch.manual_seed(0)
    enc = HistoryEncoder(history_dim(O, A), 8)
    hist = torch.randn(4, 5, history_dim(O, A))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    z = enc(hist, mask)
    noisy = hist + 100 * torch.randn_like(hist) * (1 - mask).unsqueeze(-1)  # change only padded slots
    torch.testing.assert_close(enc(noisy, mask), z)
    assert z[3].abs().sum() == 0 and z[:3].abs().sum() > 0
    # the code after 3 valid steps equals encoding exactly those 3 steps with no padding
    torch.testing.assert_close(enc(hist[:1, 2:], torch.ones(1, 3)), z[:1])
    assert enc(hist[:, :0], mask[:, :0]).shape == (4, 8)


def test_roll_history_appends_and_keeps_left_padding():
    hist, mask = torch.zeros(1, 3, history_dim(O, A)), torch.zeros(1, 3)
    for k in range(4):
        hist, mask = roll_history(hist, mask, torch.full((1, O), float(k)), torch.zeros(1, A), torch.tensor([k]))
    assert mask.tolist() == [[1, 1, 1]] and hist[0, :, 0].tolist() == [1.0, 2.0, 3.0]
    h0, m0 = roll_history(hist[:, :0], mask[:, :0], torch.zeros(1, O), torch.zeros(1, A), torch.zeros(1))
    assert h0.shape == (1, 0, history_dim(O, A)) and m0.shape == (1, 0)


class _Model:
    """next obs = obs + action[0]; reward = obs[0]."""

    def sample(self, obs, action, history, mask, generator=None, deterministic=False):
        return obs + action[:, :1], obs[:, 0].clone()


class _Policy:
    def act(self, obs, history, mask):
        return torch.ones(obs.shape[0], A)


def test_branched_rollouts_shapes_windows_and_termination():
    n, L = 4, 2
    start = {
        "obs": torch.tensor([[0.0] * O, [1.0] * O, [2.0] * O, [3.0] * O]),
        "history": torch.zeros(n, L, history_dim(O, A)),
        "history_mask": torch.zeros(n, L),
    }
    rows, stats = branched_rollouts(_Model(), _Policy(), start, 3, None)
    assert rows["obs"].shape == (3 * n, O) and rows["history"].shape == (3 * n, L, history_dim(O, A))
    # step 2's window holds step 1's (o, a, r): rollouts roll their histories with the model's own samples
    assert rows["history_mask"][n : 2 * n].tolist() == [[0, 1]] * n
    torch.testing.assert_close(rows["history"][n : 2 * n, -1, :O], rows["obs"][:n])
    torch.testing.assert_close(rows["next_obs"][:n], rows["obs"][n : 2 * n])
    assert stats["transitions"] == 3 * n and stats["done_rate"] == 0

    def terminal(obs):  # ends the rollouts that pass 2.5
        return obs[:, 0] > 2.5

    rows, stats = branched_rollouts(_Model(), _Policy(), start, 3, terminal)
    # obs 0 → 1 → 2 → 3 (done at step 3); 1 → 2 → 3 (done at 2); 2 → 3 (done at 1); 3 → 4 (done at 1)
    assert rows["obs"].shape[0] == 4 + 2 + 1
    assert rows["done"].tolist() == [0, 0, 1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="rollout_length"):
        branched_rollouts(_Model(), _Policy(), start, 0, None)


def test_termination_functions_follow_gymnasium_v5_health_ranges():
    walker = termination_fn("meta:walker-randomparams")
    obs = torch.tensor([[1.2, 0.0, 0.0], [0.5, 0.0, 0.0], [1.2, 1.5, 0.0], [float("nan"), 0.0, 0.0]])
    assert walker(obs).tolist() == [False, True, True, True]
    ant = termination_fn("meta:ant-crippled-leg")
    assert ant(torch.tensor([[0.5, 0.0], [1.5, 0.0], [0.1, 0.0]])).tolist() == [False, True, True]
    assert termination_fn("meta:halfcheetah-fwd-bwd") is None
    with pytest.raises(ValueError, match="env"):
        termination_fn("gym:Humanoid-v5")


@pytest.mark.parametrize("env_id", ["Hopper-v5", "Hopper-v4", "Walker2d-v5", "Ant-v5"])
def test_termination_functions_agree_with_the_simulator(env_id):
    """Random-action episodes: the function of each next observation is gymnasium's own ``terminated``."""
    from recipes.envs import make_env

    env = make_env(f"gym:{env_id}", seed=0)
    done_fn, rng, terminations = termination_fn(f"gym:{env_id}"), np.random.default_rng(0), 0
    for _ in range(5):
        env.reset()
        while True:
            step = env.step(rng.uniform(-1, 1, env.action_dim))
            assert bool(done_fn(torch.as_tensor(step["obs"])[None])[0]) == step["is_terminal"]
            terminations += step["is_terminal"]
            if step["is_last"]:
                break
    assert terminations > 0 or env_id == "Ant-v5"  # random hoppers and walkers fall within their episodes


def test_real_share_schedule_rises_linearly_and_is_constant_outside():
    cfg = M3POConfig(real_ratio_start=0.1, real_ratio_end=0.5, real_ratio_from=1000, real_ratio_until=3000)
    assert [cfg.real_ratio(t) for t in (0, 1000, 2000, 3000, 10_000)] == pytest.approx([0.1, 0.1, 0.3, 0.5, 0.5])
    assert MBPOConfig().real_ratio(0) == MBPOConfig().real_ratio(10**6) == 0.05
    assert SACConfig().real_ratio(0) == 1.0 and SACConfig().history_len == M3POConfig().history_len
    assert MBPOConfig().history_len == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"history_len": -1}, "history_len"),
        ({"rollout_length": 0}, "rollout_length"),
        ({"elites": 9}, "elites"),
        ({"model_based": False, "weighting": True}, "weighting"),
        ({"task_loss": "nope"}, "task_loss"),
    ],
)
def test_bad_configs_name_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        M3POConfig(**values)


@pytest.mark.parametrize(("task_loss", "history_len"), [("vagram", 2), ("vaml", 2), ("vagram", 0)])
def test_weighting_hypergradient_matches_finite_differences(task_loss, history_len):
    """The recipe's own bi-level forward (ensemble NLL ℓ[N], task loss through SAC's V(o', z')) in float64:
    SameState and Lookahead hypergradients against central finite differences."""
    from bilevel import Lookahead, SameState, check_hypergradient
    from recipes.m3po.m3po import M3POLearner

    torch.manual_seed(0)
    cfg = M3POConfig(
        weighting=True,
        task_loss=task_loss,
        history_len=history_len,
        history_hidden=4,
        members=3,
        elites=2,
        model_layers=1,
        model_units=8,
        sac_units=8,
    )
    learner = M3POLearner(cfg, O, A, 64)
    gen = torch.Generator().manual_seed(1)
    for t in range(40):
        step = {
            "obs": torch.randn(O, generator=gen).numpy(),
            "action": torch.rand(A, generator=gen).numpy(),
            "reward": float(torch.randn((), generator=gen)),
            "is_first": t % 20 == 0,
            "is_terminal": False,
        }
        learner.observe(step)
    learner.model.double()
    learner.sac.double()
    index = learner.d_env.indices()[:12]
    batch = {k: v.double() if v.is_floating_point() else v for k, v in learner.env_batch(index).items()}
    learner.model.update_normalizer(batch)
    forward = learner._model_forward(batch)
    view = learner.update.view
    rows = check_hypergradient(
        lambda p: forward(view(p)).loss,
        lambda p: forward(view(p)).upper.mean(),
        dict(learner.model.named_parameters()),
        torch.ones(12, dtype=torch.float64),
        [SameState(0.1), Lookahead(0.1, 1)],
    )
    assert all(r.passed for r in rows), rows
    assert forward(learner.model).upper.shape == (12,)


def test_weighted_fit_reports_the_weights_against_reward_and_value_gradient_and_the_distractors_error():
    """With weighting and distractors: every model update reports weight_ess and the weights' correlation with the
    reward and with ‖∇V(o')‖; each fit the elites' hold-out error on the env's own Δs and on the distractors."""
    from recipes.m3po.m3po import M3POLearner

    torch.manual_seed(0)
    cfg = M3POConfig(
        weighting=True,
        distractors=2,
        history_len=0,
        members=3,
        elites=2,
        model_layers=1,
        model_units=8,
        sac_units=8,
        model_batch=16,
        model_max_epochs=2,
    )
    learner = M3POLearner(cfg, O, A, 128)
    gen = torch.Generator().manual_seed(1)
    for t in range(80):
        obs = torch.randn(O, generator=gen).numpy()
        step = {"obs": obs, "action": torch.rand(A, generator=gen).numpy(), "reward": float(obs[0])}
        learner.observe({**step, "is_first": t % 20 == 0, "is_terminal": False})
    metrics = learner.fit_model()
    assert 0 < metrics["model/weight_ess"] <= 1
    for probe in ("reward", "value_grad_norm"):
        assert -1 <= metrics[f"model/weight_corr/{probe}"] <= 1
    assert metrics["model/holdout_mse_state"] > 0 and metrics["model/holdout_mse_distractors"] > 0


def test_model_free_sac_needs_no_termination_function_and_mbpo_does():
    from recipes.envs import make_env
    from recipes.m3po.m3po import make_learner
    from recipes.registry import resolve

    env = make_env("gym:Swimmer-v5", seed=0)  # no termination function is known for it
    sac = resolve("gym:Swimmer-v5", "cpu", {"history_len": 0}, recipe="sac", steps=100)
    assert make_learner(sac, env, Path("/nonexistent")).terminal is None
    with pytest.raises(ValueError, match="no termination function is known for 'gym:Swimmer-v5'"):
        make_learner(resolve("gym:Swimmer-v5", "cpu", {}, recipe="mbpo", steps=100), env, Path("/nonexistent"))


def _filled_learner(cfg, steps: int = 120, seed: int = 1):
    """An M3POLearner with ``steps`` transitions of a linear toy system in D_env: o' = 0.9 o + 0.5 a (every
    dimension equally predictable), r = o_0."""
    from recipes.m3po.m3po import M3POLearner

    torch.manual_seed(0)
    learner = M3POLearner(cfg, O, A, steps + 1)
    gen = np.random.default_rng(seed)
    obs, action = gen.standard_normal(O), np.zeros(A)
    for t in range(steps):
        # a step holds the action that led to its observation (recipes.envs' convention)
        step = {"obs": obs.astype(np.float32), "action": action.astype(np.float32), "reward": float(obs[0])}
        learner.observe({**step, "is_first": t % 40 == 0, "is_terminal": False})
        action = gen.uniform(-1, 1, A) if t % 40 != 39 else np.zeros(A)
        obs = 0.9 * obs + 0.5 * np.resize(action, O) if t % 40 != 39 else gen.standard_normal(O)
    return learner


def test_vagram_model_loss_is_the_value_gradient_weighted_error_plus_the_reward_error():
    cfg = M3POConfig(model_loss="vagram", history_len=0, members=3, elites=2, model_layers=1, model_units=8)
    learner = _filled_learner(cfg)
    learner.model.double()
    learner.sac.double()
    index = learner.d_env.indices()[:10]
    batch = {k: v.double() if v.is_floating_point() else v for k, v in learner.env_batch(index).items()}
    batch["bootstrap"] = torch.tensor([[1, 2, 0, 1, 1, 0, 3, 1, 1, 0]] * 3, dtype=torch.float64)
    learner.model.update_normalizer(batch)
    torch.manual_seed(7)  # V's closure fixes its action noise from the global generator: the same V twice
    loss = learner._model_forward(batch)(learner.model).loss
    out = learner.model.loss(batch)
    torch.manual_seed(7)
    value = learner.sac.value_fn(batch["next_history"], batch["next_history_mask"])
    x = batch["next_obs"].detach().requires_grad_()
    (g,) = torch.autograd.grad(value(x).sum(), x)
    member = ((g * (out.states["next_obs_mean"] - batch["next_obs"])) ** 2).sum(-1)
    member = member + (out.states["reward_mean"] - batch["reward"]) ** 2
    torch.testing.assert_close(loss, (batch["bootstrap"] * member).mean(0))


def test_vagram_fits_what_the_value_depends_on_and_rolls_out_the_mean():
    """V(o') = 3·o'_0: the model fitted by VaGraM learns Δo_0 and not the other dimensions (which no value gradient
    weights); the NLL-fitted one learns them all."""
    errors = {}
    for loss in ("nll", "vagram"):
        cfg = M3POConfig(
            model_loss=loss,
            history_len=0,
            members=3,
            elites=2,
            model_layers=2,
            model_units=32,
            model_batch=16,
            model_max_epochs=60,
        )
        learner = _filled_learner(cfg, steps=400)
        learner.sac.value_fn = lambda history, mask: lambda o: 3.0 * o[..., 0]
        learner.fit_model()
        hold = learner.env_batch(learner.d_env.indices())
        errors[loss] = learner.model.holdout_loss(hold, per_dim=True)[learner.model.elite_idx].mean(0)[:O]
    assert errors["vagram"][0] < 0.1 and errors["nll"][0] < 0.1
    assert errors["vagram"][1:].min() > 5 * errors["nll"][1:].max()

    calls = []
    learner.model.sample = lambda *args, **kwargs: calls.append(kwargs["deterministic"]) or (args[0], args[0][:, 0])
    learner.rollouts(4)
    assert calls and all(calls)


def test_vagram_model_loss_and_weighting_are_exclusive():
    with pytest.raises(ValueError, match="model_loss"):
        M3POConfig(model_loss="vagram", weighting=True)


def test_mbpo_rollout_schedule_and_the_model_pool_it_sizes():
    """MBPO's Hopper schedule 1 → 15 over env steps 20k–150k, rounded down; D_model is sized for the longest
    rollouts, and SAC reads only the newest rollouts_per_step × k × model_retain rows of it."""
    cfg = MBPOConfig(rollout_length_end=15, rollout_length_from=20_000, rollout_length_until=150_000)
    assert [cfg.rollout_length_at(t) for t in (0, 20_000, 85_000, 149_999, 10**6)] == [1, 1, 8, 14, 15]
    assert MBPOConfig().rollout_length_at(10**6) == 1
    with pytest.raises(ValueError, match="rollout_length_until"):
        MBPOConfig(rollout_length_end=15, rollout_length_from=10, rollout_length_until=5)
    from recipes.m3po.m3po import M3POLearner

    small = {"members": 3, "elites": 2, "model_layers": 1, "model_units": 8, "sac_units": 8}
    learner = M3POLearner(MBPOConfig(rollout_length_end=3, rollouts_per_step=4, model_retain=5, **small), O, A, 64)
    assert learner.d_model.capacity == 4 * 3 * 5  # room for the longest rollouts

    buffer = TransitionBuffer(10, {"x": ((), torch.float32)})
    buffer.add(x=torch.arange(14.0))  # holds 4 … 13, newest last
    rows = buffer.get(buffer.sample_indices(200, torch.Generator().manual_seed(0), recent=3))["x"]
    assert set(rows.tolist()) == {11.0, 12.0, 13.0}
    assert set(buffer.get(buffer.sample_indices(400, recent=50))["x"].tolist()) == set(range(4, 14))
    with pytest.raises(ValueError, match="recent"):
        buffer.sample_indices(1, recent=0)
