"""Four candidate definitions of Cowsik's gradient exponent lambda_g, from the large-width maps.

Cowsik et al. (arXiv:2403.02579, section 3.4) define lambda_g as the depth growth rate of
E||J||_F^2 of the end-to-end input-output Jacobian and claim that minimal test loss is
reached where lambda_a and lambda_g vanish together. With attention present the growth
rate at collapse exceeds lambda_a (:mod:`.exponents`), so which quantity is "lambda_g"
decides whether the two zero lines can meet. The candidates (natural log, per block, of
the squared norm):

(i) ``token_mean``: the token-mean perturbation mode at the collapsed fixed point,
    e^{lambda_mean} = [(1 - alpha_A^2) + alpha_A^2 sigma_V^2 / q*] [(1 - alpha_M^2) + alpha_M^2 chi_MLP / q1*]
    (the asymptotic growth of E||J||_F^2 at collapse);
(ii) ``token_diff``: the token-differential modes at collapse, e^{lambda_diff} = e^{lambda_a}
    (identical to lambda_a, so its zero line *is* the order-chaos line);
(iii) ``attractor``: the log spectral radius of the 2 x 2 gradient transfer matrix at the
    forward fixed point reached from c0 (collapse in the ordered phase, the regular simplex
    with cosine c* in the chaotic phase);
(iv) ``readout``: the finite-depth random-readout estimator
    lambda_L = (1/L) log( E_R ||J^T R||^2 / E_R ||R||^2 ),  R with iid N(0, 1) entries,
    for a network started from a regular simplex at (q0, c0) (random embeddings: q0 = 1,
    c0 = 0) and run for L blocks, the forward state moving along its map trajectory. Since
    E_R ||J^T R||^2 = ||J||_F^2 = d tr(G_L) with G_0 = I (:mod:`.gradients`),
    lambda_L = (1/L) log(tr(G_L) / n), with G pushed through the *time-dependent* forward
    state. Public re-implementations use n = 256 tokens and L = 16 blocks [U].

(i)-(iii) are properties of a fixed point; (iv) depends on the start and on L and tends to
(iii) as L grows. Exact relation used in the tests: started at collapse (c0 = 1, q0 = q*),
e^{L lambda_L} = (1/n) e^{L lambda_mean} + (1 - 1/n) e^{L lambda_diff}.

References
----------
Cowsik, Nebabu, Qi, Ganguli, arXiv:2403.02579, sections 3.3-3.4; MODELS.md section 3
("Exponents at collapse": lambda_g per the paper's definition; a finite-depth
random-readout estimate mixes the modes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from integrators.validation import check_in_range, check_positive, check_positive_int
from .config import SignalPropParams
from .exponents import exponents
from .gradients import gradient_step
from .maps import DEFAULT_SAMPLES, MapCoefficients, block_map, coefficients
from .overlaps import OverlapTable

__all__ = ["CANDIDATES", "GradientCandidates", "gradient_candidates", "readout_exponent"]

#: the candidate names, in the order (i)-(iv)
CANDIDATES = ("token_mean", "token_diff", "attractor", "readout")


def readout_exponent(
    params: SignalPropParams | MapCoefficients,
    depth: int = 16,
    c0: float = 0.0,
    q0: float = 1.0,
    table: OverlapTable | None = None,
    samples: int = DEFAULT_SAMPLES,
) -> np.ndarray:
    """Candidate (iv): (1/L) log(tr(G_L) / n) with G_0 = I along the forward map trajectory from (q0, c0 q0).

    Parameters
    ----------
    depth : L, the number of blocks (>= 1).
    c0, q0 : the start, a regular simplex with cosine c0 and squared norm per width q0.
    table, samples : attention moments (see :func:`.maps.block_map`).
    """
    co = coefficients(params)
    depth = check_positive_int("depth", depth)
    check_in_range("c0", c0, -1.0 / (co.n - 1), 1.0)
    check_positive("q0", q0)
    q = np.full(co.shape, float(q0))
    p = c0 * q
    g_d, g_o = np.ones(co.shape), np.zeros(co.shape)
    for _ in range(depth):
        *_, g_d, g_o = gradient_step(co, q, p, g_d, g_o, table, samples)
        *_, q, p = block_map(co, q, p, table, samples)
    with np.errstate(divide="ignore"):
        return np.log(g_d) / depth  # tr(G) / n = g_d: the diagonal entries are all equal


@dataclass(frozen=True)
class GradientCandidates:
    """lambda_a and the four lambda_g candidates over a coefficient grid (natural log, per block).

    token_mean, token_diff, attractor, readout : candidates (i)-(iv), see the module docstring.
    c_star : forward cosine where ``attractor`` is evaluated (1 at collapse).
    converged : the forward fixed point was found.
    depth, c0, q0 : the settings of ``readout``.
    """

    lambda_a: np.ndarray
    token_mean: np.ndarray
    token_diff: np.ndarray
    attractor: np.ndarray
    readout: np.ndarray
    c_star: np.ndarray
    converged: np.ndarray
    depth: int
    c0: float
    q0: float

    def candidate(self, name: str) -> np.ndarray:
        """The candidate called ``name`` (one of :data:`CANDIDATES`)."""
        from integrators.validation import check_choice

        return getattr(self, check_choice("name", name, CANDIDATES))


def gradient_candidates(
    params: SignalPropParams | MapCoefficients,
    depth: int = 16,
    c0: float = 0.0,
    q0: float = 1.0,
    table: OverlapTable | None = None,
    samples: int = DEFAULT_SAMPLES,
) -> GradientCandidates:
    """lambda_a and candidates (i)-(iv) of lambda_g (growth of the squared Jacobian norm)."""
    co = coefficients(params)
    at_collapse = exponents(co, state="collapse", table=table, samples=samples)
    attr = exponents(co, state="attractor", c0=c0, table=table, samples=samples)
    rr = readout_exponent(co, depth, c0, q0, table, samples)
    return GradientCandidates(
        at_collapse.lambda_a, at_collapse.lambda_mean, at_collapse.lambda_diff, attr.lambda_g, rr,
        attr.c_state, attr.converged, depth, float(c0), float(q0),
    )
