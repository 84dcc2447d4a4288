"""One hypergradient strategy builder for every recipe's config."""

from __future__ import annotations

from bilevel import Strategy, make_strategy
from recipes.run.config import RunConfig

#: ``bilevel.make_strategy``'s keyword → the config field that sets it (a config without the field leaves the
#: keyword at ``make_strategy``'s default).
STRATEGY_FIELDS: dict[str, str] = {
    "steps": "lookahead_steps",
    "method": "same_state_method",
    "convention": "convention",
    "fd_eps": "fd_eps",
    "iters": "implicit_iters",
    "damping": "implicit_damping",
    "normalizer": "normalizer",
}


def strategy_from_config(cfg: RunConfig) -> Strategy:
    """The strategy named by ``cfg.strategy`` (``bilevel.make_strategy``) with η = ``cfg.meta_lr``, or the model's
    learning rate ``cfg.model_lr`` where that is None, and the options of ``STRATEGY_FIELDS`` the config has.

    Raises:
        AttributeError: ``cfg`` has no ``strategy``, ``meta_lr`` or ``model_lr`` field.
        ValueError: from ``bilevel.make_strategy`` (an unknown strategy name).
    """
    fields = type(cfg).model_fields
    options = {key: getattr(cfg, name) for key, name in STRATEGY_FIELDS.items() if name in fields}
    meta_lr = cfg.meta_lr
    return make_strategy(cfg.strategy, lr=meta_lr if meta_lr is not None else cfg.model_lr, **options)
