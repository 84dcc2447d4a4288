"""Faults, each injected: a damaged checkpoint, a full disk, NaN in the data, two processes on one run directory."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rundirs import TINY_AGENT, records, run_argv

import bilevel as B
from recipes.agents.sac import SAC
from recipes.cli import main
from recipes.data.replay import Replay
from recipes.dreamer.dreamerv2 import DreamerAgent
from recipes.dreamer.tempo import TempoAgent
from recipes.registry import resolve
from recipes.run import loop, rundir

AGENT = {
    "deter": 12,
    "stoch": 3,
    "hidden": 12,
    "mlp_layers": 1,
    "mlp_units": 12,
    "ac_layers": 1,
    "ac_units": 12,
    "batch_size": 3,
    "seq_len": 5,
    "horizon": 3,
    "weighter_layers": 2,
    "weighter_units": 8,
}
RUN = [
    *TINY_AGENT,
    "prefill=100",
    "train_every=20",
    "eval_every=1000",
    "log_every=100",
    "time_limit=25",
    "video=false",
]


def _run(logdir: Path, steps: int, *extra: str) -> list[str]:
    return run_argv("dreamerv2", logdir, steps, [*RUN, *extra])


# -- helpers ----------------------------------------------------------------------------------------------------------
def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested state (module or optimiser state_dict) by path, tensors cloned."""
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for k, v in state.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    if isinstance(state, (list, tuple)):
        return _flat(dict(enumerate(state)), prefix)
    return {prefix: state.detach().clone() if isinstance(state, torch.Tensor) else state}


def _snapshot(agent: torch.nn.Module) -> dict[str, Any]:
    opts = agent.optimizers() if hasattr(agent, "optimizers") else {}
    return _flat({"module": agent.state_dict(), **{k: o.state_dict() for k, o in opts.items()}})


