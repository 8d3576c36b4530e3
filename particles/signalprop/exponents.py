"""Fixed points, their stability, and the Lyapunov exponents lambda_a and lambda_g.

Collapsed fixed point (tokens on a line, c = 1), layer norm and norm-preserving residual:

    q*  = [(1 - alpha_M^2) alpha_A^2 sigma_V^2 + alpha_M^2 q_M] / [1 - (1 - alpha_M^2)(1 - alpha_A^2)]
    q1* = (1 - alpha_A^2) q* + alpha_A^2 sigma_V^2,      q_M = sigma_2^2 E[phi(h)^2], h ~ N(0, sigma_w^2 + sigma_b^2)

Angle exponent (growth of 1 - c per block near collapse):

    e^{lambda_a} = (1 - alpha_A^2) [(1 - alpha_M^2) + alpha_M^2 chi_MLP / q1*],   chi_MLP = sigma_2^2 sigma_w^2 E[phi'(h)^2]

Without layer norm the sublayers see the raw state: chi_MLP is evaluated at
h ~ N(0, sigma_w^2 q1* + sigma_b^2), is not divided by q1*, the attention passes the
mean mode with weight sigma_V^2, and q* solves the collapsed q-map (Poole et al. 2016,
eq. 3, when alpha_A = 0, alpha_M = 1).

Gradient exponents (growth per block of E||J||_F^2 of the end-to-end Jacobian,
natural log): at collapse the token-mean mode grows at lambda_mean and the
token-differential modes at lambda_diff = lambda_a (see :mod:`.gradients`);
E||J_L||_F^2 / (n d) = (1/n) e^{L lambda_mean} + (1 - 1/n) e^{L lambda_diff}, so
lambda_g = max(lambda_mean, lambda_diff) there. Since
e^{lambda_mean - lambda_diff} = 1 + alpha_A^2 sigma_V^2 / ((1 - alpha_A^2) q*) > 1,
lambda_g > lambda_a whenever attention is present. lambda_g at the *attractor*
(default) evaluates the same growth rate at the fixed point the forward signal
actually reaches from c0: the collapsed point in the ordered phase, the regular
simplex in the chaotic phase, where the modes mix (2 x 2 transfer matrix).

References
----------
MODELS.md section 3 ("Exponents at collapse"); Cowsik et al., arXiv:2403.02579,
sections 3.3 (fixed points, angle exponent) and 3.4 (gradient exponent);
Poole et al., NIPS 2016, eqs. 3, 7 (q-map, chi_1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from integrators.validation import (
    ParameterError,
    check_choice,
    check_in_range,
    check_positive_int,
)
from .config import SignalPropParams
from .gradients import gradient_transfer
from .kernels import second_moment, slope_moment
from .maps import DEFAULT_SAMPLES, MapCoefficients, block_map, coefficients
from .overlaps import OverlapTable

__all__ = [
    "GRADIENT_NORMS",
    "GRADIENT_STATES",
    "Exponents",
    "SimplexFixedPoint",
    "angle_exponent",
    "collapse_fixed_point",
    "exponents",
    "mean_mode_exponent",
    "simplex_fixed_point",
]

GRADIENT_STATES = ("attractor", "collapse")
GRADIENT_NORMS = ("squared", "frobenius")


def _no_plain(co: MapCoefficients) -> None:
    if co.residual == "plain":
        raise ParameterError(
            "residual", "the plain residual (beta = 1) has no finite fixed point: q grows with depth; use iterate_map"
        )


def collapse_fixed_point(params: SignalPropParams | MapCoefficients, max_iter: int = 10_000):
    """(q*, q1*): residual-stream norm at the collapsed fixed point, before and after attention.

    Without layer norm the collapsed q-map is iterated from q = 1; a divergent map gives inf.
    With alpha_A = alpha_M = 0 every q is fixed; q* = 1 is returned.
    """
    co = coefficients(params)
    _no_plain(co)
    if co.layer_norm:
        q_m = co.sigma_2**2 * second_moment(co.phi, co.sigma_w**2 + co.sigma_b**2)
        num = co.beta_M**2 * co.alpha_A**2 * co.sigma_V**2 + co.alpha_M**2 * q_m
        den = 1.0 - co.beta_M**2 * co.beta_A**2
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
        q = np.broadcast_to(q, co.shape).astype(np.float64)
        return q, co.beta_A**2 * q + co.alpha_A**2 * co.sigma_V**2
    q = np.ones(co.shape)
    for _ in range(max_iter):
        qy = (co.beta_A**2 + co.alpha_A**2 * co.sigma_V**2) * q
        q_new = co.beta_M**2 * qy + co.alpha_M**2 * co.sigma_2**2 * second_moment(co.phi, co.sigma_w**2 * qy + co.sigma_b**2)
        q_new = np.where(np.isfinite(q_new) & (q_new < 1e150), q_new, np.inf)
        done = np.all((np.abs(q_new - q) <= 1e-14 * np.maximum(1.0, np.abs(q_new))) | ~np.isfinite(q_new))
        q = q_new
        if done:
            break
    return q, (co.beta_A**2 + co.alpha_A**2 * co.sigma_V**2) * q


def _chi_over_q(co: MapCoefficients, q1):
    """chi_MLP / q1* (layer norm) or chi_MLP at the collapsed MLP input (no layer norm)."""
    chi = co.sigma_2**2 * co.sigma_w**2
    if co.layer_norm:
        return chi * slope_moment(co.phi, co.sigma_w**2 + co.sigma_b**2) / q1
    return chi * slope_moment(co.phi, co.sigma_w**2 * q1 + co.sigma_b**2)


def angle_exponent(params: SignalPropParams | MapCoefficients) -> np.ndarray:
    """lambda_a: log growth factor of 1 - c per block at the collapsed fixed point (closed form)."""
    co = coefficients(params)
    _, q1 = collapse_fixed_point(co)
    with np.errstate(divide="ignore"):
        return np.log(co.beta_A**2 * (co.beta_M**2 + co.alpha_M**2 * _chi_over_q(co, q1)))


def mean_mode_exponent(params: SignalPropParams | MapCoefficients) -> np.ndarray:
    """lambda_mean: log growth of the token-mean perturbation mode per block at collapse."""
    co = coefficients(params)
    q, q1 = collapse_fixed_point(co)
    att = co.beta_A**2 + co.alpha_A**2 * co.sigma_V**2 * (1.0 / q if co.layer_norm else 1.0)
    return np.log(att * (co.beta_M**2 + co.alpha_M**2 * _chi_over_q(co, q1)))


@dataclass(frozen=True)
class SimplexFixedPoint:
    """Attractor of the symmetric map reached from c0, with the 2 x 2 Jacobian's eigenvalues."""

    q: np.ndarray
    c: np.ndarray
    converged: np.ndarray
    collapsed: np.ndarray
    jacobian_eigenvalues: np.ndarray  # (..., 2) complex, of d(q', p')/d(q, p)

    @property
    def stable(self) -> np.ndarray:
        return np.max(np.abs(self.jacobian_eigenvalues), axis=-1) < 1.0


