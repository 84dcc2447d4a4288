"""benchmarks/peers/sac_side_by_side.py: the commands at equal settings and the side-by-side table."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))

import sac_side_by_side as sbs

from recipes.registry import resolve


def test_the_peer_gets_our_recipes_numbers():
    """Every flag sb3_sac.py takes equals the field of our sac run it mirrors (paper preset, history_len=0)."""
    cfg = resolve("gym:Hopper-v5", "paper", {"history_len": 0}, recipe="sac", steps=50_000)
    ours = {
        "batch": cfg.sac_batch,
        "lr": cfg.sac_lr,
        "units": cfg.sac_units,
        "layers": cfg.sac_layers,
        "tau": cfg.tau,
        "gamma": cfg.gamma,
        "learning-starts": cfg.prefill,
        "train-every": cfg.train_every,
        "updates": cfg.sac_updates,
        "init-alpha": cfg.sac_init_alpha,
        "eval-every": cfg.eval_every,
        "eval-episodes": cfg.eval_episodes,
    }
    assert sbs.SHARED == ours and cfg.target_entropy is None  # None: −|A|, SB3's "auto"
    cmd = sbs.commands("Hopper-v5", 1, 50_000, Path("/tmp/x"))
    assert "history_len=0" in cmd["ours"] and cmd["sb3"][cmd["sb3"].index("--batch") + 1] == "256"


def _run(path: Path, returns: dict[int, float]) -> None:
    path.mkdir(parents=True)
    lines = [json.dumps({"step": s, "eval_return": r}) for s, r in returns.items()]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_the_table_compares_at_every_shared_evaluation(tmp_path):
    for seed, (a, b) in enumerate([(100, 110), (120, 100), (110, 120)]):
        _run(tmp_path / f"ours-s{seed}", {5000: a, 10000: 10 * a})
        _run(tmp_path / f"sb3-s{seed}", {5000: b, 10000: 5 * b})
    result = sbs.table([0, 1, 2], 10_000, tmp_path)
    first, second = result["rows"]
    assert first["step"] == 5000 and first["within_20pct"] and first["p_two_sided"] > 0.1
    assert second["step"] == 10_000 and not second["within_20pct"]  # 1100 against 550
    m = result["mean_over_evaluations"]
    # per seed, the mean over the two evaluations: ours 550, 660, 605; SB3's 330, 300, 360
    assert m["a_mean"] == pytest.approx(605) and m["b_mean"] == pytest.approx(330) and m["diff"] == pytest.approx(275)
    assert "bootstrap 95% CI" in sbs.markdown(result)
