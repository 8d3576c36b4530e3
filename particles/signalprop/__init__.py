"""Geometric signal propagation in deep random transformers (Cowsik et al., arXiv:2403.02579).

Large-width maps of the token Gram matrix through attention and MLP sublayers,
their fixed points and Lyapunov exponents, and finite random transformers in torch
to check them against (MODELS.md section 3).

Modules: ``config`` (hyperparameters and conventions), ``kernels`` (erf/tanh/relu Gaussian
kernels), ``overlaps`` (Monte Carlo attention moments, cached c-grid), ``maps`` ((q, p)
maps), ``gram`` (general n x n Gram map), ``gradients`` (perturbation second-moment map),
``exponents`` (fixed points, lambda_a, lambda_g), and, importing torch: ``finite``
(random transformers with forward-mode tangents), ``states`` (simplex / uneven starts,
Hutchinson probes), ``measure`` (exponents measured on finite networks), ``trainable``
(the trainable reference transformer).
"""

from .config import PHIS, RESIDUALS, SignalPropParams
from .exponents import (
    Exponents,
    SimplexFixedPoint,
    angle_exponent,
    collapse_fixed_point,
    exponents,
    mean_mode_exponent,
    simplex_fixed_point,
)
from .gradients import gradient_step, gradient_transfer, hutchinson_slope
from .gram import gram_jacobian_eigenvalues, gram_map, iterate_gram
from .kernels import dkernel, kernel, second_moment, slope_moment
from .maps import (
    MapCoefficients,
    MapTrajectory,
    attention_map,
    block_map,
    coefficients,
    iterate_map,
    mlp_map,
)
from .overlaps import AttentionMoments, OverlapTable, attention_moments, overlap_table

__all__ = [
    "PHIS",
    "RESIDUALS",
    "AttentionMoments",
    "Exponents",
    "MapCoefficients",
    "MapTrajectory",
    "OverlapTable",
    "SignalPropParams",
    "SimplexFixedPoint",
    "angle_exponent",
    "attention_map",
    "attention_moments",
    "block_map",
    "coefficients",
    "collapse_fixed_point",
    "dkernel",
    "exponents",
    "gradient_step",
    "gradient_transfer",
    "gram_jacobian_eigenvalues",
    "gram_map",
    "hutchinson_slope",
    "iterate_gram",
    "iterate_map",
    "kernel",
    "mean_mode_exponent",
    "mlp_map",
    "overlap_table",
    "second_moment",
    "simplex_fixed_point",
    "slope_moment",
]