def _map_jacobian(co, q, p, table, samples, rel: float = 1e-6) -> np.ndarray:
    """d(q', p')/d(q, p) by central differences (the map is smooth: common random numbers)."""
    h = rel * q
    cols = []
    for eq, ep in ((1.0, 0.0), (0.0, 1.0)):
        *_, qa, pa = block_map(co, q + eq * h, p + ep * h, table, samples)
        *_, qb, pb = block_map(co, q - eq * h, p - ep * h, table, samples)
        cols.append(np.stack([(qa - qb) / (2 * h), (pa - pb) / (2 * h)], axis=-1))
    return np.stack(cols, axis=-1)


def _newton(co, q, p, active, table, samples, max_newton: int, tol: float):
    """Newton steps on (q, p) -> block_map(q, p) - (q, p) for the ``active`` points.

    A step that does not reduce the residual, or that leaves the valid Gram region, is
    replaced by a plain map iteration (so the iteration never leaves the basin it is in).
    """
    for _ in range(max_newton):
        if not np.any(active):
            break
        *_, qn, pn = block_map(co, q, p, table, samples)
        res = np.stack([qn - q, pn - p], axis=-1)
        jac = _map_jacobian(co, q, p, table, samples) - np.eye(2)
        with np.errstate(all="ignore"):
            step = np.linalg.solve(np.where(np.isfinite(jac), jac, 0.0) + 1e-300 * np.eye(2), -res[..., None])[..., 0]
        q_try, p_try = q + step[..., 0], p + step[..., 1]
        valid = np.isfinite(q_try) & (q_try > 0) & (p_try < q_try * (1 - 1e-12)) & (p_try > -q_try / (co.n - 1))
        *_, qt, pt = block_map(co, np.where(valid, q_try, q), np.where(valid, p_try, p), table, samples)
        better = valid & (np.abs(qt - q_try) + np.abs(pt - p_try) < np.abs(res).sum(-1))
        use_newton = active & better
        use_plain = active & ~better
        q = np.where(use_newton, q_try, np.where(use_plain, qn, q))
        p = np.where(use_newton, p_try, np.where(use_plain, pn, p))
        active = active & (np.abs(res).sum(-1) > tol * q)
    return q, p, active


