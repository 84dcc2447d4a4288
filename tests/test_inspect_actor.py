"""``reweigh inspect-actor`` on a tiny run: saturation statistics and both evaluation modes, numbers in range."""

from __future__ import annotations

import json

import torch
from rundirs import TINY_AGENT

from recipes.cli import main as reweigh
from recipes.dreamer.actor_report import inspect_actor


def test_inspect_actor_reports_saturation_and_both_evaluations(tmp_path, capsys):
    logdir = tmp_path / "run"
    sets = [*TINY_AGENT, "prefill=100", "train_every=20", "eval_every=200", "time_limit=60", "actor_dist=normal"]
    argv = ["run", "dreamerv2", "--env", "dmc:cartpole_swingup", "--steps", "200", "--logdir", str(logdir)]
    for item in sets:
        argv += ["--set", item]
    assert reweigh([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["inspect-actor", str(logdir), "--episodes", "2", "--sequences", "2", "--out", str(tmp_path / "a.json")]
    assert reweigh(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pre-squash means over replayed states") and len(lines) == 5
    out = json.loads((tmp_path / "a.json").read_text())
    assert out == inspect_actor(logdir, episodes=2, sequences=2)  # the same draws: the same numbers
    lo, mid, hi = out["pre_squash_mean_q05_q50_q95"]
    assert lo <= mid <= hi and 0.0 <= out["share_abs_mean_over_5"] <= 1.0
    for mode in ("mode", "sample"):
        # cartpole swing-up pays at most 1 per env step: 60 agent steps × action repeat 2
        assert len(out[mode]["returns"]) == 2 and all(0.0 <= r <= 120.0 for r in out[mode]["returns"])
        assert 0.0 <= out[mode]["share_at_bounds"] <= 1.0 and -1.0 <= out[mode]["action_mean"][0] <= 1.0
    assert out["reward_r2"] <= 1.0 and len(out["obs_std"]) == len(out["obs_abs_max"]) == 5  # cartpole: 5 dims
    assert all(m >= s >= 0 for s, m in zip(out["obs_std"], out["obs_abs_max"], strict=True))
    # push the actor into saturation in the checkpoint (mean pre-activation 20 everywhere): reported as such
    ckpt_path = logdir / "checkpoints" / "latest.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    layers = [
        k.removesuffix(".weight") for k in ckpt["agent"] if k.startswith("ac.actor.net.") and k.endswith(".weight")
    ]
    last = max(layers, key=lambda name: int(name.rsplit(".", 1)[-1]))  # the output layer
    ckpt["agent"][f"{last}.weight"].zero_()
    ckpt["agent"][f"{last}.bias"][:1] = 20.0  # the mean half of the (mean, std) output
    # and make the reward head a constant: no constant beats the mean, so R² <= 0
    head = [k.removesuffix(".weight") for k in ckpt["agent"] if k.startswith("wm.reward.") and k.endswith(".weight")]
    head_last = max(head, key=lambda name: int(name.rsplit(".", 1)[-1]))
    ckpt["agent"][f"{head_last}.weight"].zero_()
    torch.save(ckpt, ckpt_path)
    out = inspect_actor(logdir, episodes=1, sequences=2)
    assert out["reward_r2"] <= 0.0
    assert out["share_abs_mean_over_5"] == 1.0 and out["pre_squash_mean_q05_q50_q95"] == [20.0, 20.0, 20.0]
    assert out["mode"]["share_at_bounds"] == 1.0 and out["mode"]["action_mean"] == [1.0]
