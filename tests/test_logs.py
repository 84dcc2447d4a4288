"""Logs people read: progress without a terminal is a line every N seconds; optional Weights & Biases."""

from __future__ import annotations

import importlib.machinery
import io
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from rundirs import TINY_AGENT

from recipes.cli import main
from recipes.run.progress import Progress

RUN = [
    *TINY_AGENT,
    "prefill=100",
    "train_every=20",
    "eval_every=200",
    "log_every=100",
    "time_limit=25",
    "video=false",
]


def _run(logdir: Path, steps: int, *extra: str, progress: bool = False) -> list[str]:
    argv = ["run", "dreamerv2", "--steps", str(steps), "--logdir", str(logdir)]
    argv += [] if progress else ["--no-progress"]
    for item in [*RUN, *extra]:
        argv += ["--set", item]
    return argv


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_a_plain_line_every_n_seconds(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("recipes.run.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    bar = Progress(1000, initial=100, unit="env step", label="test", stream=out, every=30)
    for _ in range(720):
        clock[0] += 0.125  # 90 s in all: a line at 30 s, 60 s, 90 s
        bar.update(1)
        bar.set_postfix(eval=5)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 4  # three on the clock, one at the end
    assert lines[0] == "[test] 340/1000 env steps (34%) | 8.0 env steps/s | 30s elapsed, ~1m22s left | eval=5"
    assert lines[2].startswith("[test] 820/1000 env steps (82%) | 8.0 env steps/s | 1m30s elapsed")
    assert lines[-1].startswith("[test] 820/1000 env steps (82%)")


def test_progress_on_a_terminal_is_tqdm_and_disabled_writes_only_messages():
    tty = _Terminal()
    bar = Progress(100, stream=tty)
    bar.update(50)
    bar.write("a message")
    bar.close()
    assert "\r" in tty.getvalue() and "50/100" in tty.getvalue() and "a message" in tty.getvalue()
    quiet = io.StringIO()
    bar = Progress(100, stream=quiet, every=0, enabled=False)
    bar.update(50)
    bar.write("only this")
    bar.close()
    assert quiet.getvalue() == "only this\n"


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("REWEIGH_PROGRESS_EVERY", "5")
    assert Progress(10, stream=io.StringIO()).every == 5.0
    monkeypatch.setenv("REWEIGH_PROGRESS_EVERY", "soon")
    with pytest.raises(ValueError, match="REWEIGH_PROGRESS_EVERY: expected seconds"):
        Progress(10, stream=io.StringIO())


def test_a_run_logging_to_a_file_writes_lines_not_bar_redraws(tmp_path, capsys):
    assert main(_run(tmp_path / "run", 400, progress=True)) == 0
    err = capsys.readouterr().err  # not a terminal, as in a log file
    assert "\r" not in err and "it/s" not in err
    assert err.splitlines()[-1].startswith("[dreamerv2 run] 400/400 env steps (100%)")
    assert len(err) < 1000


class _FakeWandb(types.ModuleType):
    """Stands in for the ``wandb`` package: records init/log/finish."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.inits: list[dict[str, Any]] = []
        self.logged: list[tuple[dict[str, float], int]] = []
        self.finished = 0

    def init(self, **kwargs: Any) -> _FakeWandb:
        self.inits.append(kwargs)
        return self

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((data, step))

    def finish(self) -> None:
        self.finished += 1


def test_wandb_logging_when_asked_and_resuming_the_same_wandb_run(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logdir = tmp_path / "run"
    assert main(_run(logdir, 200)) == 0
    assert fake.inits == []  # off by default
    assert main(_run(logdir, 400, "wandb=true", "wandb_project=tests")) == 0  # turned on when resuming: no --force
    (init,) = fake.inits
    assert init["project"] == "tests" and init["resume"] == "allow" and init["config"]["recipe"] == "dreamerv2"
    assert init["id"] == (logdir / "wandb_id").read_text().strip()
    assert any("eval_return" in data and step == 400 for data, step in fake.logged)
    assert fake.finished == 1
    assert main(_run(logdir, 600, "wandb=true", "wandb_project=tests")) == 0
    assert fake.inits[1]["id"] == init["id"]  # the same W&B run continues


def test_wandb_missing_is_a_config_error_naming_pip_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails, find_spec finds nothing
    logdir = tmp_path / "run"
    assert main(_run(logdir, 200, "wandb=true")) == 2
    assert capsys.readouterr().err.strip() == (
        "reweigh: error: wandb=true needs the Weights & Biases package: pip install wandb"
    )
    assert not logdir.exists()
