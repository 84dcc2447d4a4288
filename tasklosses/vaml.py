"""VAML, the value-aware model loss of Farahmand et al. (2017), for models that predict next states (TEMPO eq. 3)."""

from __future__ import annotations

from torch import Tensor, nn

from tasklosses.base import ValueFn, evaluate_value, register_task_loss


def vaml(predicted: Tensor, target: Tensor, value_fn: ValueFn) -> Tensor:
    """Per-sample VAML: ``(V(s') − mean_k V(ŝ'_k))²``; see ``VAML``.

    Raises:
        ValueError: on shapes that fit neither ``[K, *target.shape]`` nor ``target.shape``.
    """
    if predicted.dim() == target.dim() + 1 and predicted.shape[1:] == target.shape:
        model_value = evaluate_value(value_fn, predicted).mean(0)
    elif predicted.shape == target.shape:
        model_value = evaluate_value(value_fn, predicted)
    else:
        raise ValueError(
            f"predicted must be [K, *target.shape] model samples or one prediction shaped like target; "
            f"got predicted {tuple(predicted.shape)} and target {tuple(target.shape)}"
        )
    return (evaluate_value(value_fn, target) - model_value).pow(2)


@register_task_loss("vaml")
class VAML(nn.Module):
    """Value-Aware Model Learning (Farahmand, Barreto & Nikovski, AISTATS 2017; TEMPO eq. 3), per sample.

    Eq. 3 with µ the data distribution:

        L^VAML = ∫ µ(s, a) | ∫ p(s'|s,a) V(s') ds' − ∫ p̂(s'|s,a) V(s') ds' |² d(s, a)

    estimated per transition i from the real next state s'_i (one sample of p) and K samples ŝ'_{i,k} of the
    model p̂ (reparameterised, so that they carry gradients to θ):

        L_i = ( V(s'_i) − (1/K) Σ_k V(ŝ'_{i,k}) )²

    A single prediction (K = 1, e.g. a deterministic model's mean) gives ``(V(s'_i) − V(ŝ'_i))²``.  With one
    environment sample the first term is the value of the observed s'_i, not its expectation; the estimator is
    biased by the environment's value variance, a constant in θ.  Gradients flow through V into the model samples
    (and into ``target`` if it requires grad); freeze V's parameters yourself.

    Shapes:
        ``forward(predicted [K, ..., D] or [..., D], target [..., D], value_fn)`` → ``[...]`` (e.g. ``[N]`` for a
        dynamics MLP, ``[B, T]`` for sequences).  A ``predicted`` with one more dimension than ``target`` is read as
        K model samples along dimension 0.

    Raises:
        ValueError: (from ``forward``) on shapes that fit neither form, or a ``value_fn`` returning the wrong shape.
    """

    def forward(self, predicted: Tensor, target: Tensor, value_fn: ValueFn) -> Tensor:
        """Per-sample VAML loss, shape ``target.shape[:-1]``."""
        return vaml(predicted, target, value_fn)