def _same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The paths whose values differ (bitwise for tensors)."""
    assert a.keys() == b.keys()
    return [
        k
        for k in a
        if (not torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] != b[k])  # type: ignore[arg-type]
    ]


def _batch(cfg: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, t = cfg.batch_size, cfg.seq_len
    batch = {
        "obs": torch.randn(b, t, 5, generator=gen),
        "action": torch.rand(b, t, 1, generator=gen) * 2 - 1,
        "reward": torch.rand(b, t, generator=gen),
        "is_first": torch.zeros(b, t, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    return batch


def _poisoned(batch: dict[str, torch.Tensor], value: float = float("nan")) -> dict[str, torch.Tensor]:
    """The batch with one element of one observation replaced by ``value``."""
    out = {k: v.clone() for k, v in batch.items()}
    out["obs"][1, 2, 3] = value
    return out


# -- NaN in one observation element: nothing written, for every learner -------------------------------------------
@pytest.mark.parametrize(("recipe", "over"), [("dreamerv2", {}), ("tempo", {"strategy": "lookahead"})])
def test_one_nan_in_one_observation_writes_nothing_into_the_model(recipe, over):
    torch.manual_seed(0)
    settings = {k: v for k, v in {**AGENT, **over}.items() if recipe == "tempo" or "weighter" not in k}
    cfg = resolve("dmc:cartpole_swingup", "cpu", settings, recipe=recipe)
    agent = (TempoAgent if recipe == "tempo" else DreamerAgent)(cfg, (5,), 1, False)
    good = _batch(cfg)
    agent.train_step(good)  # optimiser moments exist, so a NaN step would have something to ruin
    before = _snapshot(agent)
    with pytest.raises(B.NonFiniteError, match="model/lower_loss_unweighted") as info:
        agent.train_step(_poisoned(good))
    assert info.value.name == "model/lower_loss_unweighted" and np.isnan(info.value.value)
    assert _same(before, _snapshot(agent)) == []  # parameters, buffers, every optimiser's state: bitwise equal
    assert all(p.grad is None for p in agent.wm.parameters())
    agent.train_step(good)  # and training goes on
    assert all(torch.isfinite(p).all() for p in agent.parameters())

    # the same NaN without the guard ruins the world model in one step (what the guard prevents)
    agent.update.skip_nonfinite = False
    agent.world_model_step(_poisoned(good))
    ruined = [n for n, p in agent.wm.named_parameters() if not torch.isfinite(p).all()]
    assert len(ruined) > len(list(agent.wm.parameters())) // 2


def test_infinite_reward_is_caught_as_well():
    cfg = resolve("dmc:cartpole_swingup", "cpu", {k: v for k, v in AGENT.items() if "weighter" not in k})
    agent = DreamerAgent(cfg, (5,), 1, False)
    batch = _batch(cfg)
    batch["reward"][0, 1] = float("inf")
    before = _snapshot(agent)
    with pytest.raises(B.NonFiniteError, match="model/"):
        agent.train_step(batch)
    assert _same(before, _snapshot(agent)) == []


def test_sac_skips_a_nan_critic_and_a_nan_actor_before_their_steps():
    torch.manual_seed(0)
    sac = SAC(4, 2, layers=1, units=16)
    gen = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.randn(8, 4, generator=gen),
        "action": torch.rand(8, 2, generator=gen) * 2 - 1,
        "reward": torch.randn(8, generator=gen),
        "next_obs": torch.randn(8, 4, generator=gen),
        "done": torch.zeros(8),
    }
    sac.update(batch)
    before = _snapshot(sac)
    bad = {**batch, "next_obs": batch["next_obs"].clone()}
    bad["next_obs"][3, 1] = float("nan")  # reaches the critic's target only
    with pytest.raises(B.NonFiniteError, match="critic_loss"):
        sac.update(bad)
    assert _same(before, _snapshot(sac)) == []
    bad = {**batch, "obs": batch["obs"].clone()}
    bad["obs"][0, 0] = float("inf")
    with pytest.raises(B.NonFiniteError):
        sac.update(bad)
    assert _same(before, _snapshot(sac)) == []
    assert set(sac.update(batch)) == {"critic_loss", "actor_loss", "alpha", "alpha_loss", "entropy", "q_mean"}


def test_m3po_family_skips_each_non_finite_sac_update_and_counts_it():
    from recipes.m3po.m3po import M3POLearner

    torch.manual_seed(0)
    cfg = resolve("meta:halfcheetah-fwd-bwd", "cpu", {"sac_batch": 8, "sac_units": 16, "train_every": 3}, recipe="sac")
    learner = M3POLearner(cfg, 4, 2, 100)
    n = 40
    learner.d_env.add(
        obs=torch.randn(n, 4),
        action=torch.rand(n, 2) * 2 - 1,
        reward=torch.randn(n),
        next_obs=torch.randn(n, 4),
        done=torch.zeros(n),
        pos=torch.arange(n),
    )
    done, metrics = learner.train(200)
    assert done == 3 and learner.skips.total == 0 and "sac/critic_loss" in metrics
    before = _snapshot(learner.sac)
    real_batch = learner.sac_batch

    def poisoned(env_steps: int) -> dict[str, torch.Tensor]:
        batch = real_batch(env_steps)
        batch["reward"][0] = float("nan")
        return batch

    learner.sac_batch = poisoned  # type: ignore[method-assign]
    done, metrics = learner.train(210)
    assert done == 0 and "sac/critic_loss" not in metrics
    assert learner.skips.total == 3 and learner.skips.in_row == 3
    assert learner.skips.last is not None and learner.skips.last.name == "sac/critic_loss"
    assert _same(before, _snapshot(learner.sac)) == []


def test_admrl_model_fit_skips_non_finite_minibatches_and_stops_after_a_run_of_them():
    from recipes.admrl.virtual import Transitions, fit_model
    from worldmodels import GaussianEnsemble

    torch.manual_seed(0)
    model = GaussianEnsemble(3, 2, members=2, elites=1, layers=1, units=8, learn_reward=False)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    n = 64
    data = Transitions(torch.randn(n, 3), torch.rand(n, 2), torch.randn(n, 3), torch.zeros(n))
    model.update_normalizer({"obs": data.obs, "action": data.action, "next_obs": data.next_obs})
    fit = {"epochs": 2, "batch": 16, "holdout_ratio": 0.25, "patience": 5, "improvement": 0.01, "max_nonfinite": 3}
    metrics = fit_model(model, opt, data, generator=torch.Generator().manual_seed(0), **fit)
    assert metrics["model/nonfinite_skips"] == 0
    before = _snapshot(model)
    data.next_obs[:] = float("nan")
    with pytest.raises(RuntimeError, match="3 minibatches in a row had a non-finite model/nll"):
        fit_model(model, opt, data, generator=torch.Generator().manual_seed(0), **fit)
    assert _same(before, _snapshot(model)) == []


def test_moving_normalizer_ignores_a_non_finite_batch():
    norm = B.MovingNormalizer(momentum=0.5)
    norm(torch.tensor([1.0, 3.0]))
    mean, var = norm.mean.clone(), norm.var.clone()
    norm(torch.tensor([1.0, float("nan")]))
    assert torch.equal(norm.mean, mean) and torch.equal(norm.var, var)
    norm(torch.tensor([3.0, 5.0]))
    assert norm.mean.item() == pytest.approx(3.0)


# -- NaN in a run: skipped, counted, logged; a run of them stops with the checkpoint from before --------------------
def _inject_nan(monkeypatch: pytest.MonkeyPatch, calls: set[int] | None, start: int = 0) -> list[int]:
    """Make ``Replay.sample`` put a NaN into one observation element on the given call numbers (from 1), or on
    every call from ``start`` on when ``calls`` is None; returns the list of call numbers so far."""
    seen: list[int] = []
    original = Replay.sample

    def sample(self: Replay, batch: int) -> dict[str, np.ndarray]:
        out = original(self, batch)
        seen.append(len(seen) + 1)
        n = seen[-1]
        if (calls is not None and n in calls) or (calls is None and n >= start):
            out["obs"] = out["obs"].copy()
            out["obs"][0, 1, 2] = np.nan
        return out

    monkeypatch.setattr(Replay, "sample", sample)
    return seen


def _finite_checkpoint(path: Path) -> dict[str, Any]:
    ckpt = torch.load(path, weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["agent"].values() if v.is_floating_point())
    return ckpt


def test_a_nan_batch_in_a_run_is_skipped_counted_and_reported(tmp_path, monkeypatch, capsys):
    _inject_nan(monkeypatch, {3})
    logdir = tmp_path / "run"
    assert main(_run(logdir, 400)) == 0
    err = capsys.readouterr().err
    assert "skipped an update with a non-finite model/lower_loss_unweighted = nan" in err
    skips = [r["nonfinite_skips"] for r in records(logdir) if "nonfinite_skips" in r]
    assert skips and max(skips) == 1 and skips[-1] == 1
    _finite_checkpoint(logdir / "checkpoints" / "latest.pt")


def test_nan_updates_in_a_row_stop_the_run_keeping_the_checkpoint_from_before(tmp_path, monkeypatch, capsys):
    _inject_nan(monkeypatch, None, start=6)
    logdir = tmp_path / "run"
    rc = main(_run(logdir, 2000, "max_nonfinite=3", "checkpoint_every=100"))
    err = capsys.readouterr().err
    assert rc == 1
    assert "reweigh: failed: stopped at env step" in err and "3 updates in a row" in err
    assert "model/lower_loss_unweighted = nan" in err and "max_nonfinite" in err
    # where it came from: the traceback, appended to the run directory's error.log and named in the message
    assert f"(traceback: {logdir / 'error.log'})" in err
    log = (logdir / "error.log").read_text()
    assert log.startswith("--- ") and "Traceback (most recent call last)" in log and "3 updates in a row" in log
    assert "reweigh run dreamerv2 " in log.splitlines()[0] and "max_nonfinite=3" in log.splitlines()[0]
    recs = records(logdir)
    first_skip = min(r["step"] for r in recs if r.get("nonfinite_skips", 0) > 0)
    assert max(r["nonfinite_skips"] for r in recs if "nonfinite_skips" in r) == 3
    ckpt = _finite_checkpoint(logdir / "checkpoints" / "latest.pt")
    assert 0 < ckpt["counters"]["env_steps"] < first_skip  # written before the first skipped update
    assert f"holds env step {ckpt['counters']['env_steps']}, from before the first" in err


class _RaisingLearner(loop.Learner):
    """A learner without per-update skipping: its ``train`` raises NonFiniteError from call ``bad_from`` on."""

    def __init__(self, bad_from: int) -> None:
        self.bad_from, self.calls = bad_from, 0

    def act(self, step: dict[str, Any], state: Any, *, explore: bool) -> tuple[np.ndarray, Any]:
        return np.zeros(1, np.float32), None

    def observe(self, step: dict[str, Any]) -> None:
        pass

    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        self.calls += 1
        if self.calls >= self.bad_from:
            raise B.NonFiniteError("loss", float("inf"))
        return 1, {"loss": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def test_a_non_finite_error_escaping_a_learner_counts_as_one_skip_and_stops_the_run(tmp_path):
    cfg = resolve(
        "dmc:cartpole_swingup",
        "cpu",
        {"prefill": 0, "train_every": 10, "checkpoint_every": 30, "max_nonfinite": 4, "video": False},
        steps=1000,
    )
    stop = r"4 updates in a row .* the first at env step 60 \(the last: loss = inf\)"
    with pytest.raises(loop.NonFiniteRunError, match=stop):
        loop.train(cfg, tmp_path, lambda cfg, env, logdir: _RaisingLearner(6), recipe="test", progress=False)
    ckpt = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=False)
    assert ckpt["counters"]["env_steps"] == 30 and ckpt["calls"] == 3  # the one before the first skip at 60
    assert [r["nonfinite_skips"] for r in records(tmp_path) if set(r) == {"step", "nonfinite_skips", "time"}] == [
        1,
        2,
        3,
        4,
    ]
    with rundir.lock(tmp_path):  # the stopped run released its lock
        pass


class _FreezeProbe(_RaisingLearner):
    """Records ``gc.get_freeze_count()`` at every training call."""

    def __init__(self, bad_from: int) -> None:
        super().__init__(bad_from)
        self.frozen: list[int] = []

    def train(self, env_steps: int) -> tuple[int, dict[str, float]]:
        self.frozen.append(gc.get_freeze_count())
        return super().train(env_steps)


@pytest.mark.parametrize("bad_from", [10**9, 3])
def test_the_loop_freezes_the_objects_alive_after_its_first_training_call_and_unfreezes_at_the_end(tmp_path, bad_from):
    cfg = resolve(
        "dmc:cartpole_swingup",
        "cpu",
        {"prefill": 0, "train_every": 10, "max_nonfinite": 1, "eval_every": 10**6, "video": False},
        steps=60,
    )
    probe = _FreezeProbe(bad_from)
    assert gc.get_freeze_count() == 0
    stops = pytest.raises(loop.NonFiniteRunError) if bad_from == 3 else contextlib.nullcontext()
    with stops:
        loop.train(cfg, tmp_path, lambda cfg, env, logdir: probe, recipe="test", progress=False)
    assert probe.frozen[0] == 0 and min(probe.frozen[1:]) > 0  # frozen from the second call on
    assert gc.get_freeze_count() == 0  # unfrozen when the run ended, also when it stopped with an error


def test_the_loop_leaves_a_callers_frozen_objects_frozen(tmp_path):
    cfg = resolve(
        "dmc:cartpole_swingup", "cpu", {"prefill": 0, "train_every": 10, "eval_every": 10**6, "video": False}, steps=60
    )
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        probe = _FreezeProbe(10**9)
        loop.train(cfg, tmp_path, lambda cfg, env, logdir: probe, recipe="test", progress=False)
        # frozen objects that die leave the count (refcounting), so it can only shrink: not frozen again
        assert len(probe.frozen) >= 2 and before >= probe.frozen[0] >= probe.frozen[-1] > 0
        assert gc.get_freeze_count() > 0  # and not unfrozen at the end
    finally:
        gc.unfreeze()


# -- checkpoints: rotation, a damaged latest one, a full disk ---------------------------------------------------------
def test_checkpoints_rotate_and_a_truncated_latest_falls_back_to_previous(tmp_path, caplog):
    rundir.save_checkpoint(tmp_path, {"n": 1})
    assert rundir.load_checkpoint(tmp_path) == {"n": 1}
    assert not (tmp_path / "checkpoints" / "previous.pt").exists()
    rundir.save_checkpoint(tmp_path, {"n": 2, "x": torch.randn(1000)})
    assert torch.load(tmp_path / "checkpoints" / "previous.pt", weights_only=False) == {"n": 1}
    latest = tmp_path / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="reweigh"):
        assert rundir.load_checkpoint(tmp_path) == {"n": 1}
    assert str(latest) in caplog.text and "previous.pt" in caplog.text
    (tmp_path / "checkpoints" / "previous.pt").write_bytes(b"garbage")
    with pytest.raises(rundir.CheckpointError, match=r"no checkpoint of .* can be read"):
        rundir.load_checkpoint(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.pt", "previous.pt"]


def test_a_run_whose_latest_checkpoint_is_truncated_resumes_from_the_previous(tmp_path, capsys, caplog):
    logdir = tmp_path / "run"
    assert main(_run(logdir, 200, "checkpoint_every=150")) == 0  # checkpoints at 150, then 200 (the end)
    latest, previous = logdir / "checkpoints" / "latest.pt", logdir / "checkpoints" / "previous.pt"
    assert torch.load(previous, weights_only=False)["counters"]["env_steps"] == 150
    latest.write_bytes(latest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="reweigh"):
        assert main(_run(logdir, 300, "checkpoint_every=150")) == 0
    assert f"checkpoint {latest} is damaged" in caplog.text
    assert torch.load(latest, weights_only=False)["counters"]["env_steps"] == 300
    previous.write_bytes(b"")
    latest.write_bytes(b"not a checkpoint")
    assert main(_run(logdir, 400, "checkpoint_every=150")) == 1
    assert "reweigh: failed: no checkpoint of" in capsys.readouterr().err


def _dev_full_mkstemp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint writes go to /dev/full: the kernel answers ENOSPC, as on a full disk."""
    real = tempfile.mkstemp

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(rundir.tempfile, "mkstemp", mkstemp)