def simplex_fixed_point(
    params: SignalPropParams | MapCoefficients,
    c0: float = 0.0,
    max_iter: int = 300,
    tol: float = 1e-11,
    table: OverlapTable | None = None,
    samples: int = DEFAULT_SAMPLES,
    max_newton: int = 40,
) -> SimplexFixedPoint:
    """Attractor of the symmetric map from (q*, c0 q*), vectorised over the grid.

    ``max_iter`` plain iterations select the basin; points still moving then get
    safeguarded Newton steps (quadratic convergence where plain iteration crawls, near
    the order-chaos boundary). ``collapsed`` marks points whose attractor is the line
    c = 1 (including those still creeping towards it when lambda_a < 0); the Jacobian
    eigenvalues are evaluated at the returned state (at c = 1 - 1e-5 for collapsed points).
    """
    co = coefficients(params)
    _no_plain(co)
    check_in_range("c0", c0, -1.0 / (co.n - 1), 1.0)
    max_iter = check_positive_int("max_iter", max_iter)
    q_star, _ = collapse_fixed_point(co)
    q = np.where(np.isfinite(q_star), q_star, 1.0)
    p = c0 * q
    lam_a = np.broadcast_to(angle_exponent(co), q.shape)
    moving = np.ones(q.shape, dtype=bool)
    for _ in range(max_iter):
        *_, q_new, p_new = block_map(co, q, p, table, samples)
        step = np.abs(p_new / q_new - p / q) + np.abs(q_new - q) / q_new
        moving = step > tol
        q, p = q_new, p_new
        if not np.any(moving):
            break
    heading_to_line = (p / q > 1.0 - 1e-6) | (moving & (lam_a < 0) & (p / q > c0))
    qn, pn, still = _newton(co, q, p, moving & ~heading_to_line, table, samples, max_newton, tol)
    # Newton may land on the unstable line when lambda_a > 0: keep the plain iterate there
    bad = (pn / qn > 1.0 - 1e-9) & (lam_a > 0)
    q, p = np.where(bad, q, qn), np.where(bad, p, pn)
    moving = np.where(bad, True, np.where(heading_to_line, moving, still))
    c = p / q
    collapsed = (c > 1.0 - 1e-8) | (moving & heading_to_line)
    c = np.where(collapsed, 1.0, c)
    q = np.where(collapsed, np.where(np.isfinite(q_star), q_star, 1.0), q)
    eig = np.linalg.eigvals(_map_jacobian(co, q, np.minimum(c, 1.0 - 1e-5) * q, table, samples))
    return SimplexFixedPoint(q, c, ~moving, collapsed, eig)


@dataclass(frozen=True)
class Exponents:
    """Lyapunov exponents per block (natural log). Arrays over the coefficient grid.

    lambda_a : angle exponent at collapse (closed form).
    lambda_mean, lambda_diff : token-mean / token-differential gradient modes at collapse
        (lambda_diff = lambda_a for ``gradient_norm="squared"``).
    lambda_g : growth rate of E||J||_F^2 (or E||J||_F, see ``gradient_norm``) at ``state``.
    modes : (..., 2) growth rates of the two eigenmodes of the transfer matrix at ``state``.
    c_state, q_state : forward state where lambda_g was evaluated.
    """

    lambda_a: np.ndarray
    lambda_mean: np.ndarray
    lambda_diff: np.ndarray
    lambda_g: np.ndarray
    modes: np.ndarray
    c_state: np.ndarray
    q_state: np.ndarray
    converged: np.ndarray
    state: str
    gradient_norm: str


def exponents(
    params: SignalPropParams | MapCoefficients,
    state: str = "attractor",
    gradient_norm: str = "squared",
    c0: float = 0.0,
    table: OverlapTable | None = None,
    samples: int = DEFAULT_SAMPLES,
    max_iter: int = 300,
) -> Exponents:
    """lambda_a, both gradient modes at collapse, and lambda_g.

    Parameters
    ----------
    state : "attractor" (default): lambda_g at the fixed point reached from c0 (collapse in
        the ordered phase, the regular simplex in the chaotic phase); "collapse": at c = 1.
    gradient_norm : "squared" (default): growth rate of E||J||_F^2 per block (the paper's
        quantity); "frobenius": half of it, the growth rate of the root mean square.
    """
    check_choice("state", state, GRADIENT_STATES)
    check_choice("gradient_norm", gradient_norm, GRADIENT_NORMS)
    co = coefficients(params)
    lam_a = np.broadcast_to(angle_exponent(co), co.shape)
    lam_mean = np.broadcast_to(mean_mode_exponent(co), co.shape)
    q_c, _ = collapse_fixed_point(co)
    q_c = np.broadcast_to(q_c, co.shape)
    if state == "collapse":
        q_s, c_s, conv = q_c, np.ones(co.shape), np.ones(co.shape, dtype=bool)
    else:
        fp = simplex_fixed_point(co, c0=c0, table=table, samples=samples, max_iter=max_iter)
        q_s, c_s, conv = fp.q, fp.c, fp.converged | fp.collapsed
    T = gradient_transfer(co, q_s, c_s * q_s, table, samples)
    eig = np.linalg.eigvals(T)
    with np.errstate(divide="ignore"):
        modes = np.log(np.abs(eig))
    modes = np.sort(modes, axis=-1)
    lam_g = modes[..., -1]
    lam_diff = lam_a.copy()
    if gradient_norm == "frobenius":
        lam_mean, lam_diff, lam_g, modes = lam_mean / 2, lam_diff / 2, lam_g / 2, modes / 2
    return Exponents(lam_a, lam_mean, lam_diff, lam_g, modes, c_s, q_s, conv, state, gradient_norm)
