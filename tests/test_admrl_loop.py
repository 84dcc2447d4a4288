"""AdMRL's Algorithm 1 (recipes.admrl.admrl) end to end at toy size, the model-side pieces, and bad configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recipes.admrl.admrl import AdmrlTrainer
from recipes.admrl.config import AdmrlConfig
from recipes.admrl.virtual import real_rollouts
from recipes.agents.ppo import PPO
from recipes.envs import make_env
from recipes.envs.admrl import ADMRL_FAMILIES, TERMINATIONS

TINY = {
    "n_slbo": 1,
    "n_collect": 120,
    "episode_len": 60,
    "members": 3,
    "elites": 2,
    "model_layers": 1,
    "model_units": 32,
    "model_epochs": 2,
    "virtual_iters": 2,
    "zeroshot_iters": 2,
    "virtual_envs": 8,
    "virtual_horizon": 10,
    "ppo_epochs": 2,
    "ppo_minibatch": 40,
    "policy_units": 16,
    "grad_episodes": 2,
    "grad_horizon": 12,
    "grad_model_envs": 16,
    "ift_iters": 10,
}


@pytest.mark.parametrize(("hessian", "policy_opt"), [("per_step", "ppo"), ("trajectory", "ppo"), ("per_step", "trpo")])
def test_two_adversarial_tasks_ascend_the_task_gradient(hessian, policy_opt):
    torch.manual_seed(0)
    cfg = AdmrlConfig(
        env="admrl:halfcheetah-vel", seed=0, initial_psi=[0.2], hessian=hessian, policy_opt=policy_opt, **TINY
    )
    env = make_env(cfg.env, seed=0)
    trainer = AdmrlTrainer(cfg, env)
    first = trainer.task_iteration()
    assert "task_grad" not in first and "zeroshot_virtual_return" not in first  # no θ̂ for the first task
    assert first["psi"] == [0.2] and len(trainer.data) >= cfg.n_collect
    second = trainer.task_iteration()
    grad = np.asarray(second["task_grad"])
    assert grad.shape == (1,) and np.isfinite(grad).all()
    expect = np.clip(np.asarray(second["psi"]) + cfg.task_lr * grad, -1, 1)
    np.testing.assert_allclose(second["next_psi"], expect)
    assert np.isfinite(second["zeroshot_virtual_return"]) and np.isfinite(second["gap_estimate"])
    assert len(trainer.data) >= 2 * cfg.n_collect
    env.close()


@pytest.mark.parametrize("search", ["uniform", "gauss"])
def test_baselines_draw_tasks_in_the_box(search):
    cfg = AdmrlConfig(env="admrl:hopper2d", seed=1, task_search=search, **{**TINY, "n_collect": 60})
    env = make_env(cfg.env, seed=1)
    trainer = AdmrlTrainer(cfg, env)
    for _ in range(2):
        rec = trainer.task_iteration()
        assert "task_grad" not in rec
        assert np.all(np.abs(rec["next_psi"]) <= 1) and len(rec["next_psi"]) == 2
    env.close()


def test_real_rollouts_pad_after_the_end():
    env = make_env("admrl:hopper2d", seed=0)
    ppo = PPO(env.obs_shape[0], env.action_dim)
    batch, trans, returns = real_rollouts(ppo, env, 3, 400, noise=1.0)  # noisy hopper falls within 400 steps
    assert batch["obs"].shape[:2] == (400, 3) and len(returns) == 3
    ends = batch["done"].argmax(0)
    for b in range(3):
        e = int(ends[b])
        assert (batch["done"][e:, b] == 1).all() and (batch["reward"][e + 1 :, b] == 0).all()
    assert len(trans) == int((ends + 1).sum())
    env.close()


def test_every_family_has_a_termination():
    assert set(TERMINATIONS) == set(ADMRL_FAMILIES)
    s = torch.zeros(4, 11)
    s[:, 0] = torch.tensor([1.25, 0.5, 1.25, 1.25])  # Hopper: z, then the torso angle
    s[:, 1] = torch.tensor([0.0, 0.0, 0.5, 0.1])
    assert TERMINATIONS["hopper2d"](s).tolist() == [False, True, True, False]


def test_bad_configs_name_the_field():
    with pytest.raises(ValidationError, match="initial_psi"):
        AdmrlConfig(env="admrl:hopper2d", initial_psi=[0.0, 2.0])
    with pytest.raises(ValidationError, match="admrl: environment"):
        AdmrlConfig(env="meta:halfcheetah-fwd-bwd")
    with pytest.raises(ValidationError, match="elites"):
        AdmrlConfig(members=2, elites=3)
