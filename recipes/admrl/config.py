"""Config of the AdMRL family (``admrl``, ``mb-unif``, ``mb-gauss``): Lin et al. 2020, Algorithm 1 and App. C.

Where the paper's appendix (which our copy lacks) and the official code are silent, the number is ours and says so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recipes.run.config import Presets, RunConfig


class AdmrlConfig(RunConfig):
    """Every setting of an AdMRL-family run.  ``task_search`` picks the recipe: ``adversarial`` (AdMRL), ``uniform``
    (``mb-unif``) or ``gauss`` (``mb-gauss``: ψ ~ N(0, 1) per coordinate, clipped to the box).

    ``steps`` counts real transitions; the run loop's cadences inherited from ``RunConfig`` (``prefill``,
    ``train_every``, ``train_steps``, ``eval_every``, ``log_every``, ``checkpoint_every``, ``video``) are unused:
    this family checkpoints and logs once per task and evaluates at the end (``recipes.admrl.run``)."""

    env: str = "admrl:halfcheetah-vel"
    action_repeat: int = Field(1, ge=1)
    task_search: Literal["adversarial", "uniform", "gauss"] = "adversarial"
    initial_psi: list[float] | None = Field(
        None, description="ψ of the first task (each in [−1, 1]; None: drawn uniformly, Algorithm 1 line 8)"
    )

    # Algorithm 1: tasks run until D holds ``steps`` real transitions (``tasks`` = ⌈steps / (n_slbo·n_collect)⌉;
    # the paper: 10 or 20 tasks, 0.4M or 0.8M samples)
    n_slbo: int = Field(5, ge=1, description="SLBO iterations per task (collect, fit, optimise in the model)")
    n_collect: int = Field(2_000, ge=1, description="real env steps collected per SLBO iteration")
    collect_noise: float = Field(0.1, ge=0.0, description="Gaussian action noise while collecting (ours)")
    episode_len: int = Field(200, ge=1, description="real episode length in agent steps (ours, CPU-sized)")

    # dynamics model: GaussianEnsemble over Δs (mbrl-lib sizes, as the M3PO family)
    members: int = Field(5, ge=1)
    elites: int = Field(3, ge=1)
    model_layers: int = Field(3, ge=1)
    model_units: int = Field(128, ge=1)
    model_activation: str = Field("silu", description="the members' activation (mbrl-lib: SiLU)")
    model_lr: float = Field(1e-3, gt=0.0)
    model_wd: float = Field(1e-5, ge=0.0)
    model_batch: int = Field(256, ge=1)
    model_epochs: int = Field(20, ge=1, description="most epochs per fit (early stopping on the hold-out MSE)")
    model_patience: int = Field(3, ge=1, description="epochs without a model_improvement hold-out gain before stopping")
    model_improvement: float = Field(
        0.01, gt=0.0, description="the relative hold-out MSE gain that counts as an improvement (mbrl-lib 1%)"
    )
    holdout_ratio: float = Field(0.2, gt=0.0, lt=1.0)

    # VirtualTraining: PPO or TRPO inside the model
    policy_opt: Literal["ppo", "trpo"] = Field(
        "ppo", description="policy optimiser inside the model: PPO-clip, or TRPO with max-KL 0.01 as SLBO/AdMRL"
    )
    trpo_max_kl: float = Field(0.01, gt=0.0, description="TRPO's trust region δ (SLBO: 0.01)")
    trpo_cg_iters: int = Field(10, ge=1, description="CG steps of TRPO's Fisher solve (OpenAI baselines: 10)")
    trpo_cg_damping: float = Field(0.1, ge=0.0, description="damping of TRPO's Fisher solve (OpenAI baselines: 0.1)")
    trpo_backtracks: int = Field(10, ge=1, description="most steps of TRPO's backtracking line search")
    trpo_backtrack_ratio: float = Field(0.8, gt=0.0, lt=1.0, description="the line search's step shrink factor")
    trpo_value_lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of TRPO's value regression")
    trpo_value_epochs: int = Field(5, ge=1, description="passes of TRPO's value regression per batch")
    trpo_value_minibatch: int = Field(256, ge=1, description="samples per step of TRPO's value regression")
    virtual_iters: int = Field(20, ge=1, description="policy updates per SLBO iteration (n_inner)")
    zeroshot_iters: int = Field(40, ge=1, description="policy updates of the zero-shot adaptation (n_zeroshot)")
    virtual_envs: int = Field(64, ge=1, description="parallel model episodes per policy update")
    virtual_horizon: int = Field(50, ge=1, description="model steps per policy update (branch length, ours)")
    ppo_lr: float = Field(3e-4, gt=0.0)
    ppo_epochs: int = Field(10, ge=1)
    ppo_minibatch: int = Field(256, ge=1)
    ppo_clip: float = Field(0.2, gt=0.0, lt=1.0, description="PPO's clip ε")
    ppo_value_coef: float = Field(0.5, ge=0.0, description="c_v, the value loss's weight in PPO's loss")
    ppo_entropy_coef: float = Field(0.0, ge=0.0, description="c_H, the entropy bonus's weight in PPO's loss")
    ppo_max_grad_norm: float = Field(0.5, gt=0.0, description="PPO's global gradient-norm clip")
    policy_layers: int = Field(2, ge=1, description="tanh hidden layers of the policy mean and the value network")
    policy_units: int = Field(64, ge=1)
    policy_init_log_std: float = Field(-0.5, description="the policy's initial log σ")
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    lam: float = Field(0.95, ge=0.0, le=1.0)

    # the task gradient (§4.2) and the ascent on ψ (Algorithm 1, line 12)
    hessian: Literal["trajectory", "per_step"] = Field(
        "per_step", description="REINFORCE Hessian: eq. 7 over trajectories, or the official code's per-step GAE form"
    )
    ift_solver: Literal["cg", "normal_cg"] = Field("normal_cg", description="AdMRL's code: CG on the normal equations")
    ift_iters: int = Field(200, ge=1, description="AdMRL's code: 200")
    ift_damping: float = Field(0.1, ge=0.0, description="AdMRL's code: 0.1")
    task_lr: float = Field(0.5, gt=0.0, description="α of the projected ascent on ψ ∈ [−1, 1]^k (ours)")
    grad_episodes: int = Field(8, ge=1, description="real episodes per policy for eq. 3–4 (ours)")
    grad_horizon: int = Field(100, ge=1, description="steps of the rollouts the task gradient uses (ours)")
    grad_model_envs: int = Field(256, ge=1, description="model episodes for the Hessian and eq. 6 (ours)")

    # evaluation (§5.2): gaps over the test grid, at the end of the run
    eval_adapt: int = Field(1, ge=0, description="SLBO iterations of test-time adaptation after zero-shot (A_1…A_n)")
    eval_ood: bool = Field(True, description="also evaluate the out-of-distribution grid (AdMRL §5.3)")
    reference_iters: int = Field(15, ge=1, description="SLBO iterations of the reference policy A*(ψ) (ours)")
    reference_dir: str | None = Field(
        None, description="cache of A*(ψ) shared by runs on one env (None: the run directory's reference/)"
    )

    @property
    def tasks(self) -> int:
        """Training tasks: ⌈steps / (n_slbo · n_collect)⌉."""
        return -(-self.steps // (self.n_slbo * self.n_collect))

    @model_validator(mode="after")
    def _check_admrl(self) -> AdmrlConfig:
        from recipes.envs.admrl import check_psi

        if not self.env.startswith("admrl:"):
            raise ValueError(f"env: the AdMRL recipes need an admrl: environment, got {self.env!r}")
        family = self.env.split(":", 1)[1]
        if self.initial_psi is not None:
            try:
                check_psi(family, self.initial_psi)
            except ValueError as e:
                raise ValueError(f"initial_psi: {e}") from e
        if self.elites > self.members:
            raise ValueError(f"elites: must be <= members ({self.members}), got {self.elites}")
        return self


class UniformTaskConfig(AdmrlConfig):
    """``mb-unif``: Algorithm 1's loop with ψ ~ U[−1, 1]^k for every task."""

    task_search: Literal["adversarial", "uniform", "gauss"] = "uniform"


