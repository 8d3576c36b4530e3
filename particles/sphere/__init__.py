"""The self-attention flow on the sphere (GLPR; META): tokens x_i on S^{d-1}.

Modules: ``attention`` (the SA / USA field: beta, Q, K, V, heads, feed-forward term,
causal mask), ``noisy`` (the field plus isotropic noise), ``geometry`` (tangent projection,
retraction, exponential map: the functions the driver applies), ``init`` (initial states),
``params`` (time-dependent parameters), ``observables`` (clusters, energies, pair statistics),
``theory`` and ``flow_theory`` (scalar predictions: mode growth, Bessel cluster counts,
equiangular ODEs, merge times), ``transformer`` (the discrete post-LN / pre-LN transformer).
The kernels behind the field are private: ``_numba_kernels`` and ``_numba_blocks`` (Numba),
``_fused`` (fused Euler + renormalise steps for numba and torch), ``_numba_tools``.
"""

from . import flow_theory, theory
from .attention import ACTIVATIONS, NORMALIZATIONS, FeedForward, SelfAttention
from .geometry import Sphere, sphere_expmap, sphere_retract, sphere_tangent
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
from .transformer import DirectionRadius, DiscreteTransformer, PreLNFlow

__all__ = [
    "theory",
    "flow_theory",
    "SelfAttention",
    "FeedForward",
    "NoisyAttention",
    "NORMALIZATIONS",
    "ACTIVATIONS",
    "PiecewiseConstant",
    "Sphere",
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
]
