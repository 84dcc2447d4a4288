"""AdMRL's VirtualTraining (Lin et al. 2020, §4.3): fit a dynamics model on real data, then optimise a policy for
task ψ inside it; plus the batched rollouts the task gradient differentiates (``recipes.admrl.taskgrad``).

The model is a ``worldmodels.GaussianEnsemble`` over Δs only (``learn_reward=False``): rewards come from the
family's known r_ψ(s′, a) (``recipes.envs.admrl.AdmrlEnv.reward``, AdMRL's assumption that the reward
parameterisation is known), and terminations from the v5 env's health checks applied to predicted states
(``recipes.envs.admrl.TERMINATIONS``).  Model rollouts start from real states drawn from the data (SLBO and MBPO do
the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bilevel.guard import NonFiniteError, check_finite
from recipes.agents.ppo import PPO
from recipes.agents.trpo import TRPO
from recipes.envs.admrl import AdmrlEnv
from recipes.envs.admrl import termination as admrl_termination
from worldmodels import GaussianEnsemble, bootstrap_counts, fit_to_holdout

#: A policy optimiser the VirtualTraining loop drives (``act``, ``values``, ``update``, ``policy``).
Agent = PPO | TRPO


def _never(s: Tensor) -> Tensor:
    return torch.zeros(s.shape[:-1], dtype=torch.bool, device=s.device)


@dataclass
class Transitions:
    """Real transitions as [N, ...] float32 tensors: ``obs``, ``action``, ``next_obs``, ``done`` (terminal)."""

    obs: Tensor
    action: Tensor
    next_obs: Tensor
    done: Tensor

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def cat(self, other: Transitions) -> Transitions:
        return Transitions(*(torch.cat([a, b]) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def to(self, device: str | torch.device) -> Transitions:
        return Transitions(*(x.to(device) for x in self.astuple()))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.obs, self.action, self.next_obs, self.done

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        return {"obs": self.obs[idx], "action": self.action[idx], "next_obs": self.next_obs[idx]}


def fit_model(
    model: GaussianEnsemble,
    opt: torch.optim.Optimizer,
    data: Transitions,
    *,
    epochs: int,
    batch: int,
    holdout_ratio: float,
    patience: int,
    improvement: float,
    generator: torch.Generator,
    max_nonfinite: int | None = None,
) -> dict[str, float]:
    """Fit the ensemble on all of ``data``: a fresh hold-out split, per-member bootstrap counts, at most ``epochs``
    epochs of minibatches, stopping when no member's hold-out MSE improves by ``improvement`` (relative) for
    ``patience`` epochs; the best epoch's parameters are kept and the elites chosen by hold-out MSE (mbrl-lib's
    ModelTrainer, as the M3PO recipe).
    The caller feeds every new row to ``model.update_normalizer`` once, before the fit.

    A minibatch whose loss is NaN or infinite is skipped before the optimiser step (``bilevel.guard``) and
    counted in ``model/nonfinite_skips``.

    Raises:
        RuntimeError: ``max_nonfinite`` minibatches in a row were skipped (names the last non-finite value).
    """
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    n_hold = max(1, int(holdout_ratio * n))
    hold, train = data.batch(perm[:n_hold]), perm[n_hold:]
    counts = bootstrap_counts(model.members, len(train), generator=generator).to(data.obs.device)
    state = {"last": 0.0, "skipped": 0, "in_row": 0}

    def minibatch(pos: Tensor) -> None:
        out = model.loss({**data.batch(train[pos]), "bootstrap": counts[:, pos]})
        loss = out.loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        try:  # reads the loss, as the fit did anyway: no extra synchronisation
            values = check_finite({"model/nll": loss.detach()}, zero=(opt,))
        except NonFiniteError as err:
            state["skipped"] += 1
            state["in_row"] += 1
            if max_nonfinite is not None and state["in_row"] >= max_nonfinite:
                raise RuntimeError(
                    f"the model fit stopped: {state['in_row']} minibatches in a row had a non-finite {err.name} "
                    f"({err.value}) and were skipped; look for NaN or inf in the collected data"
                ) from None
            return
        state["in_row"] = 0
        opt.step()
        state["last"] = values["model/nll"]

    done_epochs, final = fit_to_holdout(
        model,
        hold,
        len(train),
        minibatch,
        batch=batch,
        max_epochs=epochs,
        patience=patience,
        generator=generator,
        improvement=improvement,
    )
    return {
        "model/holdout_mse": float(final[model.elite_idx].mean()),
        "model/epochs": done_epochs,
        "model/nll": state["last"],
        "model/nonfinite_skips": state["skipped"],
    }


class ModelEnv:
    """B parallel episodes inside the learned model for one task ψ: s′ ~ a random elite, r = r_ψ(s′, a), done by
    the family's health check.

    Args:
        model: the fitted ensemble (Δs only).  env: the real family env (its reward and name).
        generator: RNG for elites and model noise.
    """

    def __init__(self, model: GaussianEnsemble, env: AdmrlEnv, generator: torch.Generator) -> None:
        self.model, self.env, self.generator = model, env, generator
        self.terminal = admrl_termination(env.admrl_family) or _never

    @torch.no_grad()
    def step(self, obs: Tensor, action: Tensor, psi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(next_obs [B, O], reward [B], done [B] float) for obs [B, O] and actions [B, A] (clipped to [−1, 1])."""
        a = action.clamp(-1.0, 1.0)
        next_obs, _ = self.model.sample(obs, a, generator=self.generator)
        return next_obs, self.env.reward(next_obs, a, psi), self.terminal(next_obs).to(obs.dtype)


