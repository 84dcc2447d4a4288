"""Branched rollouts in history space (M3PO §5.2 and Algorithm 2, lines 6–9; MBPO, Janner et al. 2019); the
termination functions they need are the environment families' (``recipes.envs.terminations``).

A branched rollout starts from a real window h_{L:t} sampled from D_env, acts with the meta-policy, steps the
meta-model (a random elite member per sample and step, as MBPO) and rolls the window forward with the model's own
samples; it runs k steps or until the termination function ends it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from recipes.envs.terminations import TerminationFn
from worldmodels.history import roll_history


def termination_fn(env: str) -> TerminationFn | None:
    """The termination function of ``env`` for model rollouts (``recipes.envs.registry.termination_fn``).

    Raises:
        ValueError: naming ``env`` if no termination function is known for it (a model-based recipe would
            otherwise roll through terminal states).
    """
    from recipes.envs.registry import termination_fn as registered

    return registered(env)


@torch.no_grad()
def branched_rollouts(
    model: Any,
    policy: Any,
    start: dict[str, Tensor],
    length: int,
    terminal: TerminationFn | None,
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """k-step branched rollouts from real windows.

    Args:
        model: a meta-model with ``sample(obs, action, history, mask, generator=, deterministic=) -> (next_obs
            [N, O], reward [N])`` (e.g. ``worldmodels.HistoryEnsemble``).
        policy: with ``act(obs, history, mask) -> action [N, A]`` (sampling, e.g. ``recipes.agents.sac.SAC``).
        start: ``obs`` [N, O], ``history`` [N, L, O + A + 1], ``history_mask`` [N, L] (rows of D_env).
        length: k ≥ 1.
        terminal: ends a rollout where it returns True (its transition is stored with ``done`` = 1).
        deterministic: step with the chosen member's mean instead of a sample (a model without a trained
            variance, e.g. one fitted by VaGraM).

    Returns:
        ``(rows, stats)``: ``rows`` are the model transitions for D_model — ``obs``, ``action``, ``reward``,
        ``next_obs``, ``done``, ``history``, ``history_mask`` — at most N·k of them (rollouts stop at a
        terminal); ``stats`` has ``reward_mean``, ``done_rate`` and ``transitions``.

    Raises:
        ValueError: if ``length < 1``.
    """
    if length < 1:
        raise ValueError(f"rollout_length: k must be at least 1, got {length}")
    obs, hist, mask = start["obs"], start["history"], start["history_mask"]
    out: dict[str, list[Tensor]] = {
        k: [] for k in ("obs", "action", "reward", "next_obs", "done", "history", "history_mask")
    }
    for _ in range(length):
        if obs.shape[0] == 0:
            break
        action = policy.act(obs, hist, mask)
        next_obs, reward = model.sample(obs, action, hist, mask, generator=generator, deterministic=deterministic)
        done = terminal(next_obs) if terminal is not None else torch.zeros_like(reward, dtype=torch.bool)
        for key, value in (
            ("obs", obs),
            ("action", action),
            ("reward", reward),
            ("next_obs", next_obs),
            ("done", done.to(obs.dtype)),
            ("history", hist),
            ("history_mask", mask),
        ):
            out[key].append(value)
        hist, mask = roll_history(hist, mask, obs, action, reward)
        keep = ~done
        obs, hist, mask = next_obs[keep], hist[keep], mask[keep]
    rows = {k: torch.cat(v) for k, v in out.items()}
    stats = {
        "reward_mean": float(rows["reward"].mean()),
        "done_rate": float(rows["done"].mean()),
        "transitions": float(rows["reward"].shape[0]),
    }
    return rows, stats
