"""Covariance SDEs of shaped networks (NOCI, LNR) and the exact finite-width chains they describe."""

from .chain import FiniteWidthChain, wishart_factor
from .correlation import CorrelationSDE, correlation_sde
from .models import (
    COVARIANCE_MODELS,
    Coefficients,
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    ShapedAttentionSDE,
    ShapedBlockSDE,
    ShapedMLPSDE,
    check_covariance,
)
from .one_step import OneStepMoments, one_step_moments
from .problems import ConvergenceProblem, convergence_problem

__all__ = [
    "COVARIANCE_MODELS",
    "Coefficients",
    "ConvergenceProblem",
    "CorrelationSDE",
    "FiniteWidthChain",
    "OneStepMoments",
    "ResidualLinearSDE",
    "ResidualShapedMLPSDE",
    "ShapedAttentionSDE",
    "ShapedBlockSDE",
    "ShapedMLPSDE",
    "check_covariance",
    "convergence_problem",
    "correlation_sde",
    "one_step_moments",
    "wishart_factor",
]
