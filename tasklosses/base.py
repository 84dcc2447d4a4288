"""The interface of an upper-level, task-aware loss and the registry that selects one by name.

A task loss scores a model's predictions by what they do to a value function: it maps the model's *predicted*
states, the *target* (real or inferred) states and a value function V to one loss per sample, with the leading
shape of the model's per-sample maximum-likelihood loss ℓ (``[B, T]`` for an RSSM, ``[N]`` for a dynamics MLP,
``[E, N]`` for an ensemble).  The bi-level core averages it into L_up; ``Naive`` weighting uses it per sample.

Add your own loss in one file:

    @register_task_loss("my_loss")
    class MyLoss(nn.Module):
        def forward(self, predicted, target, value_fn):
            return (value_fn(predicted) - value_fn(target)).abs()

and select it by name (``make_task_loss("my_loss")``), e.g. from a config field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor

#: A value function: states ``[..., D]`` → values ``[...]`` (a trailing singleton ``[..., 1]`` is accepted and
#: squeezed).  Usually the slow (target) critic, frozen by the caller.
ValueFn = Callable[[Tensor], Tensor]


@runtime_checkable
class TaskLoss(Protocol):
    """An upper-level loss: ``loss(predicted, target, value_fn) -> Tensor`` of per-sample losses.

    Args (of ``__call__``):
        predicted: what the model predicts, states ``[..., D]`` (the prior state of an RSSM, a dynamics model's
            next-state prediction; some losses accept extra leading sample dimensions, see each loss).
        target: the states the prediction is compared with, ``[..., D]`` (the posterior state of an RSSM, the
            real next state).  May depend on θ (the RSSM posterior does); gradients flow into it unless a loss
            says otherwise.
        value_fn: V, see ``ValueFn``.  Its parameters should not require grad (or be ignored by the caller):
            an upper loss trains the model and, through the hypergradient, the weighter, never the critic.

    Returns (of ``__call__``):
        Per-sample losses with the leading shape of the model's per-sample MLE loss (``[...]``), differentiable
        in the model parameters θ through ``predicted`` (and ``target``).  The caller takes the mean for L_up.

    Optional hook: a loss that depends on the states only through their values may also define
    ``value_loss(value_target, value_predicted) -> (loss, normalised_target, normalised_predicted)``, each shaped
    like the values, so that a recipe that needs V anyway (e.g. for its weighter's inputs) evaluates V once.  The
    recipes look the hook up by name; a loss without it is called as above.

    ``isinstance(obj, TaskLoss)`` only checks that ``obj`` is callable (a runtime-checkable protocol checks names,
    not signatures).
    """

    def __call__(self, predicted: Tensor, target: Tensor, value_fn: ValueFn) -> Tensor: ...


F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_task_loss(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Class or factory decorator: make a task loss constructible by ``make_task_loss(name, **kwargs)``.

    Args:
        name: the name a config uses.
        replace: allow overriding an existing registration (e.g. re-running a notebook cell).

    Returns:
        The decorator; it returns the class or factory unchanged.

    Raises:
        ValueError: if ``name`` is not a non-empty string, or is already registered and ``replace`` is False.
        TypeError: (from the decorator) if the decorated object is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task loss name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"task loss {name!r} is already registered (by {_describe(_REGISTRY[name])}); "
            "choose another name or pass replace=True"
        )

    def decorator(factory: F) -> F:
        if not callable(factory):
            raise TypeError(f"register_task_loss({name!r}) decorates a class or factory, got {factory!r}")
        _REGISTRY[name] = factory
        return factory

    return decorator


def make_task_loss(name: str, **kwargs: Any) -> TaskLoss:
    """Build the task loss registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: if no loss is registered under ``name`` (the message lists the known names).
        TypeError: if the factory returns something that is not callable.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(repr(n) for n in available_task_losses()) or "none"
        raise ValueError(f"unknown task loss {name!r}; registered task losses: {known}") from None
    loss = factory(**kwargs)
    if not isinstance(loss, TaskLoss):
        raise TypeError(f"the factory of task loss {name!r} returned a non-callable {type(loss).__name__}")
    return loss


def available_task_losses() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def evaluate_value(value_fn: ValueFn, states: Tensor) -> Tensor:
    """V(states) with the shape checked: ``[..., D]`` → ``[...]`` (a result ``[..., 1]`` is squeezed).

    Raises:
        ValueError: if ``states`` has no feature dimension or V returns another shape.
    """
    if states.dim() == 0:
        raise ValueError("states must have a trailing feature dimension [..., D], got a scalar")
    value = value_fn(states)
    lead = states.shape[:-1]
    if value.shape == (*lead, 1):
        value = value.squeeze(-1)
    if value.shape != lead:
        raise ValueError(
            f"value_fn must map states {tuple(states.shape)} to values {tuple(lead)} "
            f"(or {(*tuple(lead), 1)}), got {tuple(value.shape)}"
        )
    return value
