"""``reweigh run m3po|mbpo|sac``: the run-directory contract, resume after SIGKILL, the weighting option, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recipes.cli import main

TINY = [
    "members=3",
    "elites=2",
    "model_layers=1",
    "model_units=16",
    "model_batch=32",
    "model_max_epochs=2",
    "model_every=100",
    "rollouts_per_step=4",
    "sac_updates=1",
    "sac_batch=32",
    "sac_units=16",
    "history_hidden=8",
    "prefill=100",
    "train_every=10",
    "eval_every=200",
    "eval_episodes=1",
    "log_every=100",
    "checkpoint_every=100",
    "time_limit=50",
    "model_retain=50",
]


def _args(logdir: Path, steps: int, recipe: str = "m3po", extra: tuple[str, ...] = ()) -> list[str]:
    out = [
        "run",
        recipe,
        "--env",
        "meta:halfcheetah-fwd-bwd",
        "--steps",
        str(steps),
        "--seed",
        "0",
        "--logdir",
        str(logdir),
        "--no-progress",
    ]
    lengths = [] if recipe == "mbpo" else ["history_len=3"]  # mbpo's own default is L = 0
    for item in [*TINY, *lengths, *extra]:
        out += ["--set", item]
    return out


def _records(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["m3po", "mbpo", "sac"])
def test_run_writes_the_run_directory_and_resumes(tmp_path, recipe):
    logdir = tmp_path / recipe
    assert main(_args(logdir, 400, recipe)) == 0
    config = json.loads((logdir / "config.json").read_text())
    assert config["recipe"] == recipe and config["steps"] == 400
    assert config["history_len"] == (0 if recipe == "mbpo" else 3)
    records = _records(logdir)
    assert [r["step"] for r in records if "eval_return" in r] == [200, 400]
    assert any("sac/critic_loss" in r for r in records) and any("train_return" in r for r in records)
    if recipe != "sac":
        assert any("model/holdout_mse" in r for r in records) and any("rollout/transitions" in r for r in records)
    assert (logdir / "curve.png").stat().st_size > 0 and (logdir / "eval_episode.gif").stat().st_size > 0
    assert list(logdir.glob("events.out.tfevents.*"))
    assert main(_args(logdir, 600, recipe)) == 0  # resumes and continues to the new total
    assert [r["step"] for r in _records(logdir) if "eval_return" in r] == [200, 400, 600]


def test_weighting_trains_a_weighter_through_the_sac_value(tmp_path):
    logdir = tmp_path / "w"
    assert main(_args(logdir, 300, extra=("weighting=true", "model_max_epochs=1"))) == 0
    records = [r for r in _records(logdir) if "model/hypergrad_norm" in r]
    assert records and all(r["model/hypergrad_norm"] > 0 for r in records)
    assert any(r["model/weight_std"] > 0 for r in records)
    ckpt = torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)
    assert "weighter" in ckpt["learner"]


def test_sigkill_then_resume(tmp_path):
    logdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "recipes.cli", *_args(logdir, 100_000)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = logdir / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and _max_step(logdir) >= 300):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _max_step(logdir)
    assert killed_at >= 300, "the run never got going"
    saved = torch.load(ckpt, weights_only=False)["counters"]["env_steps"]
    assert killed_at - saved <= 100 + 10  # one checkpoint interval (+ a train call)
    assert main(_args(logdir, saved + 100)) == 0
    assert [r["step"] for r in _records(logdir) if "eval_return" in r][-1] == saved + 100


def _max_step(logdir: Path) -> int:
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return max(steps, default=0)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--env", "meta:halfcheetah-sideways"], "halfcheetah-sideways"),
        (["--set", "history_len=-1"], "history_len"),
        (["--set", "rollout_length=0"], "rollout_length"),
        (["--set", "task_switch=0"], "task_switch"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, field):
    logdir = tmp_path / "run"
    rc = main(["run", "m3po", "--steps", "100", "--logdir", str(logdir), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert field in err and len(err.splitlines()) == 1
    assert not logdir.exists()
