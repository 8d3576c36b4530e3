"""Finite networks at initialisation in torch: shaped / standard transformers and LNR's shaped MLP."""

from particles.shared import NetworkRun, layer_norm
from .architectures import (
    SHAPED_LAYERS,
    ShapedMLP,
    ShapedTransformer,
    StandardTransformer,
)

__all__ = ["SHAPED_LAYERS", "NetworkRun", "ShapedMLP", "ShapedTransformer", "StandardTransformer", "layer_norm"]
