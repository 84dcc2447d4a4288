"""benchmarks/time_to_score.py: the first evaluation at the target, its wall time, the seeds' medians."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import time_to_score as tts

REFERENCE = {"cartpole_swingup": {100_000: 500.0}}


def _run(
    path: Path,
    evals: list[tuple[int, float, float]],
    *,
    logged_wall: bool,
    env: str = "dmc:cartpole_swingup",
    resumed_at: float | None = None,
):
    """A run directory whose evaluations are (step, return, seconds since its start); ``resumed_at``: a record of
    the resumed process at that many seconds."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"recipe": "tempo", "env": env}))
    lines = [{"step": 1000, "train_return": 1.0, "time": 1000.0}]
    for step, ret, t in evals:
        record = {"step": step, "eval_return": ret, "time": 1000.0 + t}
        if logged_wall:
            record["wall_s"] = t
        lines.append(record)
    if resumed_at is not None:
        lines.insert(-1, {"step": 11_000, "train_return": 1.0, "time": 1000.0 + resumed_at})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_first_evaluation_at_the_target_and_medians_over_seeds(tmp_path):
    _run(
        tmp_path / "tempo-s0", [(10_000, 100.0, 60.0), (20_000, 520.0, 120.0), (30_000, 300.0, 180.0)], logged_wall=True
    )
    _run(tmp_path / "tempo-s1", [(10_000, 500.0, 90.0), (20_000, 600.0, 200.0)], logged_wall=True)
    _run(tmp_path / "tempo-s2", [(10_000, 10.0, 50.0)], logged_wall=True)
    _run(tmp_path / "other" / "walker-s0", [(10_000, 900.0, 5.0)], logged_wall=True, env="dmc:walker_walk")
    (row,) = tts.table([tmp_path], REFERENCE, 100_000, max_gap=600.0)
    assert (row["setting"], row["task"], row["seeds"], row["reached"]) == ("tempo", "cartpole_swingup", 3, 2)
    by_run = {Path(r["run"]).name: r for r in row["runs"]}
    assert by_run["tempo-s0"]["steps_to_target"] == 20_000 and by_run["tempo-s0"]["wall_to_target_s"] == 120.0
    assert by_run["tempo-s1"]["steps_to_target"] == 10_000  # reaching the target exactly counts
    assert by_run["tempo-s2"]["steps_to_target"] is None
    assert row["median_steps"] == 15_000 and row["median_wall_s"] == 105.0
    assert row["final_mean"] == pytest.approx((300 + 600 + 10) / 3) and not row["estimated"]


def test_older_runs_sum_the_gaps_between_records_and_skip_the_stops(tmp_path):
    # 60 s of running, a 2-hour stop between sessions, then 60 s more
    evals = [(10_000, 100.0, 60.0), (20_000, 700.0, 60.0 + 7200.0 + 60.0)]
    _run(tmp_path / "tempo-s0", evals, logged_wall=False, resumed_at=60.0 + 7200.0)
    (row,) = tts.table([tmp_path], REFERENCE, 100_000, max_gap=600.0)
    (run,) = row["runs"]
    assert run["wall_to_target_s"] == pytest.approx(120.0) and row["estimated"]
    assert run["cpu"] == "unrecorded" and "≈" in tts.markdown([row], 100_000)


def test_a_missing_path_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tts.main([str(tmp_path / "nothing")])
    assert exc.value.code == 2 and "no such path" in capsys.readouterr().err
