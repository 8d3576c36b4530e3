"""Scalar ODEs that predict the self-attention flow: equiangular and two-cluster reductions.

Equiangular start (all <x_i, x_j> = g for i != j) stays equiangular and, for SA
(GLPR Thm 6.8, eq. 6.9),

    g' = 2 e^{beta g} (1 - g) ((n - 1) g + 1) / (e^beta + (n - 1) e^{beta g}).

A uniform start in high dimension has g(0) ~ 0 and every pairwise inner product
tracks this g(t) with O(d^{-1/2}) fluctuations (GLPR Thm 6.9); the phase-diagram
boundary of GLPR Fig. 3 is the curve g_beta(t) = 1 - delta.

Two tight clusters of sizes m1, m2 whose centres have inner product rho merge
following (MODELS.md section 1, derived from SA with V = I)

    rho' = (1 - rho^2) [ m2 / (m1 e^{beta (1 - rho)} + m2) + m1 / (m2 e^{beta (1 - rho)} + m1) ],

so the merge time grows like e^{beta (1 - rho0)} (log-linear in beta, slope 1 - rho0).

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, Thm 6.8 (eqs. 6.9-6.10), Thm 6.9, Fig. 3.
Geshkovski, Koubbi, Polyanskiy, Rigollet, "Dynamic metastability in the
self-attention model", arXiv:2410.06833.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from integrators.validation import check_in_range, check_nonnegative, check_positive_int

from scipy.integrate import quad

__all__ = [
    "equiangular_rhs",
    "equiangular_solution",
    "equiangular_hitting_time",
    "two_cluster_rhs",
    "two_cluster_merge_time",
    "log_two_cluster_merge_time",
]


def equiangular_rhs(g, beta: float, n: int):
    """Right-hand side of the SA equiangular ODE (GLPR eq. 6.9), overflow-safe."""
    g = np.asarray(g, dtype=np.float64)
    # divide numerator and denominator by e^{beta g}: no overflow for large beta
    return 2.0 * (1.0 - g) * ((n - 1) * g + 1.0) / (np.exp(beta * (1.0 - g)) + (n - 1))


def equiangular_solution(t, beta: float, n: int, g0: float = 0.0) -> np.ndarray:
    """g(t) of the SA equiangular ODE at the times ``t`` (increasing, from 0), rtol 1e-10."""
    check_nonnegative("beta", beta)
    check_positive_int("n", n, minimum=2)
    check_in_range("g0", g0, -1.0 / (n - 1), 1.0)
    t = np.asarray(t, dtype=np.float64)
    if t.size == 0 or t.max() == 0:
        return np.full(t.shape, float(g0))
    sol = solve_ivp(lambda _, y: equiangular_rhs(y, beta, n), (0.0, float(t.max())), [g0],
                    t_eval=np.sort(t), rtol=1e-10, atol=1e-12, method="LSODA")
    out = np.empty_like(t)
    out[np.argsort(t)] = sol.y[0]
    return out


def _log_passage_time(log_inv_rate, y0: float, level: float) -> float:
    """log of T = int_{y0}^{level} dy / y'(y) by adaptive quadrature.

    ``log_inv_rate(y)`` returns log(1/y'); the integrand is rescaled by its
    value at y0 so that exp(beta ...) factors never overflow, which an
    event-located ODE solve does at large beta.
    """
    if y0 >= level:
        return -np.inf
    ref = float(log_inv_rate(y0))
    if not np.isfinite(ref):
        return np.inf
    val = quad(lambda y: np.exp(log_inv_rate(y) - ref), y0, level, limit=400, epsabs=0.0, epsrel=1e-11)[0]
    return ref + float(np.log(val))


def equiangular_hitting_time(beta: float, n: int, delta: float = 1e-3, g0: float = 0.0) -> float:
    """First t with g(t) = 1 - delta: the phase-diagram boundary (inf from the regular simplex).

    T = int_{g0}^{1-delta} (e^{beta(1-g)} + n - 1) / (2 (1-g)((n-1) g + 1)) dg.
    """
    check_nonnegative("beta", beta)
    check_positive_int("n", n, minimum=2)
    check_in_range("delta", delta, 0.0, 1.0, lo_open=True, hi_open=True)
    check_in_range("g0", g0, -1.0 / (n - 1), 1.0)

    def log_inv_rate(g):
        return np.logaddexp(beta * (1.0 - g), np.log(n - 1)) - np.log(2.0 * (1.0 - g) * ((n - 1) * g + 1.0))

    return float(np.exp(_log_passage_time(log_inv_rate, g0, 1.0 - delta)))


def two_cluster_rhs(rho, beta: float, m1: int, m2: int):
    """rho' for two point clusters of sizes m1, m2 at inner product rho (SA, V = I)."""
    rho = np.asarray(rho, dtype=np.float64)
    e = np.exp(beta * (1.0 - rho))
    return (1.0 - rho**2) * (m2 / (m1 * e + m2) + m1 / (m2 * e + m1))


def log_two_cluster_merge_time(beta: float, m1: int, m2: int, rho0: float, level: float = 0.99) -> float:
    """log of the time for the centres' inner product to go from ``rho0`` to ``level``.

    1/rho' = e^{beta(1-r)} / ((1-r^2)[m2/(m1 + m2 e) + m1/(m2 + m1 e)]) with
    e = e^{-beta(1-r)}, integrated by quadrature in log space: finite for any beta.
    """
    check_nonnegative("beta", beta)
    check_positive_int("m1", m1)
    check_positive_int("m2", m2)
    check_in_range("rho0", rho0, -1.0, 1.0, lo_open=True, hi_open=True)
    check_in_range("level", level, -1.0, 1.0, lo_open=True, hi_open=True)

    def log_inv_rate(r):
        e = np.exp(-beta * (1.0 - r))
        return beta * (1.0 - r) - np.log((1.0 - r**2) * (m2 / (m1 + m2 * e) + m1 / (m2 + m1 * e)))

    return _log_passage_time(log_inv_rate, rho0, level)


def two_cluster_merge_time(beta: float, m1: int, m2: int, rho0: float, level: float = 0.99) -> float:
    """Time for the centres' inner product to go from ``rho0`` to ``level`` (may be inf in float64)."""
    return float(np.exp(log_two_cluster_merge_time(beta, m1, m2, rho0, level)))
