"""Upper-level, task-aware losses, each per sample, from a model's outputs and a value function V (or ∇V).

Every loss is called as ``loss(predicted, target, value_fn)`` (the ``TaskLoss`` protocol) and returns one
value per sample with the leading shape of the model's per-sample MLE loss (``[B, T]``, ``[N]``, ...); the
bi-level core averages it into L_up.  Built-ins, selectable by name with ``make_task_loss``:

=========  ====================================================  ========================================
name       loss                                                  for
=========  ====================================================  ========================================
``vvaml``  |V̄(s_post) − V̄(s_prior)|², values normalised          latent-state models (TEMPO eq. 4)
``vaml``   (V(s') − mean_k V(ŝ'_k))²                               next-state models (Farahmand 2017, TEMPO eq. 3)
``vagram`` Σ_d (∂_d V(s') (ŝ'_d − s'_d))²                          next-state models (Voelcker et al. 2022)
=========  ====================================================  ========================================

Imports ``bilevel`` and torch only; takes tensors and callables, so it works with any model.
"""

from tasklosses.base import (
    TaskLoss,
    ValueFn,
    available_task_losses,
    evaluate_value,
    make_task_loss,
    register_task_loss,
)
from tasklosses.vagram import VaGraM, clip_gradient_norms, vagram, value_gradient
from tasklosses.vaml import VAML, vaml
from tasklosses.vvaml import VVAML

__all__ = [
    "VAML",
    "VVAML",
    "TaskLoss",
    "VaGraM",
    "ValueFn",
    "available_task_losses",
    "clip_gradient_norms",
    "evaluate_value",
    "make_task_loss",
    "register_task_loss",
    "vagram",
    "value_gradient",
    "vaml",
]
