"""Fitting an ensemble to a hold-out split: mbrl-lib's ``ModelTrainer`` loop, as MBPO trains its model (App. C)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from worldmodels.ensemble import GaussianEnsemble


def fit_to_holdout(
    model: GaussianEnsemble,
    holdout: dict[str, Tensor],
    n_train: int,
    minibatch: Callable[[Tensor], None],
    *,
    batch: int,
    max_epochs: int | None,
    patience: int,
    generator: torch.Generator,
    improvement: float = 0.01,
    score: Callable[[dict[str, Tensor]], Tensor] | None = None,
) -> tuple[int, Tensor]:
    """Epochs of minibatches until no member's hold-out MSE has improved by ``improvement`` (relative) for
    ``patience`` epochs in a row, or ``max_epochs``; then the best epoch's parameters back, and the elites chosen by
    their hold-out MSE (mbrl-lib's ``ModelTrainer``; Janner et al. 2019, App. C).

    The caller owns everything inside a minibatch — the loss, the bootstrap counts, the optimiser step, skipping a
    non-finite one — so the same loop serves a plain fit and a bi-level weighted one.

    Args:
        model: the ensemble (its ``holdout_loss`` and ``select_elites`` are used).
        holdout: the hold-out rows, a batch as ``GaussianEnsemble.loss`` takes.
        n_train: N, the number of training rows.
        minibatch: called with the positions [≤ batch] (into the N training rows, on ``generator``'s device) of one
            minibatch; at least one per epoch, also when N < ``batch``.
        batch: minibatch size.
        max_epochs: at most this many epochs (None: until ``patience``).
        patience: epochs without improvement before stopping.
        generator: the RNG of every epoch's shuffle.
        improvement: the relative hold-out improvement of any member that counts as one (mbrl-lib: 1%).
        score: the per-member hold-out score [E] of a batch, lower is better (default ``model.holdout_loss``, the
            MSE): for a model trained on another loss, that loss (a score the training does not lower would stop
            the fit at its first epochs).

    Returns:
        The epochs done and the final per-member hold-out score [E].
    """
    score = model.holdout_loss if score is None else score
    best: Tensor | None = None
    best_state, since, epochs = None, 0, 0
    while max_epochs is None or epochs < max_epochs:
        order = torch.randperm(n_train, generator=generator)
        for i in range(0, max(n_train - batch + 1, 1), batch):
            minibatch(order[i : i + batch])
        epochs += 1
        loss = score(holdout)
        if best is None or bool(((best - loss) / best.abs().clamp_min(1e-12) > improvement).any()):
            best = loss if best is None else torch.minimum(best, loss)
            best_state, since = copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    final = score(holdout)
    model.select_elites(final)
    return epochs, final
