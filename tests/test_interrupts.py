"""How a run ends when it does not finish: a signal, an exception inside training, an optional artifact that fails."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rundirs import TINY_AGENT, eval_steps, max_step, records, run_argv

from recipes.cli import main
from recipes.run import loop, rundir

RUN = [
    *TINY_AGENT,
    "prefill=100",
    "train_every=20",
    "eval_every=400",
    "log_every=100",
    "checkpoint_every=10000",  # no periodic checkpoint: whatever is on disk at a signal, the signal wrote
    "time_limit=50",
    "video=false",
]


def _argv(logdir: Path, steps: int, *extra: str) -> list[str]:
    return run_argv("dreamerv2", logdir, steps, [*RUN, *extra])


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_update_writes_a_checkpoint_and_the_same_command_resumes(tmp_path, signum, code):
    logdir = tmp_path / "run"
    argv = _argv(logdir, 800)
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and max_step(logdir) < 200 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None and max_step(logdir) >= 200, "the run never got going"
    assert not (logdir / "checkpoints" / "latest.pt").exists()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    ckpt = torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)
    step = int(ckpt["counters"]["env_steps"])
    assert 200 <= step < 800
    assert err.strip().splitlines()[-1] == (
        f"reweigh: interrupted at env step {step}; checkpoint written; re-run the same command to resume"
    )
    assert "Traceback" not in err and not (logdir / "error.log").exists()
    before = len(records(logdir))
    rerun = subprocess.run([sys.executable, "-m", "recipes.cli", *argv], capture_output=True, timeout=300)
    assert rerun.returncode == 0
    resumed = [r["step"] for r in records(logdir)[before:]]
    assert resumed and min(resumed) > step  # it went on from the checkpoint, not from the start
    assert max(resumed) == 800 and eval_steps(logdir) == [400, 800]


class _Closing:
    """Wraps a close() to record that it ran."""

    def __init__(self, calls: list[str], name: str, close) -> None:
        self.calls, self.name, self.close_fn = calls, name, close

    def __call__(self) -> None:
        self.calls.append(self.name)
        self.close_fn()


def test_an_exception_inside_a_train_step_closes_everything_writes_error_log_and_exits_1(tmp_path, monkeypatch, capsys):
    from recipes.dreamer import dreamerv2

    calls: list[str] = []
    make_env, logger_init = loop.make_env, rundir.Logger.__init__

    def env(*args, **kwargs):
        e = make_env(*args, **kwargs)
        e.close = _Closing(calls, "env", e.close)
        return e

    def logger(self, *args, **kwargs):
        logger_init(self, *args, **kwargs)
        self.close = _Closing(calls, "logger", self.close)

    def train(self, env_steps):
        if env_steps >= 200:
            raise KeyError("injected inside a train step")
        return real_train(self, env_steps)

    real_train, real_close = dreamerv2.DreamerLearner.train, dreamerv2.DreamerLearner.close
    monkeypatch.setattr(loop, "make_env", env)
    monkeypatch.setattr(rundir.Logger, "__init__", logger)
    monkeypatch.setattr(dreamerv2.DreamerLearner, "train", train)
    monkeypatch.setattr(
        dreamerv2.DreamerLearner, "close", lambda self: calls.append("learner") or real_close(self), raising=False
    )
    logdir = tmp_path / "run"
    assert main(_argv(logdir, 800)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reweigh: failed: KeyError: 'injected inside a train step'") and str(logdir) in err
    assert sorted(calls) == ["env", "env", "learner", "logger"]  # training and evaluation envs, replay, logger
    log = (logdir / "error.log").read_text()
    assert "injected inside a train step" in log and "Traceback" in log
    assert json.loads((logdir / "config.json").read_text())["recipe"] == "dreamerv2"


def test_an_optional_artifact_that_fails_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ImportError("pygame is not installed")

    monkeypatch.setattr(rundir, "write_video", broken)
    monkeypatch.setattr(rundir, "plot_curve", broken)
    logdir = tmp_path / "run"
    assert main(_argv(logdir, 200, "video=true")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("reweigh: warning:")]
    assert len(warnings) == 2 and all("pygame is not installed" in w for w in warnings)
    assert any("eval_episode.gif" in w for w in warnings) and any("curve.png" in w for w in warnings)
    assert max_step(logdir) == 200 and (logdir / "checkpoints" / "latest.pt").exists()


def test_a_logdir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert main(_argv(path, 200)) == 2
    assert capsys.readouterr().err.strip() == f"reweigh: error: --logdir {path}: a file, not a directory"
    assert path.read_text() == "x"
