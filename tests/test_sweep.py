"""``reweigh sweep`` on a local 2-CPU Ray: a sweep of tiny runs finishes, a killed trial resumes from its directory,
a failing trial is reported with its log path while the others finish; sweep files are validated; ``reweigh
compare --backend ray`` hands its missing runs to the same runner."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from rundirs import eval_steps, kill_mid_run, records

from recipes import launch, sweep
from recipes.cli import main

TINY = {
    "deter": 8,
    "stoch": 2,
    "hidden": 8,
    "mlp_layers": 1,
    "mlp_units": 8,
    "ac_layers": 1,
    "ac_units": 8,
    "batch_size": 2,
    "seq_len": 4,
    "horizon": 2,
    "prefill": 50,
    "train_every": 50,
    "eval_every": 100,
    "log_every": 100,
    "checkpoint_every": 100,
    "time_limit": 50,
    "video": False,
    "eval_episodes": 1,
}


def _sweep_file(tmp_path: Path, **spec) -> Path:
    data = {
        "logdir": str(tmp_path / "sw"),
        "recipes": ["dreamerv2"],
        "envs": ["dmc:cartpole_swingup"],
        "seeds": [0],
        "steps": 200,
        "set": TINY,
        **spec,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"seed": [0]}, "seed: unknown key"),
        ({"resources": {"num_cpus": 1, "gpus": 1}}, "resources.gpus: unknown key"),
        ({"steps": "many"}, "steps:"),
        ({"resources": {"num_gpus": -0.5}}, "resources.num_gpus:"),
        ({"grid": {"model_lr": []}}, "grid"),
        ({"set": {**TINY, "threads": 2}}, "resources.threads"),
        ({"set": {**TINY, "warp_drive": 1}}, "warp_drive"),
        ({"recipes": ["alphazero"]}, "alphazero"),
        ({"envs": ["dmc:cartpole_swingupp"]}, "unknown environment 'dmc:cartpole_swingupp'; did you mean"),
        ({"envs": ["meta:halfcheetah-fwd-bwd"]}, "not an environment this recipe runs on"),
    ],
)
def test_bad_sweep_files_are_one_line_exit_2_naming_file_and_key(tmp_path, capsys, spec, expected):
    path = _sweep_file(tmp_path, **spec)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sw").exists()  # refused before anything ran


def test_unreadable_sweep_files(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipes: [dreamerv2\n")
    assert main(["sweep", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_trials_cross_recipes_grid_envs_seeds(tmp_path, capsys):
    path = _sweep_file(
        tmp_path,
        recipes=["dreamerv2", "tempo+meta_every=2"],
        envs=["dmc:cartpole_swingup", "dmc:walker_walk"],
        seeds=[0, 1],
        grid={"model_lr": [0.001, 0.0003]},
        resources={"num_cpus": 2, "num_gpus": 0.25},
    )
    trials = sweep.trials(sweep.load(path), str(path))
    assert len(trials) == 2 * 2 * 2 * 2
    first = trials[0]
    assert first.label == "dreamerv2+model_lr=0.001 on dmc:cartpole_swingup seed 0"
    assert first.run_dir == tmp_path / "sw" / "dmc_cartpole_swingup" / "dreamerv2_model_lr=0.001-s0"
    assert (first.num_cpus, first.num_gpus, first.threads) == (2, 0.25, 2)
    assert "device=cuda" in first.sets  # a trial that reserves a GPU runs on it
    tempo = [t for t in trials if t.recipe == "tempo"]
    assert {t.run_dir.name for t in tempo if t.env == "dmc:walker_walk"} == {
        f"tempo_meta_every=2_model_lr={lr}-s{s}" for lr in ("0.001", "0.0003") for s in (0, 1)
    }
    argv = tempo[0].argv()
    assert argv[:2] == ["run", "tempo"] and "meta_every=2" in argv and "model_lr=0.001" in argv
    assert argv[argv.index("--set") + 1] == "threads=2"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "16 trial(s), 2 CPU and 0.25 GPU each" in capsys.readouterr().out


def test_sweep_on_local_ray_resumes_killed_trial_and_reports_failed_one(tmp_path, capsys):
    good_env = "dmc:cartpole_swingup"
    # the second variant fails at run time (its init run does not exist), after the sweep's checks passed
    bad = "dreamerv2+init=/nonexistent-run"
    spec = {"envs": [good_env], "recipes": ["dreamerv2", bad], "seeds": [0, 1], "resources": {"num_cpus": 1}}
    path = _sweep_file(tmp_path, **spec)
    trials = sweep.trials(sweep.load(path))
    killed = next(t for t in trials if t.recipe == "dreamerv2" and "init" not in " ".join(t.sets) and t.seed == 1)
    bad_dirs = [t.run_dir for t in trials if "init=/nonexistent-run" in t.sets]

    # seed 1 was started by hand with the sweep's own command line and SIGKILLed after a checkpoint
    killed_at, saved = kill_mid_run(killed.run_dir, dataclasses.replace(killed, steps=100_000).argv(), after=100)
    logged_before = len(records(killed.run_dir))
    steps = (killed_at // 100 + 2) * 100  # beyond the kill, so the trial is unfinished
    path = _sweep_file(tmp_path, steps=steps, **spec)

    assert main(["sweep", str(path), "--num-cpus", "2"]) == 1
    captured = capsys.readouterr()
    root = tmp_path / "sw"
    for seed in (0, 1):
        run = root / "dmc_cartpole_swingup" / f"dreamerv2-s{seed}"
        assert eval_steps(run)[-1] == steps
        assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["counters"]["env_steps"] == steps
    # the killed trial continued from its checkpoint: nothing after the kill was logged at or before it
    resumed = records(killed.run_dir)[logged_before:]
    assert resumed and min(r["step"] for r in resumed) > saved >= 100
    # the failed trials: reported with their log paths (the sweep's exit code 1), the reason in the log
    bad_logs = [d.with_name(d.name + ".log") for d in bad_dirs]
    assert len(bad_logs) == 2 and "2 trial(s) failed (the others finished)" in captured.err
    for log in bad_logs:
        assert str(log) in captured.err and "nonexistent-run" in log.read_text()
    assert "sweep: FAILED" in captured.out and "sweep: 2 of 4 trial(s) finished" in captured.out
    # summarised per env by reweigh compare: the good env only
    table = json.loads((root / "dmc_cartpole_swingup" / "sweep.json").read_text())
    assert set(table["variants"]) == {"dreamerv2"} and len(table["variants"]["dreamerv2"]["per_seed_final"]) == 2
    assert table["steps"][-1] == steps

    # the same sweep without the bad variant: every trial is finished, nothing is run and Ray is not even started
    path = _sweep_file(tmp_path, steps=steps, **{**spec, "recipes": ["dreamerv2"]})
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Ray" not in out and "sweep: 2 of 2 trial(s) finished" in out


def test_compare_on_ray_hands_only_missing_runs_to_the_shared_runner(tmp_path, monkeypatch, capsys):
    """``reweigh compare --backend ray``: finished runs are reused, the missing one goes to the Ray path of
    :func:`recipes.launch.run_trials` with compare's command line (faked here; the real Ray path is tested above)."""
    handed: list[tuple[launch.Trial, dict]] = []

    def fake_ray(todo, **kwargs):
        out = []
        for i, trial in todo:
            handed.append((trial, kwargs))
            _finished_run(trial.run_dir, [1.0, 2.0])
            out.append((i, launch.TrialResult(trial, 0, 1.0, "here")))
        return out

    monkeypatch.setattr(launch, "_run_ray", fake_ray)
    for seed in (0, 1):
        _finished_run(tmp_path / f"dreamerv2-s{seed}", [1.0, 3.0])
    argv = ["compare", "--recipes", "dreamerv2", "--seeds", "0,1,2", "--steps", "2000", "--logdir", str(tmp_path)]
    assert main([*argv, "--backend", "ray", "--address", "auto", "--threads", "2", "--set", "deter=8"]) == 0
    assert len(handed) == 1
    trial, kwargs = handed[0]
    assert trial.run_dir == tmp_path / "dreamerv2-s2" and trial.num_cpus == 2 and trial.seed == 2
    assert trial.argv()[:2] == ["run", "dreamerv2"] and "deter=8" in trial.argv() and "threads=2" in trial.argv()
    assert kwargs["address"] == "auto"
    assert json.loads((tmp_path / "compare.json").read_text())["variants"]["dreamerv2"]["per_seed_final"] == [3, 3, 2]


def _finished_run(path: Path, returns: list[float]) -> None:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "latest.pt").write_bytes(b"x")
    lines = [json.dumps({"step": 1000 * (i + 1), "eval_return": r}) for i, r in enumerate(returns)]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_sweep_file_in_the_docs_is_valid(tmp_path):
    """docs/sweeps.md's YAML example is a sweep file whose every trial resolves (its count is the one the page
    states)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert blocks
    path = tmp_path / "sweep.yaml"
    path.write_text(blocks[0])
    todo = sweep.trials(sweep.load(path), str(path))
    assert len(todo) == 36 and "= 36 trials" in text
    assert {t.env for t in todo} == {"dmc:cartpole_swingup", "dmc:walker_walk"}