def _failing_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.save`` writes half a file, then the write fails with ENOSPC."""

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir.torch, "save", save)


@pytest.mark.parametrize("inject", [_dev_full_mkstemp, _failing_save])
def test_disk_full_while_checkpointing_is_a_clear_error_and_leaves_the_checkpoints(tmp_path, monkeypatch, inject):
    if inject is _dev_full_mkstemp and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    rundir.save_checkpoint(tmp_path, {"n": 1})
    rundir.save_checkpoint(tmp_path, {"n": 2})
    directory = tmp_path / "checkpoints"
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    inject(monkeypatch)
    with pytest.raises(rundir.CheckpointError, match="the disk is full") as info:
        rundir.save_checkpoint(tmp_path, {"n": 3, "x": torch.randn(100_000)})
    assert str(directory / "latest.pt") in str(info.value) and "is intact" in str(info.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == files  # no temp file left, nothing changed
    assert rundir.load_checkpoint(tmp_path) == {"n": 2}


def test_disk_full_in_a_run_exits_1_with_the_reason(tmp_path, monkeypatch, capsys):
    logdir = tmp_path / "run"
    real = rundir.save_checkpoint
    calls = []

    def save(logdir: Path, state: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            _failing_save(monkeypatch)
        real(logdir, state)

    monkeypatch.setattr(rundir, "save_checkpoint", save)
    assert main(_run(logdir, 400, "checkpoint_every=100")) == 1
    err = capsys.readouterr().err
    assert "reweigh: failed: could not write the checkpoint" in err and "the disk is full" in err
    monkeypatch.undo()
    assert torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)["counters"]["env_steps"] == 100
    assert [p.name for p in (logdir / "checkpoints").iterdir()] == ["latest.pt"]


# -- two processes on one run directory -----------------------------------------------------------------------------
def test_a_second_lock_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    with rundir.lock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(rundir.RunDirInUseError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            with rundir.lock(tmp_path):
                pass
    with rundir.lock(tmp_path):  # released at the end of the block
        pass


def test_a_second_process_on_a_running_run_directory_exits_2(tmp_path, capsys):
    logdir = tmp_path / "run"
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from recipes.run import rundir
        with rundir.lock(Path({str(logdir)!r})):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert main(_run(logdir, 200)) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"reweigh: error: {logdir} is in use by another process (pid {proc.pid}); wait for it to end or use "
            "another --logdir"
        )
        assert not (logdir / "config.json").exists()
    finally:
        proc.communicate("", timeout=30)
    assert main(_run(logdir, 200)) == 0  # the holder has ended: the directory is free