class GaussTaskConfig(AdmrlConfig):
    """``mb-gauss``: Algorithm 1's loop with ψ ~ N(0, I) clipped to [−1, 1]^k for every task."""

    task_search: Literal["adversarial", "uniform", "gauss"] = "gauss"


_CPU: dict[str, Any] = {}  # the field defaults are CPU-sized (halfcheetah-vel in minutes per task)
#: ``paper``: Algorithm 1 at the paper's scale — 40k real samples per task (0.4M for 10 tasks), larger model and
#: policy, longer virtual training (its App. C is not in our copy: SLBO's defaults where AdMRL's code keeps them).
_PAPER: dict[str, Any] = {
    "n_slbo": 20,
    "n_collect": 2_000,
    "episode_len": 500,
    "members": 7,
    "elites": 5,
    "model_layers": 4,
    "model_units": 200,
    "virtual_iters": 40,
    "zeroshot_iters": 200,
    "virtual_envs": 128,
    "virtual_horizon": 100,
    "ppo_minibatch": 1024,
    "policy_units": 64,
    "grad_episodes": 16,
    "grad_horizon": 500,
    "grad_model_envs": 1024,
    "eval_adapt": 3,
    "reference_iters": 50,
}
PRESETS: Presets = {"cpu": {"admrl": _CPU}, "paper": {"admrl": _PAPER}}
