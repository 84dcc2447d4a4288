"""bilevel.diagnose.weighting_gain: the upper loss after one virtual step, weighted vs uniform vs shuffled."""

from __future__ import annotations

import problems
import pytest
import torch

from bilevel.diagnose import weighting_gain
from bilevel.functional import problem as make_problem
from bilevel.strategies import Lookahead

LR = 0.05


def _problem(case: str = "linear_regression", seed: int = 0):
    loss, upper, params, w = getattr(problems, case)(seed=seed)
    return make_problem(loss, upper, params), w


def _upper_after_step(loss, upper, params, w: torch.Tensor, lr: float) -> float:
    """An independent θ' = θ − lr ∇ mean(w ℓ) by hand, then L_up(θ')."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad((w * loss(theta)).mean(), list(theta.values()))
    moved = {k: (v - lr * g).detach() for (k, v), g in zip(theta.items(), grads, strict=True)}
    return float(upper(moved))


@pytest.mark.parametrize("case", ["linear_regression", "logistic_regression", "mlp"])
def test_the_three_losses_match_a_hand_written_sgd_step(case: str) -> None:
    loss, upper, params, w = getattr(problems, case)(seed=3)
    gen = torch.Generator().manual_seed(0)
    result = weighting_gain(make_problem(loss, upper, params), w, LR, generator=gen)
    order = torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))
    assert result.uniform == pytest.approx(_upper_after_step(loss, upper, params, torch.ones_like(w), LR), rel=1e-10)
    assert result.weighted == pytest.approx(_upper_after_step(loss, upper, params, w, LR), rel=1e-10)
    assert result.shuffled == pytest.approx(_upper_after_step(loss, upper, params, w[order], LR), rel=1e-10)
    assert result.upper == pytest.approx(float(upper(params).detach()), rel=1e-12)
    assert result.step_gain == pytest.approx(result.upper - result.uniform)


def test_weights_down_the_hypergradient_align_and_gain_to_first_order() -> None:
    prob, _ = _problem("mlp", seed=1)
    ones = torch.ones(20, dtype=torch.float64)
    g = Lookahead(LR).compute(prob, ones).hypergradient
    eps = 1e-4
    d = (g - g.mean()) / (g - g.mean()).norm()
    w = ones - eps * d  # a small step of the weights' assignment straight down the upper loss
    result = weighting_gain(prob, w, LR)
    assert result.alignment > 0.999
    # L_up(θ'(w)) − L_up(θ'(1)) = g·(w − 1) + O(eps²)
    assert result.gain == pytest.approx(eps * float(g @ d), rel=1e-3)
    assert result.gain > 0
    up = weighting_gain(prob, ones + eps * d, LR)
    assert up.alignment < -0.999 and up.gain < 0


def test_downweighting_corrupted_labels_beats_its_own_shuffle() -> None:
    """Noisy labels: weights that zero the corrupted half lower the clean loss more than uniform or shuffled."""
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 5
    x, xm = (
        torch.randn(n, d, generator=gen, dtype=torch.float64),
        torch.randn(50, d, generator=gen, dtype=torch.float64),
    )
    beta = torch.randn(d, generator=gen, dtype=torch.float64)
    y, ym = x @ beta, xm @ beta
    bad = torch.arange(n) < n // 2
    y = torch.where(bad, y + 3.0 * torch.randn(n, generator=gen, dtype=torch.float64), y)
    # near the clean solution, where the corrupted labels' gradients pull θ away from it
    theta = beta + 0.05 * torch.randn(d, generator=gen, dtype=torch.float64)
    params = {"theta": theta.requires_grad_(True)}
    prob = make_problem(
        lambda p: 0.5 * (x @ p["theta"] - y) ** 2, lambda p: 0.5 * ((xm @ p["theta"] - ym) ** 2).mean(), params
    )
    w = (~bad).to(torch.float64) * 2.0  # mean 1, the clean half only
    result = weighting_gain(prob, w, 0.1, generator=torch.Generator().manual_seed(1))
    assert result.step_gain < 0  # maximum likelihood's step follows the corrupted labels away from the solution
    assert result.gain > 0
    assert result.gain > result.shuffled_gain


def test_bad_input_is_refused() -> None:
    prob, w = _problem()
    with pytest.raises(ValueError, match="lr"):
        weighting_gain(prob, w, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        weighting_gain(prob, w[:1], LR)
