"""``reweigh compare``: reuse of finished runs, Welch's t-test, outputs, a real two-recipe run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recipes.cli import main
from recipes.compare import Variant, mean_over_evaluations, welch


def _fake_run(path: Path, returns: list[float]) -> None:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "latest.pt").write_bytes(b"x")
    lines = [json.dumps({"step": 1000 * (i + 1), "eval_return": r}) for i, r in enumerate(returns)]
    lines.insert(1, json.dumps({"step": 1500, "train_return": 3.0}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_welch_matches_the_formula():
    a, b = [10.0, 12.0, 14.0], [9.0, 9.5, 11.0]
    ma, mb = sum(a) / 3, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 2
    t, p = welch(a, b)
    assert t == pytest.approx((ma - mb) / math.sqrt(va / 3 + vb / 3))
    assert 0 < p < 0.5  # one-tailed, a is larger
    t2, p2 = welch(b, a)
    assert t2 == pytest.approx(-t) and p2 == pytest.approx(1 - p)


def test_compare_reuses_finished_runs_and_reports(tmp_path, capsys):
    tempo = {0: [100, 300, 500], 1: [120, 320, 560], 2: [90, 280, 520]}
    base = {0: [100, 200, 300], 1: [110, 220, 330], 2: [95, 190, 310]}
    for seed in (0, 1, 2):
        _fake_run(tmp_path / f"tempo-s{seed}", tempo[seed])
        _fake_run(tmp_path / f"dreamerv2-s{seed}", base[seed])
    rc = main(
        ["compare", "--recipes", "tempo,dreamerv2", "--seeds", "0,1,2", "--steps", "3000", "--logdir", str(tmp_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "compare: starting" not in out  # nothing re-run
    table = json.loads((tmp_path / "compare.json").read_text())
    assert table["steps"] == [1000, 2000, 3000]
    ts = [welch([tempo[s][i] for s in (0, 1, 2)], [base[s][i] for s in (0, 1, 2)])[0] for i in range(3)]
    assert table["welch"]["mean_t"] == pytest.approx(sum(ts) / 3)
    assert table["variants"]["tempo"]["final_mean"] == pytest.approx(sum(x[-1] for x in tempo.values()) / 3)
    assert "tempo > dreamerv2" in out and "± " in out
    assert (tmp_path / "compare.png").stat().st_size > 0 and (tmp_path / "compare.md").exists()
    # the pre-registered test: Welch on each run's mean over the evaluations, and a bootstrap CI of the difference
    over = table["welch"]["over_evaluations"]
    a = [sum(tempo[s]) / 3 for s in (0, 1, 2)]
    b = [sum(base[s]) / 3 for s in (0, 1, 2)]
    assert (over["a"], over["b"]) == ("tempo", "dreamerv2")
    assert (over["t"], over["p"]) == pytest.approx(welch(a, b))
    assert over["diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert over["ci95"][0] < over["diff"] < over["ci95"][1] and over["ci95"][0] > 0  # tempo ahead on every seed
    assert "bootstrap 95% CI" in out


def test_mean_over_evaluations_bootstrap_interval_covers_the_difference_and_narrows_with_seeds():
    rng = np.random.default_rng(0)
    few = mean_over_evaluations(list(rng.normal(1.0, 1.0, 3)), list(rng.normal(0.0, 1.0, 3)))
    many = mean_over_evaluations(list(rng.normal(1.0, 1.0, 300)), list(rng.normal(0.0, 1.0, 300)))
    assert few["ci95"][0] < few["diff"] < few["ci95"][1]
    assert many["ci95"][0] < 1.0 < many["ci95"][1] and many["p"] < 1e-6
    assert many["ci95"][1] - many["ci95"][0] < 0.5 * (few["ci95"][1] - few["ci95"][0])
    a, b = list(rng.normal(0.0, 1.0, 5)), list(rng.normal(0.0, 1.0, 5))
    assert mean_over_evaluations(a, b)["ci95"] == mean_over_evaluations(a, b)["ci95"]  # seeded: reproducible


def test_variant_syntax():
    v = Variant.parse("tempo+convention=official+meta_every=2")
    assert (v.recipe, v.sets) == ("tempo", ["convention=official", "meta_every=2"])
    with pytest.raises(ValueError, match="RECIPE"):
        Variant.parse("tempo+oops")


def test_compare_rejects_unknown_recipe(tmp_path, capsys):
    assert main(["compare", "--recipes", "tempo,nope", "--logdir", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_compare_runs_two_recipes_end_to_end(tmp_path):
    tiny = [
        "deter=8",
        "stoch=2",
        "hidden=8",
        "mlp_layers=1",
        "mlp_units=8",
        "ac_layers=1",
        "ac_units=8",
        "batch_size=2",
        "seq_len=4",
        "horizon=2",
        "prefill=50",
        "train_every=50",
        "eval_every=100",
        "log_every=100",
        "checkpoint_every=100",
        "time_limit=50",
        "video=false",
        "eval_episodes=1",
    ]
    sets = [arg for item in tiny for arg in ("--set", item)]
    recipes = "tempo+weighter_layers=1+weighter_units=8,dreamerv2"
    argv = [
        "compare",
        "--recipes",
        recipes,
        "--seeds",
        "0",
        "--steps",
        "200",
        "--logdir",
        str(tmp_path),
        *sets,
        "--name",
        "tiny",
    ]
    assert main(argv) == 0
    table = json.loads((tmp_path / "tiny.json").read_text())
    assert (tmp_path / "tiny.png").exists() and not (tmp_path / "compare.png").exists()
    assert table["steps"] == [100, 200]
    assert set(table["variants"]) == {"tempo+weighter_layers=1+weighter_units=8", "dreamerv2"}
    assert "welch" in table
    assert (tmp_path / "tiny-tempo_weighter_layers=1_weighter_units=8-diagnostics.png").stat().st_size > 0
    assert not list(tmp_path.glob("tiny-dreamerv2*diagnostics.png"))
    config = json.loads((tmp_path / "tempo_weighter_layers=1_weighter_units=8-s0" / "config.json").read_text())
    assert config["weighter_layers"] == 1 and config["recipe"] == "tempo"


def test_diagnostics_average_over_runs_at_shared_log_steps(tmp_path):
    """TEMPO Fig. 9's curves: mean ± std over seeds, on the log steps every run has; unlogged keys absent."""
    from recipes.dreamer.analysis import diagnostics, plot_diagnostics

    for seed, (steps, scale) in enumerate([((1000, 2000, 3000), 1.0), ((1000, 2000), 3.0)]):
        run = tmp_path / f"tempo-s{seed}"
        run.mkdir()
        rows = [{"step": t, "model/weight_mean": scale * t / 1000, "model/upper_loss": scale} for t in steps]
        rows.insert(1, {"step": 1500, "eval_return": 1.0})
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    runs = [tmp_path / "tempo-s0", tmp_path / "tempo-s1"]
    curves = diagnostics(runs)
    assert set(curves) == {"model/weight_mean", "model/upper_loss"}
    assert curves["model/weight_mean"] == {"steps": [1000, 2000], "mean": [2.0, 4.0], "std": [1.0, 2.0]}
    assert plot_diagnostics(runs, tmp_path / "d.png", "t").stat().st_size > 0
    assert plot_diagnostics([tmp_path / "missing"], tmp_path / "none.png", "t") is None
