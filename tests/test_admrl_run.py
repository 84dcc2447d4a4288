"""``reweigh run admrl|mb-unif|mb-gauss``: the run directory, resume, the shared A*(ψ) cache, compare on the
worst-case gap, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rundirs import kill_mid_run, records

from recipes.cli import main
from recipes.compare import Variant, summarize

TINY = [
    "n_slbo=1",
    "n_collect=120",
    "episode_len=40",
    "members=3",
    "elites=2",
    "model_layers=1",
    "model_units=32",
    "model_epochs=2",
    "virtual_iters=2",
    "zeroshot_iters=2",
    "virtual_envs=8",
    "virtual_horizon=10",
    "ppo_epochs=2",
    "ppo_minibatch=40",
    "policy_units=16",
    "grad_episodes=2",
    "grad_horizon=12",
    "grad_model_envs=16",
    "ift_iters=10",
    "eval_adapt=1",
    "reference_iters=1",
]


def _args(logdir: Path, recipe: str, steps: int = 240, seed: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
    out = ["run", recipe, "--env", "admrl:halfcheetah-vel", "--steps", str(steps), "--seed", str(seed)]
    out += ["--logdir", str(logdir), "--no-progress"]
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def test_run_directory_resume_and_shared_reference(tmp_path):
    ref = tmp_path / "ref"
    logdir = tmp_path / "admrl-s0"
    assert main(_args(logdir, "admrl", extra=(f"reference_dir={ref}",))) == 0
    for name in ("config.json", "metrics.jsonl", "tasks.json", "gaps.json", "gaps.png", "psi.png"):
        assert (logdir / name).exists(), name
    recs = records(logdir)
    tasks = [r for r in recs if "task" in r]
    assert [r["task"] for r in tasks] == [0, 1] and "task_grad/0" in tasks[1]
    final = [r for r in recs if "worst_gap" in r]
    assert len(final) == 1 and final[0]["step"] >= 240 and "eval_return" in final[0]
    gaps = json.loads((logdir / "gaps.json").read_text())
    assert len(gaps["rows"]) == 7 and len(gaps["rows"][0]["adapted"]) == 2  # A₀, A₁ on the 7-point grid
    assert gaps["worst_gap"][-1] == max(r["gaps"][-1] for r in gaps["rows"])
    assert [r["psi"] for r in gaps["ood"]["rows"]] == [[-1.5], [-1.25], [1.25], [1.5]]  # AdMRL §5.3's OOD tasks
    assert "worst_gap_ood" in final[0]
    cached = sorted(ref.glob("*.json"))
    assert len(cached) == 7 + 4
    # resuming a finished run trains and evaluates nothing more
    assert main(_args(logdir, "admrl", extra=(f"reference_dir={ref}",))) == 0
    assert len(records(logdir)) == len(recs)
    # a longer budget continues with a third task and evaluates again
    assert main(_args(logdir, "admrl", steps=360, extra=(f"reference_dir={ref}",))) == 0
    later = records(logdir)
    assert [r["task"] for r in later if "task" in r] == [0, 1, 2] and len([r for r in later if "worst_gap" in r]) == 2
    # another recipe with another seed reuses the cached references (same env and reference budget)
    stamps = [p.stat().st_mtime_ns for p in cached]
    other = tmp_path / "mb-unif-s1"
    assert main(_args(other, "mb-unif", seed=1, extra=(f"reference_dir={ref}",))) == 0
    assert [p.stat().st_mtime_ns for p in sorted(ref.glob("*.json"))] == stamps
    assert not any("task_grad/0" in r for r in records(other))
    (tmp_path / "mb-unif-s0").symlink_to(other)  # summarize pairs seeds by name; one run of each suffices here
    table = summarize([Variant.parse("admrl"), Variant.parse("mb-unif")], [0], tmp_path, 240)
    assert table["metric"] == "worst_gap" and table["welch"]["alternative"] == "admrl < mb-unif"


@pytest.mark.parametrize(
    ("env", "extra", "field"),
    [
        ("admrl:hopper3d", (), "admrl:hopper3d"),
        ("admrl:hopper2d", ("initial_psi=[0.0, 2.0]",), "initial_psi"),
        ("admrl:hopper2d", ("initial_psi=[0.0]",), "initial_psi"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, env, extra, field):
    logdir = tmp_path / "run"
    args = _args(logdir, "admrl", extra=extra)
    args[args.index("--env") + 1] = env
    assert main(args) == 2
    err = capsys.readouterr().err
    assert field in err and err.count("\n") == 1
    assert not logdir.exists()


def test_compare_refuses_mixed_metrics(tmp_path):
    with pytest.raises(ValueError, match="different metrics"):
        summarize([Variant.parse("admrl"), Variant.parse("sac")], [0], tmp_path, 10)


def test_sigkill_mid_run_resumes(tmp_path):
    logdir = tmp_path / "killed"
    args = _args(logdir, "admrl", steps=1200, extra=(f"reference_dir={tmp_path / 'ref'}",))
    _, ckpt_steps = kill_mid_run(logdir, args, after=240)
    assert ckpt_steps >= 120
    assert main(args) == 0
    history = json.loads((logdir / "tasks.json").read_text())
    assert [r["task"] for r in history] == list(range(10))
    assert [r for r in records(logdir) if "worst_gap" in r]


@pytest.mark.parametrize("k", [1, 2, 3, 18])
def test_gap_plots_for_every_task_dimension(tmp_path, k):
    from recipes.admrl.evaluate import plot_gaps

    rng = np.random.default_rng(0)
    sizes = {1: (7,), 2: (6, 6), 3: (4, 4, 3)}
    if k in sizes:
        axes = [np.linspace(-1, 1, n) for n in sizes[k]]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, k)
    else:
        grid = rng.uniform(-1, 1, (16, k))
    table = {"grid": grid.tolist(), "rows": [{"gaps": rng.uniform(0, 5, 2).tolist()} for _ in grid]}
    if k == 2:
        ring = np.array([[x, 1.5] for x in np.linspace(-1.5, 1.5, 7)])
        table["ood"] = {"grid": ring.tolist(), "rows": [{"gaps": rng.uniform(0, 5, 2).tolist()} for _ in ring]}
    path = plot_gaps(table, tmp_path / "gaps.png", f"k = {k}")
    assert path.exists() and path.stat().st_size > 1000
