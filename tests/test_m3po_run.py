"""``reweigh run m3po|mbpo|sac``: the run-directory contract, resume after SIGKILL, the weighting option, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rundirs import eval_steps, kill_mid_run, records

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


@pytest.mark.parametrize("recipe", ["m3po", "mbpo", "sac"])
def test_run_writes_the_run_directory_and_resumes(tmp_path, recipe):
    logdir = tmp_path / recipe
    assert main(_args(logdir, 400, recipe)) == 0
    config = json.loads((logdir / "config.json").read_text())
    assert config["recipe"] == recipe and config["steps"] == 400
    assert config["history_len"] == (0 if recipe == "mbpo" else 3)
    recs = records(logdir)
    assert [r["step"] for r in recs if "eval_return" in r] == [200, 400]
    assert any("sac/critic_loss" in r for r in recs) and any("train_return" in r for r in recs)
    if recipe != "sac":
        assert any("model/holdout_mse" in r for r in recs) and any("rollout/transitions" in r for r in recs)
    assert (logdir / "curve.png").stat().st_size > 0 and (logdir / "eval_episode.gif").stat().st_size > 0
    assert list(logdir.glob("events.out.tfevents.*"))
    assert main(_args(logdir, 600, recipe)) == 0  # resumes and continues to the new total
    assert [r["step"] for r in records(logdir) if "eval_return" in r] == [200, 400, 600]


def test_weighting_trains_a_weighter_through_the_sac_value(tmp_path):
    logdir = tmp_path / "w"
    assert main(_args(logdir, 300, extra=("weighting=true", "model_max_epochs=1"))) == 0
    recs = [r for r in records(logdir) if "model/hypergrad_norm" in r]
    assert recs and all(r["model/hypergrad_norm"] > 0 for r in recs)
    assert any(r["model/weight_std"] > 0 for r in recs)
    ckpt = torch.load(logdir / "checkpoints" / "latest.pt", weights_only=False)
    assert "weighter" in ckpt["learner"]


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_model_precision_runs_and_is_recorded(tmp_path, precision):
    logdir = tmp_path / precision
    assert main(_args(logdir, 300, "mbpo", ("model_precision=" + precision, "model_max_epochs=1"))) == 0
    assert json.loads((logdir / "config.json").read_text())["model_precision"] == precision
    recs = [r for r in records(logdir) if "model/holdout_mse" in r]
    assert recs and all(0 < r["model/holdout_mse"] < float("inf") for r in recs)


def test_sigkill_then_resume(tmp_path):
    logdir = tmp_path / "run"
    killed_at, saved = kill_mid_run(logdir, _args(logdir, 100_000))
    assert killed_at - saved <= 100 + 10  # one checkpoint interval (+ a train call)
    assert main(_args(logdir, saved + 100)) == 0
    assert eval_steps(logdir)[-1] == saved + 100


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--env", "meta:halfcheetah-sideways"], "halfcheetah-sideways"),
        (["--set", "history_len=-1"], "history_len"),
        (["--set", "rollout_length=0"], "rollout_length"),
        (["--set", "task_switch=0"], "task_switch"),
        (["--set", "model_precision=fp16"], "model_precision"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, field):
    logdir = tmp_path / "run"
    env = [] if "--env" in argv else ["--env", "meta:halfcheetah-fwd-bwd"]
    rc = main(["run", "m3po", "--steps", "100", "--logdir", str(logdir), *env, *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert field in err and len(err.splitlines()) == 1
    assert not logdir.exists()
