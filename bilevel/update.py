"""One full bi-level update on real modules and optimisers (TEMPO Algorithm 1, lines 3–8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from bilevel import _autodiff as ad
from bilevel.factored import FactoredJvp
from bilevel.guard import NonFiniteError, as_floats, check_finite
from bilevel.strategies import BilevelProblem, PerSampleJvp, Strategy

ModelFn = Callable[..., Any]


@dataclass
class LevelOutputs:
    """What the user's ``forward`` returns from one pass of the model.

    Attributes:
        loss: ℓ, unweighted per-sample lower losses, shape S (e.g. [N] or [B, T]).
        features: weighter inputs, shape [*S, F] (detached by the weighter).  Required by strategies that train
            a weighter.
        upper: the task-aware loss from the same pass: a scalar L_up, or per-sample values of shape S (averaged
            for the upper level; used per sample by ``Naive``).  Optional when ``step`` gets a separate ``upper``.
        aux: anything else the pass produced that the caller wants back (e.g. the model's states for the agent);
            the update never reads it.
        probes: per-sample signals of shape S to hold the weights against (e.g. reward, ‖∇V‖): the update reports
            the Pearson correlation of w with each, ``weight_corr/<name>`` (diagnostics only; detached).
    """

    loss: Tensor
    features: Tensor | None = None
    upper: Tensor | None = None
    aux: Any = None
    probes: dict[str, Tensor] = field(default_factory=dict)


class BilevelUpdate:
    """Performs one bi-level update: the model's step on the weighted loss and the weighter's step on dL_up/dw.

    Per call of ``step`` (TEMPO Algorithm 1, lines 3–8):

    1. ``out = forward(model)`` — one real forward at θ (BatchNorm statistics update here, once);
    2. ``w = weighter(out.features)`` (or ``strategy.rule_weights(out.loss, out.upper)`` for ``Naive``/``Uniform``);
    3. ``g = dL_up/dw`` by the strategy, reusing the forward of step 1; virtual forwards at other θ (Lookahead)
       run through ``torch.func.functional_call`` on *copies* of the buffers, so BatchNorm running statistics are
       never changed by virtual steps;
    4. ``w.backward(g)`` (upper level) and ∇θ (1/N) Σ w_i ℓ_i (lower level) — the gradient the strategy already
       computed at θ, so no second backward pass;
    5. the finiteness check (``bilevel.guard.check_finite``, on the metrics read anyway: losses, weights,
       gradient norms, in one device synchronisation), then the weighter-optimiser and model-optimiser steps.  A
       NaN or infinite value raises ``bilevel.guard.NonFiniteError`` before either step: nothing is written
       into the model, the weighter (its buffers, e.g. BatchNorm statistics, are restored) or their optimisers'
       states.  Buffers that the caller's forward at θ updates in the model are the caller's to keep.

    Args:
        model: the lower-level model θ (its trainable parameters are θ).
        model_optimizer: the real optimiser for θ (Adam, SGD, ...).
        strategy: a ``bilevel.Strategy``.
        weighter: N_α, e.g. ``bilevel.MetaWeighter``; required when ``strategy.trains_weighter``.
        weighter_optimizer: optimiser over α; required with ``weighter``.
        grad_clip: global-norm clip for θ's gradient (DreamerV2/TEMPO: 100), or None.
        weighter_grad_clip: global-norm clip for α's gradient, or None.
        skip_nonfinite: raise ``bilevel.guard.NonFiniteError`` instead of stepping on a non-finite loss,
            weight or gradient (default); ``False`` steps regardless, as plain PyTorch would.
        hypergradient_scale: ``"exact"`` backpropagates g = dL_up/dw into the weighter as the strategy returns it;
            ``"unit_norm"`` divides it by its norm first, g / ‖g‖ — the same direction at every step, at a scale
            that depends neither on the model's learning rate η (SameState's and Lookahead's g carry a factor η) nor
            on the size of the upper loss.  Where the exact g leaves the weighter's gradients below its Adam ε,
            every weighter step shrinks; the normalised one takes Adam's full steps.

    Raises:
        ValueError: if the strategy trains a weighter but no weighter/optimiser is given, or for an unknown
            ``hypergradient_scale``.
    """

    def __init__(
        self,
        model: nn.Module,
        model_optimizer: torch.optim.Optimizer,
        strategy: Strategy,
        weighter: nn.Module | None = None,
        weighter_optimizer: torch.optim.Optimizer | None = None,
        *,
        grad_clip: float | None = None,
        weighter_grad_clip: float | None = None,
        skip_nonfinite: bool = True,
        hypergradient_scale: Literal["exact", "unit_norm"] = "exact",
    ) -> None:
        if strategy.trains_weighter and (weighter is None or weighter_optimizer is None):
            raise ValueError(f"{strategy!r} trains a weighter: pass weighter= and weighter_optimizer=")
        if hypergradient_scale not in ("exact", "unit_norm"):
            raise ValueError(f"hypergradient_scale must be 'exact' or 'unit_norm', got {hypergradient_scale!r}")
        self.hypergradient_scale = hypergradient_scale
        self.model, self.model_optimizer, self.strategy = model, model_optimizer, strategy
        self.weighter, self.weighter_optimizer = weighter, weighter_optimizer
        self.grad_clip, self.weighter_grad_clip = grad_clip, weighter_grad_clip
        self.skip_nonfinite = skip_nonfinite

    def view(self, params: dict[str, Tensor]) -> ModelFn:
        """The model as a function of ``params`` (a virtual θ), with its own copy of every buffer."""
        state = {**{n: b.clone() for n, b in self.model.named_buffers()}, **params}

        def call(*args: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(self.model, state, args, kwargs)

        return call

    def step(
        self,
        forward: Callable[[ModelFn], LevelOutputs],
        upper: Callable[[ModelFn], Tensor] | None = None,
        *,
        meta: bool = True,
        outputs: LevelOutputs | None = None,
        jvp: PerSampleJvp | FactoredJvp | None = None,
    ) -> dict[str, float]:
        """Run one bi-level update.

        Args:
            forward: ``model_fn -> LevelOutputs``; called with the real model for θ and with functional views for
                virtual parameters.  Everything random inside (latent samples, dropout) should be drawn once
                outside or seeded, so that virtual passes see the same noise.
            upper: optional ``model_fn -> L_up`` on separate data (e.g. a clean meta set); when omitted the
                upper loss is ``forward(...).upper``.
            meta: ``False`` skips the upper level this call: the weighter still produces w (without gradient)
                and the model steps on the weighted loss, but no hypergradient is computed and the weighter is
                not updated.  Updating the weighter every k-th step amortises the hypergradient's cost.
            outputs: ``forward(model)`` if the caller already ran it (to keep its ``aux``): the update then uses it
                as the real forward at θ instead of calling ``forward`` again.  It must come from the current θ
                with its autograd graph.
            jvp: optional ``(params, tangents) -> (ℓ, J·v)`` at the real model's parameters (see
                ``bilevel.BilevelProblem``'s ``per_sample_jvp``), e.g. a compiled forward-mode pass of
                ``forward``'s loss; ``SameState(method="auto")`` then computes (1/N) J a with it instead of the
                double backward, and θ's gradient by a plain backward through ``outputs``.  A
                ``bilevel.FactoredJvp`` builds the mixed product from its intermediates' tangents and θ's own
                backward (w detached), which then runs when the strategy asks for J a.

        Returns:
            Metrics: ``lower_loss`` (weighted), ``lower_loss_unweighted``, ``upper_loss`` (at θ, when computed),
            ``weight_mean/std/min/max``, ``weight_ess`` (the weights' effective sample size as a share of the batch,
            (Σw)² / (N Σw²): 1 for uniform weights, 1/N for one weight alone), ``weight_corr/<name>`` per probe of
            ``LevelOutputs.probes``, ``model_grad_norm``; on weighter updates also ``hypergrad_norm`` (‖g‖ as
            the strategy returned it, before ``hypergradient_scale``), ``weighter_grad_norm`` and the weighter's
            effective step: ``weighter_step`` = ‖Δα‖/‖α‖ and ``weighter_step_vs_lr`` = ‖Δα‖ / (lr·√P) with P the
            number of weighter parameters — 1 when every parameter moves by the learning rate, as Adam's step does
            for gradients far above its ε (weight decay included; the optimiser's first parameter group's lr).

        Raises:
            ValueError: if ``features`` (weighter strategies) or a per-sample upper loss (``Naive``) is missing, or a
                probe's shape is not the weights'.
            bilevel.guard.NonFiniteError: (with ``skip_nonfinite``) a loss, weight or gradient norm is NaN or
                infinite; neither optimiser stepped and their gradients are cleared.
        """
        out = forward(self.model) if outputs is None else outputs
        params = dict(self.model.named_parameters())

        def upper_fn(fn: ModelFn) -> Tensor:
            if upper is not None:
                return upper(fn)
            value = forward(fn).upper
            if value is None:
                raise ValueError("forward() returned no upper loss and step() got no upper=")
            return value

        # Upper loss at θ: free from a shared forward; on separate data it is evaluated (on buffer copies) only
        # if the strategy asks for it (BilevelProblem.upper_at is lazy; Lookahead needs it at θ_K only).
        upper_at_theta: Tensor | None = out.upper if upper is None else None
        if upper_at_theta is None and self.strategy.needs_upper and (meta or not self.strategy.trains_weighter):
            upper_at_theta = upper_fn(self.view(params))
        if self.strategy.trains_weighter and out.features is None:
            raise ValueError(f"{self.strategy!r} trains a weighter: forward() must return features")
        saved = self._saved_buffers()
        if self.strategy.trains_weighter and meta:
            level = self._upper_level(forward, upper_fn, out, params, upper_at_theta, jvp)
        else:
            level = self._weights_only(out, upper_at_theta)
        stepping = [self.weighter_optimizer, self.model_optimizer] if level.meta else [self.model_optimizer]
        level.tensors["model_grad_norm"] = self._model_gradient(params, out.loss, level)
        metrics = self._checked_metrics(out.loss, level, stepping, saved, out.probes)
        before = _snapshot(self.weighter) if level.meta else None
        for opt in stepping:
            assert opt is not None
            opt.step()
        if before is not None:
            assert self.weighter is not None and self.weighter_optimizer is not None
            metrics.update(_step_size(before, self.weighter, self.weighter_optimizer))
        return metrics

    def _saved_buffers(self) -> list[Tensor]:
        """Copies of the weighter's buffers where a skipped update must restore them: its forward updates them
        (BatchNorm statistics)."""
        if self.skip_nonfinite and self.weighter is not None and self.strategy.trains_weighter:
            return [b.detach().clone() for b in self.weighter.buffers()]
        return []

    def _weights_only(self, out: LevelOutputs, upper_at_theta: Tensor | None) -> _Weights:
        """The weights of a step without a weighter update: the weighter's without gradient, or the strategy's rule
        (``Naive``, ``Uniform``)."""
        if self.strategy.trains_weighter:
            assert self.weighter is not None and out.features is not None
            with torch.no_grad():
                return _Weights(self.weighter(out.features), upper_at_theta)
        upper_detached = None if upper_at_theta is None else upper_at_theta.detach()
        return _Weights(self.strategy.rule_weights(out.loss.detach(), upper_detached), upper_at_theta)

    def _upper_level(
        self,
        forward: Callable[[ModelFn], LevelOutputs],
        upper_fn: Callable[[ModelFn], Tensor],
        out: LevelOutputs,
        params: dict[str, Tensor],
        upper_at_theta: Tensor | None,
        jvp: PerSampleJvp | FactoredJvp | None,
    ) -> _Weights:
        """The weights, g = dL_up/dw by the strategy and the weighter's gradient (its step comes after the check):
        TEMPO Algorithm 1, lines 4–6."""
        assert self.weighter is not None and self.weighter_optimizer is not None and out.features is not None
        w = self.weighter(out.features)
        # a FactoredJvp runs θ's backward when the strategy asks for J a (after a = ∇θ L_up's backward)
        factored = jvp.at(out.loss, w, list(params.values())) if isinstance(jvp, FactoredJvp) else None
        problem = BilevelProblem(
            per_sample_loss=lambda p: forward(self.view(p)).loss,
            upper_loss=lambda p: upper_fn(self.view(p)),
            params=params,
            loss=out.loss,
            upper=upper_at_theta,
            per_sample_jvp=jvp if factored is None else factored,
        )
        result = self.strategy.compute(problem, w.detach())
        g = result.hypergradient
        self.weighter_optimizer.zero_grad(set_to_none=True)
        w.backward(_scaled(g, self.hypergradient_scale))
        # θ's gradient was computed at θ with w detached, so it does not depend on the weighter's step
        tensors: dict[str, Tensor | float] = {
            "weighter_grad_norm": _clip(self.weighter.parameters(), self.weighter_grad_clip),
            "hypergrad_norm": g.detach().norm(),
        }
        lower_grad = factored.lower_grad if factored is not None and factored.lower_grad else result.lower_grad
        upper = result.upper if result.upper is not None else upper_at_theta
        return _Weights(w.detach(), upper, lower_grad, tensors, meta=True)

    def _model_gradient(self, params: dict[str, Tensor], loss: Tensor, level: _Weights) -> Tensor | float:
        """θ's gradient of (1/N) Σ w_i ℓ_i (the strategy's, when it computed it) into ``.grad``, clipped; its
        norm (TEMPO Algorithm 1, line 7)."""
        names = list(params)
        lower_grad = level.lower_grad
        if lower_grad is None:
            lower_grad = ad.grads(ad.lower_objective(loss, level.weights), [params[n] for n in names])
        self.model_optimizer.zero_grad(set_to_none=True)
        for n, g_theta in zip(names, lower_grad, strict=True):
            if params[n].requires_grad:
                params[n].grad = _laid_out_as(g_theta.detach(), params[n])
        return _clip([params[n] for n in names if params[n].requires_grad], self.grad_clip)

    def _checked_metrics(
        self, loss: Tensor, level: _Weights, stepping: list[Any], saved: list[Tensor], probes: dict[str, Tensor]
    ) -> dict[str, float]:
        """Every metric as floats after one finiteness check (one device synchronisation); on a non-finite value
        the optimisers' gradients are cleared, the weighter's buffers restored, and NonFiniteError raised."""
        w = level.weights
        with torch.no_grad():
            loss = loss.detach()
            # losses first: the check names the first non-finite value
            checked: dict[str, Tensor | float] = {"lower_loss_unweighted": loss.mean()}
            if level.upper is not None:
                checked["upper_loss"] = level.upper.detach().mean()
            checked.update(
                lower_loss=(w * loss).mean(),
                **level.tensors,
                weight_mean=w.mean(),
                weight_std=w.std() if w.numel() > 1 else 0.0,
                weight_min=w.min(),
                weight_max=w.max(),
                weight_ess=w.sum() ** 2 / (w.numel() * (w * w).sum()).clamp_min(torch.finfo(w.dtype).tiny),
                **{f"weight_corr/{k}": _pearson(w, v) for k, v in probes.items()},
            )
        if not self.skip_nonfinite:
            return as_floats(checked)
        try:
            return check_finite(checked, zero=stepping)
        except NonFiniteError:
            assert self.weighter is not None or not saved
            with torch.no_grad():
                for buffer, value in zip(self.weighter.buffers() if saved else [], saved, strict=True):
                    buffer.copy_(value)
            raise


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """The Pearson correlation of two tensors of one shape, over all their elements (0 where either is constant).

    Raises:
        ValueError: the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"a probe must have the weights' shape {tuple(a.shape)}, got {tuple(b.shape)}")
    x, y = a.detach().double().flatten(), b.detach().double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).clamp_min(torch.finfo(torch.float64).tiny)
    return ((x * y).sum() / denom).float()


