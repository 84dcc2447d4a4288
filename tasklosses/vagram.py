"""VaGraM, the value-gradient weighted model loss of Voelcker et al. (ICLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tasklosses.base import ValueFn, evaluate_value, register_task_loss


def value_gradient(value_fn: ValueFn, states: Tensor) -> Tensor:
    """∇_s V(s) at ``states`` ``[..., D]``, per sample, detached (a constant for every caller).

    The states are detached first and only they are differentiated (``torch.autograd.grad`` with the states as the
    sole input), so no gradient reaches V's parameters or whatever produced ``states``.  Works inside
    ``torch.no_grad()``.  Assumes V(s_j) depends on s_j only (true for an MLP critic; not for BatchNorm in training
    mode), since the per-sample gradients are read off ∇ Σ_j V(s_j).

    Raises:
        ValueError: if ``value_fn`` returns the wrong shape.
    """
    x = states.detach().requires_grad_(True)
    with torch.enable_grad():
        value = evaluate_value(value_fn, x)
        if not value.requires_grad:
            return torch.zeros_like(x)
        (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def clip_gradient_norms(grad: Tensor, quantile: float) -> Tensor:
    """Rescale the per-sample gradients ``[..., D]`` whose norm exceeds the batch's ``quantile`` of norms to it.

    The official VaGraM code's outlier clipping (``bound_clipping``, quantile 0.95).

    Raises:
        ValueError: if ``quantile`` is outside [0, 1].
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    norms = grad.norm(dim=-1, keepdim=True)
    bound = torch.quantile(norms.flatten(), quantile)
    scale = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
    return grad * scale


def vagram(predicted: Tensor, target: Tensor, value_grad: Tensor) -> Tensor:
    """Per-sample VaGraM diagonal bound for given value gradients; see ``VaGraM``.

    Args:
        predicted: ``[..., D]``; ``target`` must broadcast to its shape.
        target: ``[..., D]``.
        value_grad: ∇V at ``target``, shaped like ``target`` (one critic) or ``[C, *target.shape]`` (C critics,
            averaged); treated as a constant.

    Returns:
        ``mean_c Σ_i (g_{c,i} (ŝ_i − s_i))²``, shape ``predicted.shape[:-1]``.

    Raises:
        ValueError: on incompatible shapes.
    """
    try:
        fits = torch.broadcast_shapes(predicted.shape, target.shape) == predicted.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"target {tuple(target.shape)} must broadcast to predicted {tuple(predicted.shape)}")
    if value_grad.shape == target.shape:
        grads = value_grad.detach().unsqueeze(0)
    elif value_grad.dim() == target.dim() + 1 and value_grad.shape[1:] == target.shape:
        grads = value_grad.detach()
    else:
        raise ValueError(
            f"value_grad must be shaped like target {tuple(target.shape)} or [C, *target.shape], "
            f"got {tuple(value_grad.shape)}"
        )
    error = predicted - target
    return torch.stack([(g * error).pow(2).sum(-1) for g in grads]).mean(0)


@register_task_loss("vagram")
class VaGraM(nn.Module):
    """Value-Gradient weighted Model loss (Voelcker, Liao, Garg & Farahmand, ICLR 2022), per sample.

    A first-order Taylor expansion of V around the real next state s' turns VAML (TEMPO eq. 3) into
    ``(∇_s V(s')ᵀ (ŝ' − s'))²``; VaGraM replaces it by a diagonal bound (Cauchy–Schwarz: the Taylor term is at most
    D times it; eq. 7 of the paper), which stays well posed when ∇V is nearly orthogonal to the error:

        L_i = Σ_d ( ∂V/∂s_d (s'_i) · (ŝ'_{i,d} − s'_{i,d}) )²

    i.e. a squared error whose dimensions are weighted by the squared value gradient.

    Choices.
    * The gradient is taken at the *real* next state ``target``, detached (``value_gradient``): a constant for
      the model, no gradient into V's parameters.  Gradients of the loss still flow into ``target`` through the
      error term ŝ' − s' (needed when the "real" state is itself a model output, e.g. a posterior latent).
    * Several value functions (the official code uses both critics and both target critics) are given as a
      sequence (list, tuple or ``nn.ModuleList``) and their losses are *averaged*:
      ``(1/C) Σ_c Σ_d (∂_d V_c · Δ_d)²`` (the official code sums; the mean keeps the scale independent of C).  A
      direction that any critic is sensitive to is penalised, which averaging the gradients first would not
      guarantee.
    * Precomputed gradients can be passed instead (``value_grad=``), e.g. cached per dataset index as the official
      code does; caching is the caller's business.
    * ``clip_quantile`` rescales per-sample gradients whose norm exceeds that batch quantile of norms (the official
      code's ``bound_clipping`` with 0.95); off by default, i.e. the paper's formula.  The official code's further
      division by a running mean of gradient norms is a positive scale of the loss and is left out.
    * The reward prediction, which the official code adds as a plain squared error, is not part of this loss.

    Args:
        clip_quantile: None (default) or a quantile in [0, 1].

    Shapes:
        ``forward(predicted [..., D], target [..., D], value_fn)`` → ``predicted.shape[:-1]``; ``target`` must
        broadcast to ``predicted`` (an ensemble's ``[E, N, D]`` predictions against ``[N, D]`` give ``[E, N]``).

    Raises:
        ValueError: on a ``clip_quantile`` outside [0, 1]; (from ``forward``) on incompatible shapes, or unless
            exactly one of ``value_fn`` and ``value_grad`` is given.
    """

    def __init__(self, clip_quantile: float | None = None) -> None:
        super().__init__()
        if clip_quantile is not None and not 0.0 <= clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be None or in [0, 1], got {clip_quantile}")
        self.clip_quantile = clip_quantile

    def forward(
        self,
        predicted: Tensor,
        target: Tensor,
        value_fn: ValueFn | Sequence[ValueFn] | None = None,
        *,
        value_grad: Tensor | None = None,
    ) -> Tensor:
        """Per-sample VaGraM loss.

        Args:
            predicted: the model's next-state prediction ``[..., D]`` (gradients to θ).
            target: the real next state ``[..., D]``.
            value_fn: V or a sequence of value functions; the gradient is taken at ``target``.
            value_grad: instead of ``value_fn``: ∇V at ``target``, shaped like it or ``[C, *target.shape]``.
        """
        if (value_fn is None) == (value_grad is None):
            raise ValueError("give exactly one of value_fn and value_grad")
        if value_grad is None:
            fns: list[ValueFn] = list(value_fn) if isinstance(value_fn, Sequence | nn.ModuleList) else [value_fn]
            if not fns:
                raise ValueError("value_fn is an empty sequence")
            value_grad = torch.stack([value_gradient(fn, target) for fn in fns])
        elif value_grad.shape == target.shape:
            value_grad = value_grad.unsqueeze(0)
        if self.clip_quantile is not None:
            value_grad = torch.stack([clip_gradient_norms(g, self.clip_quantile) for g in value_grad])
        return vagram(predicted, target, value_grad)

    def extra_repr(self) -> str:
        return f"clip_quantile={self.clip_quantile}"
