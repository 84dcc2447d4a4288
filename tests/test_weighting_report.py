"""benchmarks/weighting_report.py: arms from globs, the spans' means over runs, one-line errors."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import weighting_report as wr


def _run(path: Path, std: float, upper: float, strategy: str = "same_state") -> Path:
    """A run directory whose weighter records have a constant weights' std and upper loss at 1k … 10k."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"recipe": "tempo", "strategy": strategy}))
    records = [
        {"step": 1000 * (i + 1), "model/weight_std": std, "model/upper_loss": upper * (i + 1)} for i in range(10)
    ]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_spans_are_the_median_of_an_arms_runs(tmp_path, capsys):
    _run(tmp_path / "tempo-s0", 0.1, 1.0)
    _run(tmp_path / "tempo-s1", 0.3, 3.0)
    _run(tmp_path / "tempo-s2", 0.9, 90.0)  # a diverged run does not carry the arm
    _run(tmp_path / "uniform-s0", 0.0, 2.0, strategy="uniform")
    name, runs = wr.parse_arm(f"tempo={tmp_path}/tempo-s*")
    assert name == "tempo" and [r.name for r in runs] == ["tempo-s0", "tempo-s1", "tempo-s2"]
    rows = wr.arm_spans(runs, spans=2)
    assert [(r["start"], r["end"]) for r in rows] == [(1000, 5000), (6000, 10000)]
    assert rows[0]["weight_std"] == pytest.approx(0.3)
    assert rows[0]["upper_loss"] == pytest.approx(3.0 * 3)  # the mean of 1…5 is 3, the middle run's scale 3
    assert "weighter_step_vs_lr" not in rows[0]
    out = tmp_path / "report.json"
    args = ["--arm", f"tempo={tmp_path}/tempo-s*", "--arm", f"uniform={tmp_path}/uniform-s0", "--spans", "2"]
    assert wr.main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| tempo | 1k–5k | 0.3 |")
    assert json.loads(out.read_text())["gain"] == {}
    assert wr.gain_runs({"uniform": [tmp_path / "uniform-s0"]}) == {}  # no weighter to ask
    assert wr.main([*args, "--gain", "2"]) == 2  # the tempo runs have no checkpoint
    assert "tempo-s0 has no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arm", "message"), [("tempo", "expected NAME=DIR"), ("tempo=/nonexistent/*", "no run directory matches")]
)
def test_bad_arms_are_one_line_errors(arm, message, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert wr.main(["--arm", arm, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
