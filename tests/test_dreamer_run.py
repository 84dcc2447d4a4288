"""``reweigh run dreamerv2``: run directory, resume, kill-resume, bad input, one smoke run per env family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rundirs import TINY_AGENT, eval_steps, kill_mid_run, records

from recipes.cli import main

TINY = [
    *TINY_AGENT,
    "depth=4",
    "prefill=100",
    "train_every=20",
    "eval_every=200",
    "log_every=100",
    "checkpoint_every=100",
    "time_limit=100",
]


def _args(logdir: Path, steps: int, env: str = "dmc:cartpole_swingup", extra: tuple[str, ...] = ()) -> list[str]:
    out = [
        "run",
        "dreamerv2",
        "--env",
        env,
        "--steps",
        str(steps),
        "--seed",
        "0",
        "--logdir",
        str(logdir),
        "--no-progress",
    ]
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def test_run_writes_the_run_directory_and_resumes(tmp_path):
    logdir = tmp_path / "run"
    assert main(_args(logdir, 400)) == 0
    config = json.loads((logdir / "config.json").read_text())
    assert config["recipe"] == "dreamerv2" and config["deter"] == 16 and config["steps"] == 400
    recs = records(logdir)
    evals = [r for r in recs if "eval_return" in r]
    assert [r["step"] for r in evals] == [200, 400]
    assert any("model/lower_loss" in r for r in recs) and any("train_return" in r for r in recs)
    assert (logdir / "checkpoints" / "latest.pt").exists()
    assert (logdir / "curve.png").stat().st_size > 0 and (logdir / "eval_episode.gif").stat().st_size > 0
    assert list((logdir / "replay").glob("*.npz"))
    assert list(logdir.glob("events.out.tfevents.*"))

    # every evaluation has the run's wall time and its episodes' standard error; the machine is recorded
    walls = [r["wall_s"] for r in evals]
    assert 0 < walls[0] < walls[1] and all(r["eval_return_se"] >= 0 for r in evals)
    first = json.loads((logdir / "machine.jsonl").read_text())
    assert first["cpu"] and first["torch_threads"] >= 1

    # same command with more steps: resumes from the checkpoint and continues to the new total; the wall time
    # continues from the checkpoint's, not from 0
    assert main(_args(logdir, 600)) == 0
    evals = [r for r in records(logdir) if "eval_return" in r]
    assert [r["step"] for r in evals] == [200, 400, 600]
    assert evals[2]["wall_s"] > walls[1]
    assert len((logdir / "machine.jsonl").read_text().splitlines()) == 2


def test_config_change_on_resume_is_refused_unless_forced(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert main(_args(logdir, 200)) == 0
    assert main(_args(logdir, 200, extra=("model_lr=0.001",))) == 2
    assert "model_lr" in capsys.readouterr().err
    assert main([*_args(logdir, 200, extra=("model_lr=0.001",)), "--force"]) == 0
    # run control, not the run's definition: another thread count resumes without --force
    assert main(_args(logdir, 400, extra=("model_lr=0.001", "threads=2"))) == 0
    assert [r["step"] for r in records(logdir) if "eval_return" in r][-1] == 400


def test_run_from_before_a_new_field_resumes_with_its_default(tmp_path, capsys):
    """A run whose config.json predates a field (here ``compile``) resumes while the field keeps its default;
    asking for another value than the default is still a config change."""
    logdir = tmp_path / "run"
    assert main(_args(logdir, 200)) == 0
    path = logdir / "config.json"
    config = json.loads(path.read_text())
    del config["compile"]
    path.write_text(json.dumps(config))
    assert main(_args(logdir, 400)) == 0
    assert [r["step"] for r in records(logdir) if "eval_return" in r] == [200, 400]
    path.write_text(json.dumps(config))
    assert main(_args(logdir, 400, extra=("compile=true",))) == 2
    assert "compile" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--env", "nope:thing"], "env"),
        (["--set", "warp_drive=1"], "warp_drive"),
        (["--set", "batch_size=many"], "batch_size"),
        (["--preset", "gpu"], "preset"),
        (["--set", "model_precision=fp16"], "model_precision"),
        (["--set", "ac_precision=bf8"], "ac_precision"),
        (["--env", "dmc:cartpole_nosuchtask"], "cartpole_nosuchtask"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, field):
    logdir = tmp_path / "run"
    rc = main(["run", "dreamerv2", "--steps", "100", "--logdir", str(logdir), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert field in err and len(err.splitlines()) == 1
    assert not logdir.exists()


def test_unknown_recipe(tmp_path, capsys):
    assert main(["run", "alphazero", "--logdir", str(tmp_path / "x")]) == 2
    assert "recipe" in capsys.readouterr().err


def test_sigkill_then_resume_loses_at_most_one_checkpoint_interval(tmp_path):
    logdir = tmp_path / "run"
    killed_at, saved = kill_mid_run(logdir, _args(logdir, 100_000))
    assert killed_at - saved <= 100 + 20  # one checkpoint interval (+ a train call)
    assert main(_args(logdir, saved + 200)) == 0
    assert eval_steps(logdir)[-1] == saved + 200


@pytest.mark.parametrize(
    ("env", "extra"),
    [
        ("dmc:cartpole_swingup", ("pixels=true", "image_size=32")),
        ("atari:pong", ("image_size=32", "classes=4", "discount_head=true", "time_limit=400")),
    ],
)
def test_smoke_pixels_and_atari(tmp_path, env, extra):
    logdir = tmp_path / "run"
    assert main(_args(logdir, 400, env, extra)) == 0
    assert [r["step"] for r in records(logdir) if "eval_return" in r][-1] == 400
