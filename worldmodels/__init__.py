"""Lower-level maximum-likelihood models that return per-sample losses ℓ[B, T] and the states they produced."""

from worldmodels.base import ModelLoss, WorldModel
from worldmodels.ensemble import GaussianEnsemble, HistoryEnsemble, bootstrap_counts
from worldmodels.fit import fit_to_holdout
from worldmodels.rssm import RSSM, ConvDecoder, ConvEncoder, LayerNormGRUCell, RSSMWorldModel

__all__ = [
    "RSSM",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianEnsemble",
    "HistoryEnsemble",
    "LayerNormGRUCell",
    "ModelLoss",
    "RSSMWorldModel",
    "WorldModel",
    "bootstrap_counts",
    "fit_to_holdout",
]
