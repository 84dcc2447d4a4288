"""Discounted sums over time: returns-to-go and generalised advantage estimates, differentiable in the rewards."""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_sum(x: Tensor, dones: Tensor, discount: float) -> Tensor:
    """y_t = x_t + discount·(1 − done_t)·y_{t+1}, y_T = 0, over the time axis (dim 0); differentiable in ``x``.

    Args:
        x: Tensor[T, B].
        dones: Tensor[T, B], 1 where the episode ends after step t (nothing is carried back across it).
        discount: the factor (γ for returns-to-go, γλ for GAE).

    Returns:
        Tensor[T, B].
    """
    if x.shape != dones.shape:
        raise ValueError(f"x {tuple(x.shape)} and dones {tuple(dones.shape)} must have one shape [T, B]")
    carry = torch.zeros_like(x[0])
    out = []
    keep = discount * (1.0 - dones.to(x.dtype))
    for t in range(x.shape[0] - 1, -1, -1):
        carry = x[t] + keep[t] * carry
        out.append(carry)
    return torch.stack(out[::-1])


def gae(rewards: Tensor, values: Tensor, dones: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates A_t = Σ_k (γλ)^k δ_{t+k}, δ_t = r_t + γ(1 − done_t)V(s_{t+1}) − V(s_t).

    Schulman et al. 2016, eq. 16.  Linear in ``rewards``, so differentiable in ψ through r_ψ.

    Args:
        rewards: Tensor[T, B].
        values: Tensor[T + 1, B], V(s_0), …, V(s_T) (the last one bootstraps truncated episodes).
        dones: Tensor[T, B], 1 where the episode terminates after step t.
        gamma, lam: γ and λ in [0, 1].

    Returns:
        Tensor[T, B].
    """
    if values.shape[0] != rewards.shape[0] + 1 or values.shape[1:] != rewards.shape[1:]:
        raise ValueError(f"values must be [T + 1, B] for rewards {tuple(rewards.shape)}, got {tuple(values.shape)}")
    notdone = 1.0 - dones.to(rewards.dtype)
    delta = rewards + gamma * notdone * values[1:] - values[:-1]
    return discounted_sum(delta, dones, gamma * lam)
