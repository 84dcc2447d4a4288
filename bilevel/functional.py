"""Functional entry point: ``hypergradient(strategy, per_sample_loss, upper_loss, params, weights)``."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from bilevel.strategies import BilevelProblem, PerSampleLoss, Strategy, UpperLoss


def _fresh(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of θ as new leaves, so the caller's tensors and their ``.grad`` stay untouched."""
    if not params:
        raise ValueError("params is empty: pass θ as a dict name -> tensor, e.g. dict(model.named_parameters())")
    if not any(v.requires_grad for v in params.values()):
        raise ValueError("no tensor in params requires grad: θ must contain the trainable parameters")
    return {k: v.detach().requires_grad_(v.requires_grad) for k, v in params.items()}


def problem(
    per_sample_loss: PerSampleLoss,
    upper_loss: UpperLoss,
    params: Mapping[str, Tensor],
) -> BilevelProblem:
    """A ``BilevelProblem`` over detached copies of ``params`` (see ``hypergradient``)."""
    return BilevelProblem(per_sample_loss, upper_loss, _fresh(params))


def hypergradient(
    strategy: Strategy,
    per_sample_loss: PerSampleLoss,
    upper_loss: UpperLoss,
    params: Mapping[str, Tensor],
    weights: Tensor,
) -> Tensor:
    """dL_up/dw for the weighted lower problem ``L_low(θ, w) = (1/N) Σ_i w_i ℓ_i(θ)`` by ``strategy``.

    Args:
        strategy: a ``bilevel.Strategy`` (``SameState``, ``Lookahead``, ``Implicit``, ``Naive``, ``Uniform``).
        per_sample_loss: ``params -> Tensor[N]`` unweighted per-sample lower losses ℓ(θ) (any shape equal to
            ``weights``; N = numel).  Use ``torch.func.functional_call(model, params, args)`` inside.
        upper_loss: ``params -> Tensor[]`` the task-aware loss L_up(θ) (a non-scalar result is averaged).
        params: θ, name → tensor (``dict(model.named_parameters())``); tensors with ``requires_grad=False`` are
            constants.  Not modified.
        weights: w, Tensor[N] (no gradient needed; it is detached).

    Returns:
        g = dL_up/dw, a detached Tensor of the shape of ``weights``.  Propagate it into a weighter with
        ``w.backward(g)``.  ``Naive`` and ``Uniform`` train no weighter and return zeros.

    Raises:
        ValueError: if ``params`` is empty or has no tensor requiring grad, or ℓ and ``weights`` differ in shape.

    Example:
        >>> g = hypergradient(SameState(lr=1e-3), lambda p: nll(p, x, y), lambda p: task(p, x_meta), params, w)
    """
    return strategy.compute(problem(per_sample_loss, upper_loss, params), weights).hypergradient
