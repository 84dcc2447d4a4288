"""V-VAML, TEMPO's task-aware loss for latent-state models (Deng et al., TEMPO, eq. 4 and §2.3)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bilevel.normalizers import make_normalizer
from tasklosses.base import ValueFn, evaluate_value, register_task_loss


@register_task_loss("vvaml")
class VVAML(nn.Module):
    """Variational VAML: the squared disparity of normalised posterior and prior state values, per time step.

    TEMPO eq. 4 (and the upper level of eq. 6), per sample:

        L_t = | V̄(s_t^post) − V̄(s_t^prior) |²,    V̄ = Norm(V)

    with V the (slow/target) critic in the RSSM's latent space and ``Norm`` applied to the *set*
    {V(s_t^post), V(s_t^prior)} (TEMPO Algorithm 1, line 5; §2.3: without it the weighter can lower L_up by
    shrinking every weight while values grow).  L_up = mean_t L_t.

    Normalisation choice.  Post and prior values are normalised *jointly*: one mean and one variance over all
    2·B·T values of the concatenation ``[V_post, V_prior]``, exactly as the official TEMPO code does (it
    concatenates the two value tensors and applies one Keras ``BatchNormalization`` channel without affine
    parameters, in training mode, eps = 1e-3).  Separate statistics per set would let a constant offset between
    posterior and prior values vanish, which is precisely a value disparity the loss must see.  With shared
    statistics the mean cancels and ``L_t = (V_post,t − V_prior,t)² / (σ² + eps)``; σ² is

    * ``normalizer="batch"`` (default, the official code's choice): the variance of the current batch, with
      gradients flowing through it (``bilevel.BatchNormalizer``).  L_t then depends (weakly) on every value of
      the batch, and the loss is invariant to an affine change ``a·V + b`` (a > 0) of the critic up to eps.
    * ``normalizer="moving"`` (the paper text's "moving mean and variance"): an exponential moving variance
      (``bilevel.MovingNormalizer``), a constant for autograd, updated from the detached joint batch at every
      call in training mode and frozen in eval mode.  Its statistics are buffers of this module, so they are
      saved in checkpoints.  Put the module in eval mode for hypergradient checks (calls must be deterministic).
      Every call in training mode counts, including the virtual forwards of a ``Lookahead`` strategy inside
      ``bilevel.BilevelUpdate`` (``SameState`` reuses the one real forward, so the statistics move once per
      step).

    Gradients flow into both value inputs (the posterior and the prior state both depend on θ); the critic is
    frozen by the caller.

    Args:
        normalizer: ``"batch"`` or ``"moving"``.
        momentum: β of the moving normaliser (ignored by ``"batch"``).
        eps: added to the variance (Keras default 1e-3).

    Raises:
        ValueError: on an unknown ``normalizer`` or a ``momentum`` outside (0, 1].

    Shapes:
        ``forward(predicted [..., F], target [..., F], value_fn)`` → ``[...]`` (e.g. features ``[B, T, F]`` →
        ``[B, T]``); ``from_values`` ``([...], [...])`` → ``[...]``.
    """

    def __init__(
        self, normalizer: Literal["batch", "moving"] = "batch", *, momentum: float = 0.01, eps: float = 1e-3
    ) -> None:
        super().__init__()
        self.kind = normalizer
        self.normalizer = make_normalizer(normalizer, momentum=momentum, eps=eps)

    def forward(self, predicted: Tensor, target: Tensor, value_fn: ValueFn) -> Tensor:
        """Per-step V-VAML from latent features: ``predicted`` = prior features, ``target`` = posterior features.

        Args:
            predicted: prior features (``h, s^prior``) ``[..., F]``.
            target: posterior features (``h, s^post``) ``[..., F]``, same shape.
            value_fn: V on features, ``[..., F] -> [...]``.

        Returns:
            ``|V̄(target) − V̄(predicted)|²``, shape ``[...]``.

        Raises:
            ValueError: if the shapes differ or ``value_fn`` returns the wrong shape.
        """
        if predicted.shape != target.shape:
            raise ValueError(
                f"prior features {tuple(predicted.shape)} and posterior features "
                f"{tuple(target.shape)} must have the same shape"
            )
        return self.from_values(evaluate_value(value_fn, target), evaluate_value(value_fn, predicted))

    def from_values(self, value_post: Tensor, value_prior: Tensor) -> Tensor:
        """Per-step V-VAML from values already computed: ``|V̄_post − V̄_prior|²``, shape of the inputs.

        Use this when the values are needed elsewhere too (the TEMPO weighter's inputs, eq. 5).

        Raises:
            ValueError: if the shapes differ.
        """
        post, prior = self.normalize(value_post, value_prior)
        return (post - prior).pow(2)

    def value_loss(self, value_target: Tensor, value_predicted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The optional task-loss hook for losses of the values alone (see ``tasklosses.TaskLoss``): the
        per-step loss and the normalised values, from values the caller computed anyway.

        One normaliser update serves both (TEMPO feeds the normalised values to its weighter, eq. 5).

        Returns:
            ``(|V̄_post − V̄_prior|², V̄_post, V̄_prior)``, each of the inputs' shape.

        Raises:
            ValueError: if the shapes differ.
        """
        post, prior = self.normalize(value_target, value_predicted)
        return (post - prior).pow(2), post, prior

    def normalize(self, value_post: Tensor, value_prior: Tensor) -> tuple[Tensor, Tensor]:
        """``Norm`` of Algorithm 1, line 5: both value tensors normalised with shared statistics.

        In training mode a moving normaliser updates its statistics here, once per call.  To get normalised
        values (e.g. as weighter inputs, as the official code does) *and* the loss from one update, call this once
        and square the difference yourself.

        Raises:
            ValueError: if the shapes differ.
        """
        if value_post.shape != value_prior.shape:
            raise ValueError(
                f"value_post {tuple(value_post.shape)} and value_prior {tuple(value_prior.shape)} "
                "must have the same shape"
            )
        joint = self.normalizer(torch.stack([value_post, value_prior]))
        return joint[0], joint[1]

    def extra_repr(self) -> str:
        return f"normalizer={self.kind!r}"