@dataclass
class _Weights:
    """What one update's weighting produced: w (detached), L_up at θ if known, θ's gradient if the strategy
    computed it, the upper level's metrics, and whether the weighter steps."""

    weights: Tensor
    upper: Tensor | None
    lower_grad: list[Tensor] | None = None
    tensors: dict[str, Tensor | float] = field(default_factory=dict)
    meta: bool = False


def _scaled(g: Tensor, mode: str) -> Tensor:
    """The hypergradient to backpropagate into the weighter: ``g`` (``"exact"``) or g / ‖g‖ (``"unit_norm"``; a zero
    g stays zero)."""
    if mode == "exact":
        return g
    return g / torch.linalg.vector_norm(g).clamp_min(torch.finfo(g.dtype).tiny)


def _snapshot(weighter: nn.Module | None) -> list[Tensor]:
    """Copies of the weighter's parameters before its optimiser steps."""
    assert weighter is not None
    return [p.detach().clone() for p in weighter.parameters()]


def _step_size(before: list[Tensor], weighter: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``weighter_step`` = ‖Δα‖/‖α‖ and ``weighter_step_vs_lr`` = ‖Δα‖/(lr·√P) of the step just taken."""
    params = [p.detach() for p in weighter.parameters()]
    with torch.no_grad():
        delta = torch.stack([torch.linalg.vector_norm(p - b) for p, b in zip(params, before, strict=True)])
        norm = torch.stack([torch.linalg.vector_norm(b) for b in before])
        delta_f, norm_f = torch.stack([delta, norm]).norm(dim=1).tolist()  # one device synchronisation
    count = sum(p.numel() for p in params)
    lr = float(optimizer.param_groups[0]["lr"])
    return {
        "weighter_step": delta_f / norm_f if norm_f > 0 else float("inf"),
        "weighter_step_vs_lr": delta_f / (lr * count**0.5),
    }


def _laid_out_as(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` with ``param``'s strides (itself when they already match).

    A gradient assigned to ``.grad`` skips autograd's layout contract (accumulated gradients take the parameter's
    strides), and a compiled backward may hand back another memory format — a conv weight's gradient channels-last,
    as torch 2.11's inductor did on CUDA — which fused optimisers reject ("must have same dtype, device, and
    layout")."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


def _clip(parameters: Any, max_norm: float | None) -> Tensor | float:
    """The global norm of the gradients of ``parameters`` (a 0-d tensor, not read), clipped to ``max_norm``."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
