"""Lower-level maximum-likelihood models that return per-sample losses ℓ[B, T] and the states they produced."""

from worldmodels.base import ModelLoss, WorldModel
from worldmodels.rssm import RSSM, ConvDecoder, ConvEncoder, LayerNormGRUCell, RSSMWorldModel

__all__ = ["RSSM", "ConvDecoder", "ConvEncoder", "LayerNormGRUCell", "ModelLoss", "RSSMWorldModel", "WorldModel"]
