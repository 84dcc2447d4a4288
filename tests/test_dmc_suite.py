"""benchmarks/dmc_suite.py: the development-suite table (scores at a step, ratios to DreamerV3, suite mean)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("dmc_suite", ROOT / "benchmarks" / "dmc_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_run(path: Path, curve: dict[int, float]) -> None:
    path.mkdir(parents=True)
    lines = [json.dumps({"step": s, "eval_return": r}) for s, r in curve.items()]
    (path / "metrics.jsonl").write_text("\n".join([json.dumps({"step": 10, "train_return": 1.0}), *lines]) + "\n")


def test_table_scores_ratios_and_suite_mean(suite, tmp_path, capsys):
    ref = {"a": {100_000: 500.0}, "b": {100_000: 200.0}}
    _fake_run(tmp_path / "dreamerv2" / "a-s0", {50_000: 100.0, 100_000: 400.0})
    _fake_run(tmp_path / "dreamerv2" / "a-s1", {50_000: 90.0, 99_000: 200.0})  # last eval within 5%: counts
    _fake_run(tmp_path / "dreamerv2" / "b-s0", {50_000: 150.0, 100_000: 100.0})
    _fake_run(tmp_path / "dreamerv2" / "b-s1", {50_000: 80.0})  # too short: missing, not zero
    result = suite.table(tmp_path / "dreamerv2", ["a", "b"], [0, 1], 100_000, ref)
    a, b = result["tasks"]["a"], result["tasks"]["b"]
    assert a["per_seed"] == [400.0, 200.0] and a["mean"] == 300.0 and a["ratio"] == pytest.approx(0.6)
    assert b["per_seed"] == [100.0, None] and b["mean"] == 100.0 and b["ratio"] == pytest.approx(0.5)
    assert result["suite_mean"] == 200.0 and result["suite_mean_dreamerv3"] == 350.0
    assert result["suite_ratio"] == pytest.approx(200 / 350)
    text = suite.markdown(result, "dreamerv2", 0.6, 0.8)
    assert "| a | 300 ± 141 | 400, 200 | 500.0 | 0.60 | yes |" in text
    assert "| b | 100 ± — | 100, — | 200.0 | 0.50 | no |" in text


def test_no_run_writes_the_table_files(suite, tmp_path, capsys):
    _fake_run(tmp_path / "dreamerv2" / "cartpole_swingup-s0", {100_000: 600.0})
    result = suite.main(["--tasks", "cartpole_swingup", "--seeds", "0", "--logdir", str(tmp_path), "--no-run"])
    assert result["tasks"]["cartpole_swingup"]["ratio"] == pytest.approx(600.0 / 512.6)
    for name in ("suite.json", "suite.md", "suite.png"):
        assert (tmp_path / "dreamerv2" / name).stat().st_size > 0


def test_reference_csv_matches_the_embedded_numbers(suite, tmp_path):
    csv = tmp_path / "ref.csv"
    csv.write_text("# comment\ntask,50k,100k\ncartpole_swingup,321.6,512.6\n")
    assert suite.read_reference(csv) == {"cartpole_swingup": {50_000: 321.6, 100_000: 512.6}}
    shared = ROOT.parent / "shared" / "reference" / "dreamerv3_dmc_proprio_suite.csv"
    if shared.exists():  # the workspace copy the numbers were taken from
        assert suite.read_reference(shared) == suite.DREAMERV3