@torch.no_grad()
def model_rollouts(
    ppo: Agent, model_env: ModelEnv, start: Tensor, psi: Tensor, horizon: int, *, deterministic: bool = False
) -> dict[str, Tensor]:
    """``horizon`` steps of B model episodes from ``start`` [B, O]; an episode that terminates restarts from its own
    start state (so every column stays B long).  Returns ``obs``, ``action``, ``next_obs`` [T, B, ·], ``reward``,
    ``done`` [T, B] and ``last_obs`` [B, O]."""
    obs = start
    out: dict[str, list[Tensor]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "done")}
    for _ in range(horizon):
        act = ppo.act(obs, deterministic=deterministic)
        nxt, rew, done = model_env.step(obs, act, psi)
        for k, v in zip(out, (obs, act, nxt, rew, done), strict=True):
            out[k].append(v)
        obs = torch.where(done[:, None] > 0, start, nxt)
    res = {k: torch.stack(v) for k, v in out.items()}
    res["last_obs"] = obs
    return res


def virtual_training(
    ppo: Agent,
    model_env: ModelEnv,
    starts: Tensor,
    psi: Tensor,
    *,
    iterations: int,
    envs: int,
    horizon: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """``iterations`` policy updates (PPO or TRPO) on fresh model rollouts (B = ``envs`` episodes of ``horizon``
    steps from real states drawn from ``starts``): AdMRL's VirtualTraining policy phase.  Returns the last update's
    statistics and the mean virtual return of its rollouts."""
    stats: dict[str, float] = {}
    for _ in range(iterations):
        idx = torch.randint(len(starts), (envs,), generator=generator)
        roll = model_rollouts(ppo, model_env, starts[idx], psi, horizon)
        stats = ppo.update(roll["obs"], roll["action"], roll["reward"], roll["done"], roll["last_obs"])
        stats["virtual_return"] = float(roll["reward"].sum(0).mean())
    return stats


def real_rollouts(
    ppo: Agent,
    env: AdmrlEnv,
    episodes: int,
    horizon: int,
    *,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[dict[str, Tensor], Transitions, list[float]]:
    """``episodes`` real episodes of at most ``horizon`` steps with π (plus Gaussian action noise ``noise``).

    Returns, on the CPU, the [T, B] batch (``obs``, ``action``, ``next_obs``, ``reward``, ``done``; steps after an
    episode's end are padded with its last state, zero reward and ``done`` = 1 so that
    ``recipes.admrl.taskgrad``'s alive mask drops them), the flat ``Transitions`` and the episode returns."""
    rng = rng or np.random.default_rng()
    device = next(ppo.policy.parameters()).device
    cols: dict[str, list[list[np.ndarray]]] = {k: [] for k in ("obs", "action", "next_obs", "reward", "done")}
    flat: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
    returns = []
    for _ in range(episodes):
        step = env.reset()
        col: dict[str, list[np.ndarray]] = {k: [] for k in cols}
        total = 0.0
        for t in range(horizon):
            obs = step["obs"]
            a = ppo.act(torch.as_tensor(obs, device=device)).cpu().numpy()
            if noise:
                a = a + noise * rng.standard_normal(a.shape).astype(np.float32)
            a = np.clip(a, -1.0, 1.0)
            step = env.step(a)
            terminal = bool(step["is_terminal"])
            end = bool(step["is_last"]) or t == horizon - 1
            for k, v in zip(cols, (obs, a, step["obs"], step["reward"], float(terminal or end)), strict=True):
                col[k].append(np.asarray(v, np.float32))
            flat.append((obs, a, step["obs"], float(terminal)))
            total += float(step["reward"])
            if end:
                break
        while len(col["obs"]) < horizon:  # pad after the episode's end (masked out downstream)
            for k in ("obs", "next_obs"):
                col[k].append(col["next_obs"][-1])
            col["action"].append(np.zeros_like(col["action"][-1]))
            col["reward"].append(np.float32(0.0))
            col["done"].append(np.float32(1.0))
        for k in cols:
            cols[k].append(col[k])
        returns.append(total)
    batch = {k: torch.as_tensor(np.stack([np.stack(c) for c in v], 1)) for k, v in cols.items()}
    o, a, o2, d = (np.stack(x) for x in zip(*flat, strict=True))
    trans = Transitions(*(torch.as_tensor(np.asarray(x, np.float32)) for x in (o, a, o2, d)))
    return batch, trans, returns
