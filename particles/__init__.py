"""What moves, one folder per model family.

* :mod:`particles.sphere` -- the self-attention flow on the sphere (GLPR, META);
* :mod:`particles.covariance` -- covariance SDEs of shaped transformers (NOCI, LNR);
* :mod:`particles.networks` -- the finite torch networks those SDEs describe;
* :mod:`particles.signalprop` -- geometric signal propagation (COWSIK): maps, exponents,
  finite random transformers.

The flat namespace below re-exports each family's public names.
"""

import sys as _sys

from integrators.spaces import Euclidean, SymmetricMatrices
from integrators.validation import ParameterError

from . import covariance, networks, signalprop, sphere
from .covariance import (
    CorrelationSDE,
    FiniteWidthChain,
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    ShapedAttentionSDE,
    ShapedBlockSDE,
    ShapedMLPSDE,
)
from .networks import ShapedMLP, ShapedTransformer, StandardTransformer
from .signalprop import SignalPropParams
from .sphere import *  # noqa: F403  (the sphere's __all__)
from .sphere import flow_theory, theory

# ``import particles.sphere.theory`` keeps working: the scalar predictions moved into the sphere family.
_sys.modules.setdefault(__name__ + ".theory", theory)
_sys.modules.setdefault(__name__ + ".flow_theory", flow_theory)

__all__ = [
    # the families
    "sphere",
    "covariance",
    "networks",
    "signalprop",
    # shared
    "ParameterError",
    "Euclidean",
    "SymmetricMatrices",
    # covariance SDEs and finite networks
    "ShapedBlockSDE",
    "ShapedAttentionSDE",
    "ShapedMLPSDE",
    "ResidualShapedMLPSDE",
    "ResidualLinearSDE",
    "CorrelationSDE",
    "FiniteWidthChain",
    "ShapedTransformer",
    "StandardTransformer",
    "ShapedMLP",
    "SignalPropParams",
    # the sphere's public names, flat
    *sphere.__all__,
]
