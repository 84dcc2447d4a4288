"""DreamerV3's robustness techniques as options of our Dreamer family (Hafner et al. 2023): symlog, two-hot heads.

Return normalisation and unimix are tested in test_actor_critic.py and test_rssm.py, the whole TEMPO step's
hypergradient with two-hot heads and symlog observations in test_tempo.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from recipes.cli import main
from worldmodels import RSSMWorldModel
from worldmodels.nets import TwoHotHead, symexp, symlog, twohot


def test_symlog_and_symexp():
    x = torch.tensor([-1000.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    torch.testing.assert_close(symlog(torch.tensor([math.e - 1, 1 - math.e])), torch.tensor([1.0, -1.0]))
    small = torch.tensor([1e-4])
    torch.testing.assert_close(symlog(small), small, rtol=1e-3, atol=0)  # identity near zero


def test_twohot_hand_computed_and_exact_reconstruction():
    bins = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    got = twohot(torch.tensor([0.25, 2.0, -5.0, 3.0, 0.0]), bins)
    want = torch.tensor(
        [
            [0.0, 0.75, 0.25, 0.0],
            [0.0, 0.0, 0.5, 0.5],
            [1.0, 0.0, 0.0, 0.0],  # below the range: all on the first bin
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(got, want)
    bins = torch.linspace(-20, 20, 255, dtype=torch.float64)
    x = 40 * torch.rand(1000, dtype=torch.float64) - 20
    code = twohot(x, bins)
    torch.testing.assert_close(code.sum(-1), torch.ones(1000, dtype=torch.float64))
    torch.testing.assert_close((code * bins).sum(-1), x)  # inside the range the encoding is exact
    assert int((code > 0).sum(-1).max()) <= 2


def test_twohot_head_starts_at_zero_and_learns_any_scale():
    torch.manual_seed(0)
    head = TwoHotHead(3, 1, 32, bins=255)
    feat = torch.eye(3)
    torch.testing.assert_close(head(feat), torch.zeros(3, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(head.nll(feat, torch.zeros(3)), torch.full((3,), math.log(255)))
    target = torch.tensor([0.01, -3.0, 1000.0])  # five orders of magnitude, one head, one learning rate
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    for _ in range(600):
        loss = head.nll(feat, target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = head(feat).squeeze(-1).detach()
    torch.testing.assert_close(pred, target, rtol=0.05, atol=0.01)


def test_world_model_with_twohot_reward_and_symlog_obs():
    torch.manual_seed(0)
    wm = RSSMWorldModel((4,), 2, deter=8, stoch=3, hidden=8, mlp_layers=1, mlp_units=8, twohot_bins=41, symlog_obs=True)
    obs = 100 * torch.randn(2, 5, 4)
    torch.testing.assert_close(wm.preprocess(obs), symlog(obs))
    batch = {"obs": obs, "action": torch.randn(2, 5, 2), "reward": 50 * torch.rand(2, 5)}
    batch["is_first"] = torch.zeros(2, 5, dtype=torch.bool)
    out = wm.loss(batch)
    assert out.loss.shape == (2, 5) and out.terms["reward"].shape == (2, 5)  # still per step
    torch.testing.assert_close(out.terms["reward"], torch.full((2, 5), math.log(41)))  # zero-initialised head
    out.loss.sum().backward()
    assert wm.reward.net[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="symlog_obs"):
        RSSMWorldModel((3, 32, 32), 2, depth=4, symlog_obs=True)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--set", "twohot_bins=1"], "twohot_bins"),
        (["--set", "symlog_obs=true", "--set", "pixels=true"], "symlog_obs"),
        (["--set", "unimix=1.5"], "unimix"),
        (["--set", "return_norm_decay=1.0"], "return_norm_decay"),
        (["--set", "repval_scale=-0.3"], "repval_scale"),
        (["--set", "actor_dist=beta"], "actor_dist"),
    ],
)
def test_bad_dreamerv3_options_are_one_line_errors(tmp_path, capsys, argv, field):
    logdir = tmp_path / "run"
    rc = main(["run", "dreamerv2", "--steps", "100", "--logdir", str(logdir), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and field in err and len(err.splitlines()) == 1
    assert not logdir.exists()


def test_dreamerv2_run_with_every_dreamerv3_option(tmp_path):
    from rundirs import records

    logdir = tmp_path / "v3"
    tiny = "deter=16 stoch=4 classes=4 hidden=16 mlp_layers=1 mlp_units=16 ac_layers=1 ac_units=16 batch_size=4"
    tiny += " seq_len=8 horizon=3 prefill=100 train_every=20 eval_every=200 log_every=100 checkpoint_every=100"
    tiny += " time_limit=100 twohot_bins=31 symlog_obs=true unimix=0.01 return_norm=true entropy=3e-4"
    tiny += " repval_scale=0.3 actor_dist=tanh_normal"
    argv = ["run", "dreamerv2", "--env", "dmc:cartpole_swingup", "--steps", "200", "--logdir", str(logdir)]
    for item in tiny.split():
        argv += ["--set", item]
    assert main([*argv, "--no-progress"]) == 0
    recs = records(logdir)
    assert any("agent/return_scale" in r for r in recs)
    assert any("agent/repval_loss" in r for r in recs)
    assert [r["step"] for r in recs if "eval_return" in r] == [200]
