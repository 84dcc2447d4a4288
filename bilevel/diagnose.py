"""Does a weighting do what the upper level asks of it?  The upper loss after one virtual step, weighted vs uniform.

A weighter trains on g = dL_up/dw batch after batch.  Whether it has learned a mapping from features to useful
weights — rather than chasing each batch's noise — shows on batches it is not being trained on: there its weights
should lower the upper loss after a model step more than uniform weights do, and more than the same weights
assigned to the wrong samples (a shuffle keeps their spread and breaks the assignment).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel.strategies import BilevelProblem, Lookahead


@dataclass(frozen=True)
class WeightingGain:
    """The upper loss after one virtual SGD step θ' = θ − η ∇θ L_low(θ, w) for three weightings of one batch.

    Attributes:
        upper: L_up(θ) before the step.
        uniform: L_up(θ') with w = 1 (maximum likelihood's step).
        weighted: L_up(θ') with the weights under test.
        shuffled: L_up(θ') with the same weights randomly permuted over the samples.
        alignment: cos(w − mean(w), −(g − mean(g))) with g = dL_up(θ')/dw at the weights under test (Lookahead,
            one step): 1 when the weights' deviations from their mean point straight down the upper loss, ~0
            (± 1/√N) for an assignment unrelated to it.  Centring both leaves out the weights' mean, which scales
            the step rather than choosing among samples.
    """

    upper: float
    uniform: float
    weighted: float
    shuffled: float
    alignment: float

    @property
    def gain(self) -> float:
        """L_up(θ'_uniform) − L_up(θ'_weighted): > 0 when the weights lower the upper loss more than w = 1."""
        return self.uniform - self.weighted

    @property
    def shuffled_gain(self) -> float:
        """L_up(θ'_uniform) − L_up(θ'_shuffled): the gain of the weights' spread without their assignment."""
        return self.uniform - self.shuffled

    @property
    def step_gain(self) -> float:
        """L_up(θ) − L_up(θ'_uniform): how much the maximum-likelihood step itself lowers the upper loss."""
        return self.upper - self.uniform


def weighting_gain(
    problem: BilevelProblem, weights: Tensor, lr: float, *, generator: torch.Generator | None = None
) -> WeightingGain:
    """One batch's ``WeightingGain``: the upper loss after one virtual SGD step of size ``lr`` on the weighted, the
    uniformly weighted and the shuffled lower loss, and the alignment of the weights with the hypergradient.

    The step is the virtual step of ``bilevel.Lookahead`` (TEMPO eq. 8), the quantity the weighter's hypergradient
    differentiates; it is plain SGD whatever optimiser trains the model.

    Args:
        problem: the two levels at θ (``per_sample_loss`` deterministic: latent noise fixed outside).
        weights: w, the shape of ``per_sample_loss``'s output, at least 2 elements.
        lr: η of the virtual step, > 0 (the model's learning rate, as ``SameState`` uses it).
        generator: for the shuffle.

    Returns:
        A ``WeightingGain`` (floats in the upper loss's units; ``alignment`` in [−1, 1]).

    Raises:
        ValueError: ``lr`` is not positive or ``weights`` has fewer than 2 elements.
    """
    if weights.numel() < 2:
        raise ValueError(f"weights: need at least 2 samples to shuffle, got {weights.numel()}")
    look = Lookahead(lr)  # checks lr
    w = weights.detach()
    order = torch.randperm(w.numel(), generator=generator).to(w.device)  # a CPU generator serves any device
    shuffled = w.flatten()[order].view_as(w)
    g = look.compute(problem, w).hypergradient
    centred, g = (w - w.mean()).flatten().double(), (g - g.mean()).flatten().double()
    denom = (centred.norm() * g.norm()).clamp_min(torch.finfo(torch.float64).tiny)
    return WeightingGain(
        upper=float(problem.upper_at().detach()),
        uniform=float(look.objective(problem, torch.ones_like(w))),
        weighted=float(look.objective(problem, w)),
        shuffled=float(look.objective(problem, shuffled)),
        alignment=float(-(centred @ g) / denom),
    )
