"""AdMRL's Algorithm 1 (Lin et al. 2020): alternate model-based adaptation to a task ψ with gradient ascent on ψ.

Per task n (ψ_n):

1. θ ← a fresh policy; if there is data, *zero-shot adaptation*: fit the model ϕ on D and optimise θ̂ for ψ_n
   inside it (VirtualTraining, line 4).
2. ``n_slbo`` SLBO iterations from θ̂: collect real data with π_θ (plus noise) into D, fit ϕ, optimise θ in the
   model (lines 5–7); the result is θ*.
3. The next task (lines 8–12): ``adversarial`` ascends the suboptimality gap L(ψ) = η*(θ*, ψ) − η*(θ̂, ψ) by the
   implicit task gradient of ``recipes.admrl.taskgrad``, ψ ← Π(ψ + α ∂L/∂ψ); ``uniform`` and ``gauss`` draw it.
   The first task has no θ̂ (nothing to adapt in an empty model): its successor is drawn uniformly (line 8).

``AdmrlTrainer`` holds everything one run needs and does one task per ``AdmrlTrainer.task_iteration``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from recipes.admrl.config import AdmrlConfig
from recipes.admrl.taskgrad import (
    ReinforceSurrogate,
    per_step_surrogate,
    suboptimality_gap_gradient,
    trajectory_surrogate,
)
from recipes.admrl.virtual import (
    Agent,
    ModelEnv,
    Transitions,
    fit_model,
    model_rollouts,
    real_rollouts,
    virtual_training,
)
from recipes.agents.ppo import PPO
from recipes.agents.trpo import TRPO
from recipes.envs.admrl import AdmrlEnv
from recipes.run import loop
from recipes.run.config import MODEL_FIELDS, config_kwargs
from worldmodels import GaussianEnsemble

#: ``PPO``'s and ``TRPO``'s arguments as ``AdmrlConfig`` names them.
PPO_FIELDS = {
    "layers": "policy_layers",
    "units": "policy_units",
    "init_log_std": "policy_init_log_std",
    **{k: f"ppo_{k}" for k in ("lr", "epochs", "minibatch", "clip", "value_coef", "entropy_coef", "max_grad_norm")},
}
TRPO_FIELDS = {
    "layers": "policy_layers",
    "units": "policy_units",
    "init_log_std": "policy_init_log_std",
    **{k: f"trpo_{k}" for k in ("max_kl", "cg_iters", "cg_damping", "backtracks", "backtrack_ratio")},
    **{k: f"trpo_{k}" for k in ("value_lr", "value_epochs", "value_minibatch")},
}


class AdmrlTrainer:
    """One AdMRL-family run (see the module docstring).

    Args:
        cfg: the resolved config.
        env: the real environment (an ``admrl:`` family).

    Attributes:
        psi: the current task ψ [k] (float64 numpy).  data: the real transitions D.  history: one record per task.
    """

    def __init__(self, cfg: AdmrlConfig, env: AdmrlEnv) -> None:
        self.cfg, self.env = cfg, env
        self.device = torch.device(cfg.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        obs_dim, act_dim = env.obs_shape[0], env.action_dim
        self.model = GaussianEnsemble(
            obs_dim, act_dim, **config_kwargs(cfg, GaussianEnsemble, MODEL_FIELDS, context_dim=0, learn_reward=False)
        ).to(self.device)
        self.model_opt = torch.optim.Adam(self.model.parameters(), lr=cfg.model_lr, weight_decay=cfg.model_wd)
        self.model_env = ModelEnv(self.model, env, self.generator)
        self.data: Transitions | None = None
        self.psi = (
            np.asarray(cfg.initial_psi, np.float64)
            if cfg.initial_psi is not None
            else self.rng.uniform(-1.0, 1.0, env.task_dim)
        )
        self.task = 0
        self.history: list[dict[str, Any]] = []

    # -- pieces -----------------------------------------------------------------------------------------------

    @property
    def env_steps(self) -> int:
        """Real transitions in D (the run's budget counts these)."""
        return 0 if self.data is None else len(self.data)

    def new_ppo(self) -> Agent:
        """A fresh policy optimiser (``policy_opt``: PPO or TRPO)."""
        cfg = self.cfg
        agent, fields = (TRPO, TRPO_FIELDS) if cfg.policy_opt == "trpo" else (PPO, PPO_FIELDS)
        return agent(
            self.env.obs_shape[0], self.env.action_dim, **config_kwargs(cfg, agent, fields, device=self.device)
        )

    def psi_tensor(self, psi: np.ndarray | None = None) -> Tensor:
        """ψ (default the current task) as a float32 tensor on the run's device."""
        return torch.as_tensor(self.psi if psi is None else psi, dtype=torch.float32, device=self.device)

    def add_data(self, trans: Transitions) -> None:
        """Append real transitions to D (moved to the run's device) and merge them into the model's normaliser."""
        trans = trans.to(self.device)
        self.model.update_normalizer({"obs": trans.obs, "action": trans.action, "next_obs": trans.next_obs})
        self.data = trans if self.data is None else self.data.cat(trans)

    def fit(self) -> dict[str, float]:
        assert self.data is not None
        cfg = self.cfg
        return fit_model(
            self.model,
            self.model_opt,
            self.data,
            epochs=cfg.model_epochs,
            batch=cfg.model_batch,
            holdout_ratio=cfg.holdout_ratio,
            patience=cfg.model_patience,
            improvement=cfg.model_improvement,
            generator=self.generator,
            max_nonfinite=cfg.max_nonfinite,
        )

    def virtual(self, ppo: Agent, psi: Tensor, iterations: int) -> dict[str, float]:
        assert self.data is not None
        cfg = self.cfg
        return virtual_training(
            ppo,
            self.model_env,
            self.data.obs,
            psi,
            iterations=iterations,
            envs=cfg.virtual_envs,
            horizon=cfg.virtual_horizon,
            generator=self.generator,
        )

    def collect(self, ppo: Agent, steps: int) -> list[float]:
        """Real episodes with π_θ plus noise until ``steps`` env steps are in D; their returns."""
        cfg, got, returns = self.cfg, 0, []
        while got < steps:
            _, trans, rets = real_rollouts(ppo, self.env, 1, cfg.episode_len, noise=cfg.collect_noise, rng=self.rng)
            self.add_data(trans)
            got += len(trans)
            returns += rets
        return returns

    # -- the task gradient ---------------------------------------------------------------------------------------

    def _surrogate(self, ppo: Agent, batch: dict[str, Tensor]) -> ReinforceSurrogate:
        cfg, env, policy = self.cfg, self.env, ppo.policy
        theta = {k: v.detach().requires_grad_(True) for k, v in policy.named_parameters()}
        obs, act, nxt, done = batch["obs"], batch["action"], batch["next_obs"], batch["done"]

        def log_prob(th):
            return policy.functional_log_prob(th, obs, act)

        def rewards(psi):
            return env.reward(nxt.to(psi.dtype), act.to(psi.dtype), psi)

        if cfg.hessian == "trajectory":
            return trajectory_surrogate(log_prob, theta, rewards, done, cfg.gamma)
        with torch.no_grad():
            values = ppo.values(torch.cat([obs, nxt[-1:]]))
        return per_step_surrogate(log_prob, theta, rewards, values, done, cfg.gamma, cfg.lam)

    def task_gradient(self, ppo_hat: Agent, ppo_star: Agent) -> tuple[np.ndarray, dict[str, Any]]:
        """∂L/∂ψ at the current ψ from rollouts of π_θ̂ in the model and in the real env and of π_θ* in the real
        env (Algorithm 1, lines 9–11)."""
        assert self.data is not None
        cfg = self.cfg
        psi = self.psi_tensor()
        idx = torch.randint(len(self.data), (cfg.grad_model_envs,), generator=self.generator)
        model_batch = model_rollouts(ppo_hat, self.model_env, self.data.obs[idx], psi, cfg.grad_horizon)
        real_hat, _, ret_hat = real_rollouts(ppo_hat, self.env, cfg.grad_episodes, cfg.grad_horizon, rng=self.rng)
        real_star, _, ret_star = real_rollouts(ppo_star, self.env, cfg.grad_episodes, cfg.grad_horizon, rng=self.rng)
        real_hat = {k: v.to(self.device) for k, v in real_hat.items()}
        real_star = {k: v.to(self.device) for k, v in real_star.items()}
        theta_hat = {k: v.detach().requires_grad_(True) for k, v in ppo_hat.policy.named_parameters()}
        grad, info = suboptimality_gap_gradient(
            self._surrogate(ppo_hat, model_batch),
            self._surrogate(ppo_hat, real_hat),
            self._surrogate(ppo_star, real_star),
            theta_hat,
            psi,
            solver=cfg.ift_solver,
            iters=cfg.ift_iters,
            damping=cfg.ift_damping,
            return_info=True,
        )
        gap = float(np.mean(ret_star) - np.mean(ret_hat))
        return grad.double().cpu().numpy(), {"gap_estimate": gap, "ift_residual": float(info["ift"].residual)}

    # -- checkpoints -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume between tasks: the model and its optimiser, D, ψ, the task counter, the records and
        both random streams."""
        return {
            "model": self.model.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "data": None if self.data is None else self.data.to("cpu").astuple(),
            "psi": self.psi.copy(),
            "task": self.task,
            "history": list(self.history),
            "generator": self.generator.get_state(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.data = None if state["data"] is None else Transitions(*state["data"]).to(self.device)
        self.psi = np.asarray(state["psi"], np.float64).copy()
        self.task = int(state["task"])
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]

    def evaluate_policy(self, ppo: Agent, episodes: int) -> float:
        """Mean real return of the deterministic policy (its mean action) over ``episodes`` episodes of
        ``episode_len`` steps, under the env's current task."""

        def act(step: dict[str, Any], state: Any) -> tuple[np.ndarray, Any]:
            obs = torch.as_tensor(step["obs"], device=self.device)
            return np.clip(ppo.act(obs, deterministic=True).cpu().numpy(), -1.0, 1.0), None

        returns, _ = loop.run_episodes(self.env, act, episodes, max_steps=self.cfg.episode_len)
        return float(np.mean(returns))

    # -- Algorithm 1 --------------------------------------------------------------------------------------------

    def task_iteration(self) -> dict[str, Any]:
        """One task of Algorithm 1 (lines 3–12): returns its record (ψ, returns, the gradient, the next ψ)."""
        cfg = self.cfg
        psi = self.psi_tensor()
        self.env.set_task(self.psi)
        record: dict[str, Any] = {"task": self.task, "psi": self.psi.tolist()}
        ppo = self.new_ppo()
        ppo_hat = None
        if self.data is not None:  # zero-shot adaptation (line 4)
            record.update(self.fit())
            record["zeroshot_virtual_return"] = self.virtual(ppo, psi, cfg.zeroshot_iters)["virtual_return"]
            ppo_hat = self.new_ppo()
            ppo_hat.policy.load_state_dict(ppo.policy.state_dict())
            ppo_hat.value.load_state_dict(ppo.value.state_dict())
        for _ in range(cfg.n_slbo):  # SLBO (lines 5–7)
            returns = self.collect(ppo, cfg.n_collect)
            record["collect_return"] = float(np.mean(returns))
            record.update(self.fit())
            record["virtual_return"] = self.virtual(ppo, psi, cfg.virtual_iters)["virtual_return"]
        # the next task (lines 8–12)
        if cfg.task_search == "adversarial" and ppo_hat is not None:
            grad, info = self.task_gradient(ppo_hat, ppo)
            record.update(info, task_grad=grad.tolist())
            nxt = np.clip(self.psi + cfg.task_lr * grad, -1.0, 1.0)
        elif cfg.task_search == "gauss":
            nxt = np.clip(self.rng.standard_normal(self.env.task_dim), -1.0, 1.0)
        else:
            nxt = self.rng.uniform(-1.0, 1.0, self.env.task_dim)
        record["next_psi"] = nxt.tolist()
        self.psi = nxt
        self.task += 1
        self.history.append(record)
        return record
