"""An optional extension of the bi-level core: the mixed product J·v through per-sample intermediates.

``bilevel.BilevelUpdate.step`` takes a ``FactoredJvp`` as ``jvp=`` where a model's per-sample losses read the
parameters that carry tangents only through intermediates indexed per sample (a world model's filtered states):
``SameState``'s (1/N) J a then needs a forward-mode pass of those intermediates alone (no decoder JVP) and no
double backward, so the model's forward may be a compiled graph that supports only first-order derivatives.
Nothing else in the core depends on this module's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bilevel import _autodiff as ad


@dataclass
class FactoredJvp:
    """J·v through per-sample intermediates: a forward-mode pass that stops where the per-sample structure begins.

    Where the parameters that carry tangents reach ℓ only through intermediates z = z(θ) read per sample —
    ℓ_i = h_i(z_{·,i}, θ_h), with v = 0 on θ_h (e.g. a world model's decoder and heads under a value-based upper
    loss) — the chain rule gives

        (J v)_i = Σ_k ⟨∂ℓ_i/∂z_{k,i}, (∂z_k/∂θ · v)_i⟩,

    so only θ ↦ z needs a forward-mode pass (a world model's filtering, not its decoder).  The per-sample gradients
    ∂ℓ_i/∂z_{k,i} come free from the backward that θ's own gradient needs: there the cotangent of z_k at sample i is
    (w_i/N) ∂ℓ_i/∂z_{k,i} (ℓ_i reads only sample i of z_k), divided by w_i/N (by one more backward of Σ_i ℓ_i to the
    z_k where some w_i is 0).  ``bilevel.BilevelUpdate.step`` takes one as ``jvp=`` (and binds it with
    ``at``).

    Attributes:
        intermediates: z_k by name, tensors of the forward at θ (its graph), each of shape [*S, ...] with S the shape
            of ℓ.  They must be inputs of h side by side — none computed from another within h's part of the graph
            — and ℓ_i must read z_k only at index i; nothing checks this (a test against the full JVP should).
        tangents: ``(params, tangents) -> {k: ∂z_k/∂θ · v}`` ([*S, ...] each) at ``params`` (all of θ by name) along
            ``tangents`` (a subset of the names, the rest held constant); a name of ``intermediates`` left out has a
            zero tangent.
    """

    intermediates: dict[str, Tensor]
    tangents: Callable[[dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor]]

    def at(self, loss: Tensor, weights: Tensor, params: Sequence[Tensor]) -> FactoredJvpAt:
        """The ``PerSampleJvp`` at the forward that computed ``loss`` (ℓ, shape S) and the intermediates, with
        the lower level's ``weights`` (shape S, detached) and θ (``params``, in the caller's order).

        Raises:
            ValueError: an intermediate whose leading dimensions are not S.
        """
        for k, z in self.intermediates.items():
            if z.shape[: loss.dim()] != loss.shape:
                raise ValueError(
                    f"intermediate {k!r} has shape {tuple(z.shape)}; its leading dimensions must be ℓ's "
                    f"{tuple(loss.shape)}"
                )
        return FactoredJvpAt(self, loss, weights.detach(), list(params))


class FactoredJvpAt:
    """``FactoredJvp`` bound to one forward (``FactoredJvp.at``): ``(params, tangents) -> (ℓ, J·v)``.

    Its first call runs the lower backward of L_low = (1/N) Σ_i w_i ℓ_i to θ and the intermediates (not keeping the
    graph: compiled graphs with donated buffers allow one backward, so it must come after any other backward through
    the forward, e.g. a = ∇θ L_up's) and keeps θ's gradient in ``lower_grad`` for the caller; where some w_i is 0
    it first backpropagates Σ_i ℓ_i to the intermediates, keeping the graph.

    Raises (from a call):
        ValueError: a tangent whose name or shape is not an intermediate's.
    """

    def __init__(self, spec: FactoredJvp, loss: Tensor, weights: Tensor, params: list[Tensor]) -> None:
        self.spec, self.loss, self.weights, self.params = spec, loss, weights, params
        #: ∇θ L_low in the order of ``params`` once the instance was called, else None
        self.lower_grad: list[Tensor] | None = None
        self._partials: dict[str, Tensor] | None = None

    def _backward(self) -> dict[str, Tensor]:
        """∂ℓ_i/∂z_{k,i} by name (the intermediates that require grad), from the lower backward."""
        loss, weights, shape = self.loss, self.weights, self.loss.shape
        names = [k for k, z in self.spec.intermediates.items() if z.requires_grad]
        zs = [self.spec.intermediates[k] for k in names]
        zero = bool((weights == 0).any())
        # (w_i/N)·∂ℓ_i/∂z_{k,i} / (w_i/N) is undefined where w_i = 0: then one backward of Σ ℓ_i to the z_k first
        direct = ad.grads(loss.sum(), zs, retain_graph=True) if zero else None
        found = ad.grads(ad.lower_objective(loss, weights), [*self.params, *zs])
        self.lower_grad = found[: len(self.params)]
        if direct is None:
            scale = weights / weights.numel()  # ∂L_low/∂ℓ_i = w_i / N
            direct = [
                c / scale.reshape(*shape, *[1] * (c.dim() - len(shape))).to(c.dtype) for c in found[len(self.params) :]
            ]
        return dict(zip(names, direct, strict=True))

    def __call__(self, params: dict[str, Tensor], tangents: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self._partials is None:
            self._partials = self._backward()
        loss, intermediates = self.loss, self.spec.intermediates
        jv = torch.zeros(loss.shape, dtype=loss.dtype, device=loss.device)
        for k, tz in self.spec.tangents(params, tangents).items():
            if k not in intermediates:
                raise ValueError(f"tangent {k!r} is not one of the intermediates {sorted(intermediates)}")
            if tz.shape != intermediates[k].shape:
                raise ValueError(
                    f"tangent {k!r} has shape {tuple(tz.shape)}, its intermediate {tuple(intermediates[k].shape)}"
                )
            if k in self._partials:  # (J v)_i = Σ_k ⟨∂ℓ_i/∂z_{k,i}, (∂z_k/∂θ · v)_i⟩
                jv = jv + (self._partials[k] * tz).reshape(*loss.shape, -1).sum(-1).to(loss.dtype)
        return loss.detach(), jv
