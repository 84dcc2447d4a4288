"""benchmarks/peers/sac_side_by_side.py and mbpo_side_by_side.py: the commands at equal settings and the side-by-side
table."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))

import mbpo_side_by_side as mbpo
import sac_side_by_side as sbs

from recipes.registry import resolve
from recipes.run.config import parse_sets


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


def _peer_settings(cmd: list[str]) -> tuple[dict[str, str], dict[str, object], list[int]]:
    """mbrl_mbpo.py's command line: its flags, its Hydra overrides (parsed) and its rollout schedule."""
    flags: dict[str, str] = {}
    hydra: dict[str, object] = {}
    i = cmd.index("--threads")
    while i < len(cmd):
        if cmd[i] == "--rollout-schedule":
            schedule = [int(v) for v in cmd[i + 1 : i + 5]]
            i += 5
        elif cmd[i] == "--set":
            key, _, raw = cmd[i + 1].removeprefix("++").partition("=")
            hydra[key] = raw if key.endswith("_target_") else json.loads(raw)
            i += 2
        else:
            flags[cmd[i].removeprefix("--")] = cmd[i + 1]
            i += 2
    return flags, hydra, schedule


def _truncated_linear(min_x: float, max_x: float, min_y: float, max_y: float, x: float) -> float:
    """mbrl-lib 0.2.0's ``mbrl.util.math.truncated_linear`` (its rollout schedule), transcribed."""
    if max_x - min_x < 1e-10:
        return max_y
    if x <= min_x:
        return min_y
    return min((x - min_x) / (max_x - min_x), 1.0) * (max_y - min_y) + min_y


