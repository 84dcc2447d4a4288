"""The bi-level core: weighters, normalisers, hypergradient strategies and the bi-level update.

Knows nothing of reinforcement learning and imports none of the other packages of this distribution.
Notation: model parameters θ, weighter parameters α, per-sample lower losses ℓ_i(θ), weights w_i = N_α(features_i),
L_low(θ, w) = (1/N) Σ_i w_i ℓ_i(θ), task-aware upper loss L_up(θ).
"""

from bilevel._autodiff import conjugate_gradient
from bilevel.check import CheckRow, check_hypergradient, finite_difference_gradient, format_report
from bilevel.diagnose import WeightingGain, weighting_gain
from bilevel.factored import FactoredJvp, FactoredJvpAt
from bilevel.functional import hypergradient
from bilevel.guard import NonFiniteError, check_finite
from bilevel.implicit import ImplicitInfo, implicit_hypergradient
from bilevel.normalizers import BatchNormalizer, MovingNormalizer, make_normalizer
from bilevel.strategies import (
    STRATEGY_NAMES,
    BilevelProblem,
    HypergradientResult,
    Implicit,
    Lookahead,
    Naive,
    SameState,
    Strategy,
    Uniform,
    make_strategy,
)
from bilevel.update import BilevelUpdate, LevelOutputs
from bilevel.weighter import MetaWeighter

__all__ = [
    "STRATEGY_NAMES",
    "BatchNormalizer",
    "BilevelProblem",
    "BilevelUpdate",
    "CheckRow",
    "FactoredJvp",
    "FactoredJvpAt",
    "HypergradientResult",
    "Implicit",
    "ImplicitInfo",
    "LevelOutputs",
    "Lookahead",
    "MetaWeighter",
    "MovingNormalizer",
    "Naive",
    "NonFiniteError",
    "SameState",
    "Strategy",
    "Uniform",
    "WeightingGain",
    "check_finite",
    "check_hypergradient",
    "conjugate_gradient",
    "finite_difference_gradient",
    "format_report",
    "hypergradient",
    "implicit_hypergradient",
    "make_normalizer",
    "make_strategy",
    "weighting_gain",
]
