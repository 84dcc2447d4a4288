"""The guard every optimiser step of this distribution passes: a non-finite loss or gradient skips the update.

One NaN in one input element makes every gradient NaN, and one optimiser step with NaN gradients writes NaN into
every parameter (and into Adam's moments).  ``check_finite`` is called with the update's losses and gradient
norms *before* any ``optimizer.step()``; if one is NaN or ±inf it clears the gradients of the given optimisers and
raises ``NonFiniteError``, so nothing is written into the model.  The values are the ones the update computes
anyway (the gradient norm that ``clip_grad_norm_`` returns, the loss it logs), so the check costs no extra
device synchronisation where they are already read as Python floats, and one where they are tensors.

Who catches ``NonFiniteError`` decides the policy (the run loop of ``recipes.run.loop`` counts skipped
updates and stops a run after too many in a row).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """An update whose loss or gradient is NaN or infinite; it was skipped before any optimiser step.

    Attributes:
        name: the first non-finite quantity (e.g. ``"lower_loss_unweighted"``, ``"model_grad_norm"``).
        value: its value (``nan``, ``inf`` or ``-inf``).
        values: every checked quantity, as Python floats.
    """

    def __init__(self, name: str, value: float, values: Mapping[str, float] | None = None) -> None:
        self.name, self.value = name, value
        self.values = dict(values or {name: value})
        super().__init__(f"non-finite {name} ({value}); the update was skipped")

    def prefixed(self, prefix: str) -> NonFiniteError:
        """The same error with every name prefixed (e.g. ``"model/"``), for a caller that logs names that way."""
        return NonFiniteError(prefix + self.name, self.value, {prefix + k: v for k, v in self.values.items()})


def as_floats(values: Mapping[str, float | Tensor]) -> dict[str, float]:
    """``values`` as Python floats (a tensor counts as its sum), every tensor read in one device synchronisation."""
    names = [k for k, v in values.items() if isinstance(v, Tensor)]
    floats = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    if names:
        stacked = torch.stack([values[k].detach().float().sum() for k in names])  # type: ignore[union-attr]
        floats.update(zip(names, stacked.tolist(), strict=True))
    return {k: floats[k] for k in values}


def check_finite(
    values: Mapping[str, float | Tensor], *, zero: Iterable[torch.optim.Optimizer] = ()
) -> dict[str, float]:
    """Return ``values`` as Python floats, or raise if one is not finite.

    Args:
        values: named scalars (Python floats, or tensors of any shape: a tensor counts as its sum, so a single
            non-finite element is caught); all tensors are read in one device synchronisation.
        zero: optimisers whose gradients are cleared (``zero_grad(set_to_none=True)``) before raising, so that a
            later ``step()`` cannot apply them.

    Returns:
        ``{name: float}`` in the order given (tensors summed).

    Raises:
        NonFiniteError: naming the first non-finite value.
    """
    out = as_floats(values)
    for name, value in out.items():
        if not math.isfinite(value):
            for opt in zero:
                opt.zero_grad(set_to_none=True)
            raise NonFiniteError(name, value, out)
    return out