@pytest.mark.parametrize(
    "reduced",
    [{}, {"sac_updates": 5, "rollouts_per_step": 100, "model_max_epochs": 20, "eval_every": 2000, "init_steps": 2000}],
)
def test_the_mbrl_peer_gets_our_recipes_numbers(reduced):
    """Every setting mbrl_mbpo.py gets equals the field of our resolved mbpo run it mirrors (paper preset with the
    tool's --set), the rollout schedule included: mbrl-lib's k in each epoch is ours at that epoch's first step."""
    steps = 160_000
    sets = mbpo.our_sets("Hopper-v4", steps, **reduced)
    cmd = mbpo.commands("Hopper-v4", 1, steps, Path("/tmp/x"), sets)
    ours_sets = [cmd["ours"][i + 1] for i, a in enumerate(cmd["ours"]) if a == "--set"]
    assert ours_sets == sets and "threads=1" in sets and "--preset" in cmd["ours"]
    cfg = resolve("gym:Hopper-v4", "paper", parse_sets(ours_sets), recipe="mbpo", steps=steps)
    for name, value in reduced.items():
        assert getattr(cfg, mbpo.REDUCED[name]) == value
    flags, hydra, schedule = _peer_settings(cmd["mbrl"])
    assert flags == {
        "threads": "1",
        "init-steps": str(cfg.prefill),
        "sac-updates": str(cfg.sac_updates),
        "sac-hidden": str(cfg.sac_units),
        "rollouts-per-step": str(cfg.rollouts_per_step),
        "freq-train-model": str(cfg.model_every),
        **({} if cfg.model_max_epochs is None else {"model-max-epochs": str(cfg.model_max_epochs)}),
        "patience": str(cfg.model_patience),
        "ensemble-size": str(cfg.members),
        "elites": str(cfg.elites),
        "hidden-size": str(cfg.model_units),
        "model-layers": str(cfg.model_layers),
        "real-data-ratio": str(cfg.real_ratio_start),
        "eval-every": str(cfg.eval_every),
        "eval-episodes": str(cfg.eval_episodes),
    }
    assert hydra == {
        "overrides.sac_lr": cfg.sac_lr,
        "overrides.sac_batch_size": cfg.sac_batch,
        "overrides.sac_gamma": cfg.gamma,
        "overrides.sac_tau": cfg.tau,
        "overrides.sac_alpha": cfg.sac_init_alpha,
        "overrides.sac_target_entropy": cfg.target_entropy,  # None (null): −|A| on both sides
        "overrides.sac_target_update_interval": cfg.sac_target_update_every,
        "overrides.sac_updates_every_steps": cfg.train_every,
        "overrides.model_lr": cfg.model_lr,
        "overrides.model_wd": cfg.model_wd,
        "overrides.model_batch_size": cfg.model_batch,
        "overrides.validation_ratio": cfg.holdout_ratio,
        "overrides.improvement_threshold": cfg.model_improvement,
        "overrides.num_epochs_to_retain_sac_buffer": cfg.model_retain // 1000,
        "overrides.epoch_length": 1000,
        # what our recipe always does: α learned, uniform random prefill, learned log-variance bounds, sampled
        # rollout actions, a SiLU ensemble
        "overrides.sac_automatic_entropy_tuning": True,
        "algorithm.random_initial_explore": True,
        "dynamics_model.learn_logvar_bounds": True,
        "algorithm.sac_samples_action": True,
        "dynamics_model.activation_fn_cfg._target_": "torch.nn.SiLU",
    }
    assert cfg.sac_layers == 2 and cfg.model_activation == "silu" and cfg.history_len == 0  # pranz24: 2 layers
    assert cfg.real_ratio_end == cfg.real_ratio_start and cfg.model_retain == 1000 and cfg.sac_init_alpha == 1.0
    assert schedule == list(mbpo.HOPPER_SCHEDULE) and cfg.rollout_length_end == 15
    for epoch in range((steps - cfg.prefill) // 1000):  # mbrl-lib's loop epochs after the initial exploration
        k = int(_truncated_linear(*schedule, epoch + 1))
        start = cfg.prefill + 1000 * epoch
        assert cfg.rollout_length_at(start) == k, epoch
        assert k <= cfg.rollout_length_at(start + 999) <= int(_truncated_linear(*schedule, epoch + 2))
    assert cfg.rollout_length_at(cfg.prefill + 1000 * 19) == 1 and cfg.rollout_length_at(cfg.prefill + 149_000) == 15


def test_the_mbrl_peer_refuses_what_it_cannot_mirror():
    cfg = resolve("gym:Hopper-v4", "paper", {"real_ratio_end": 0.5, "rollout_length_from": 5500}, recipe="mbpo")
    with pytest.raises(ValueError, match="real_ratio_end"):
        mbpo.check_mirrorable(cfg)
    with pytest.raises(ValueError, match="whole mbrl-lib epochs"):
        mbpo.rollout_schedule(cfg.model_copy(update={"rollout_length_end": 15, "rollout_length_until": 9000}))


def test_the_mbpo_tool_prints_both_commands_and_tables_finished_runs(tmp_path, capsys):
    assert mbpo.main(["--seeds", "0,1", "--steps", "20000", "--logdir", str(tmp_path), "--dry-run"]) is None
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if line.startswith("#")] == [
        "# ours-s0",
        "# mbrl-s0",
        "# ours-s1",
        "# mbrl-s1",
    ]
    assert "run mbpo --env gym:Hopper-v4 --preset paper" in printed and "mbrl_mbpo.sh --env Hopper-v4" in printed
    for seed, (a, b) in enumerate([(100, 110), (120, 100), (110, 120)]):
        _run(tmp_path / f"ours-s{seed}", {5000: a, 20000: a})
        _run(tmp_path / f"mbrl-s{seed}", {5000: b, 20000: b})
    result = mbpo.main(["--seeds", "0,1,2", "--steps", "20000", "--logdir", str(tmp_path), "--no-run"])
    assert result is not None and result["peer"] == "mbrl" and [r["step"] for r in result["rows"]] == [5000, 20000]
    assert "| env steps | ours | mbrl-lib |" in capsys.readouterr().out
    assert (tmp_path / "side_by_side.json").exists()
