"""What moves: geometry, attention flows, covariance SDEs, signal-propagation maps, observables."""

from .attention import ACTIVATIONS, NORMALIZATIONS, FeedForward, SelfAttention
from .geometry import Euclidean, Sphere, SymmetricMatrices, sphere_expmap, sphere_retract, sphere_tangent
from .init import check_unit, equiangular, from_file, hemisphere, orthogonal, random_rotation, uniform_sphere
from .noisy import NoisyAttention
from .observables import (
    OBSERVABLES,
    cluster_count,
    cluster_count_rank,
    collapse_time,
    consensus_gap,
    energy,
    fraction_close_pairs,
    gram,
    min_inner_product,
    normalized_energy,
    pair_histogram,
    pair_inner_products,
)
from .params import PiecewiseConstant
from . import flow_theory, theory  # scalar predictions: particles.theory.mode_growth_rate, bessel_cluster_count, ...
from .transformer import DirectionRadius, DiscreteTransformer, PreLNFlow
from . import signalprop  # geometric signal propagation (COWSIK): maps, exponents, finite networks
from .signalprop import SignalPropParams
from . import covariance, networks  # covariance SDEs of shaped networks (NOCI, LNR); finite torch networks
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
from .validation import ParameterError

__all__ = [
    "theory",
    "flow_theory",
    "SelfAttention",
    "FeedForward",
    "NoisyAttention",
    "NORMALIZATIONS",
    "ACTIVATIONS",
    "PiecewiseConstant",
    "ParameterError",
    "Sphere",
    "Euclidean",
    "SymmetricMatrices",
    "sphere_tangent",
    "sphere_retract",
    "sphere_expmap",
    "uniform_sphere",
    "orthogonal",
    "equiangular",
    "hemisphere",
    "from_file",
    "check_unit",
    "random_rotation",
    "OBSERVABLES",
    "gram",
    "pair_inner_products",
    "pair_histogram",
    "fraction_close_pairs",
    "cluster_count",
    "cluster_count_rank",
    "energy",
    "normalized_energy",
    "min_inner_product",
    "consensus_gap",
    "collapse_time",
    "DiscreteTransformer",
    "PreLNFlow",
    "DirectionRadius",
    "signalprop",
    "SignalPropParams",
    "covariance",
    "networks",
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
]
