"""attnflow: transformers as interacting particle systems, one import for the public API.

``import attnflow as af`` gives the models, the initial conditions, the observables and
the solver in one namespace::

    import attnflow as af
    x0 = af.uniform_sphere(batch=4, n=16, d=3, seed=0)
    sol = af.solve(af.SelfAttention(beta=4.0), x0, t_end=5.0, dt=0.05, method="rk4")

The three packages stay importable on their own, and the names here are theirs:
:mod:`particles` (what moves: the attention flow on the sphere, the covariance SDEs of
shaped transformers, signal propagation, finite networks), :mod:`integrators` (how it
moves: steppers, Brownian increments, backends, :func:`solve`) and :mod:`studies` (the
command line, the HDF5 store, sweeps, studies and figures; not imported here).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from integrators import (
    BACKENDS,
    STEPPERS,
    BrownianIncrements,
    NumbaBackend,
    NumpyBackend,
    PIController,
    Solution,
    Stepper,
    TorchBackend,
    get_backend,
    get_stepper,
    solve,
)
from particles import (
    OBSERVABLES,
    CorrelationSDE,
    FeedForward,
    FiniteWidthChain,
    NoisyAttention,
    ParameterError,
    PiecewiseConstant,
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    SelfAttention,
    ShapedAttentionSDE,
    ShapedBlockSDE,
    ShapedMLP,
    ShapedMLPSDE,
    ShapedTransformer,
    SignalPropParams,
    StandardTransformer,
    Sphere,
    SymmetricMatrices,
    cluster_count,
    collapse_time,
    covariance,
    energy,
    equiangular,
    flow_theory,
    fraction_close_pairs,
    hemisphere,
    min_inner_product,
    networks,
    normalized_energy,
    orthogonal,
    pair_inner_products,
    signalprop,
    sphere_retract,
    sphere_tangent,
    theory,
    uniform_sphere,
)
from particles.covariance import check_covariance, correlation_sde
from particles.signalprop import block_map, exponents, iterate_map, simplex_fixed_point

try:
    __version__: str = _version("attnflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    # integrators: how it moves
    "solve",
    "Solution",
    "STEPPERS",
    "Stepper",
    "get_stepper",
    "BrownianIncrements",
    "PIController",
    "BACKENDS",
    "get_backend",
    "NumpyBackend",
    "NumbaBackend",
    "TorchBackend",
    # the attention flow on the sphere
    "SelfAttention",
    "FeedForward",
    "NoisyAttention",
    "PiecewiseConstant",
    "Sphere",
    "SymmetricMatrices",
    "sphere_tangent",
    "sphere_retract",
    "uniform_sphere",
    "orthogonal",
    "equiangular",
    "hemisphere",
    "OBSERVABLES",
    "cluster_count",
    "energy",
    "normalized_energy",
    "fraction_close_pairs",
    "min_inner_product",
    "pair_inner_products",
    "collapse_time",
    "flow_theory",
    "theory",
    # covariance SDEs of shaped transformers, finite networks
    "covariance",
    "ShapedBlockSDE",
    "ShapedAttentionSDE",
    "ShapedMLPSDE",
    "ResidualShapedMLPSDE",
    "ResidualLinearSDE",
    "CorrelationSDE",
    "correlation_sde",
    "check_covariance",
    "FiniteWidthChain",
    "networks",
    "ShapedTransformer",
    "ShapedMLP",
    "StandardTransformer",
    # geometric signal propagation
    "signalprop",
    "SignalPropParams",
    "block_map",
    "iterate_map",
    "exponents",
    "simplex_fixed_point",
    # errors
    "ParameterError",
]
