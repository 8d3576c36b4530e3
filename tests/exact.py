"""Problems with exact (or scalar-ODE) solutions, in one place.

References: GLPR = Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp


def equiangular_rhs(normalization: str, beta: float, n: int):
    """GLPR Thm 6.8, eqs. (6.9)-(6.10): g' for the common inner product g(t)."""

    def sa(t, g):
        return 2 * np.exp(beta * g) * (1 - g) * ((n - 1) * g + 1) / (np.exp(beta) + (n - 1) * np.exp(beta * g))

    def usa(t, g):
        return (2 / n) * np.exp(beta * g) * (1 - g) * ((n - 1) * g + 1)

    return {"sa": sa, "usa": usa}[normalization]


def equiangular_g(normalization: str, beta: float, n: int, g0: float, times) -> np.ndarray:
    """g(t) at ``times`` from the scalar ODE solved by scipy at rtol 1e-11."""
    times = np.asarray(times, dtype=float)
    sol = solve_ivp(
        equiangular_rhs(normalization, beta, n), (0.0, float(times[-1])), [g0], t_eval=times, rtol=1e-11, atol=1e-13, method="DOP853"
    )
    return sol.y[0]


def g_beta0(t, n: int) -> np.ndarray:
    """beta = 0, g0 = 0: g(t) = (e^{2t} - 1)/(e^{2t} + n - 1)."""
    e = np.exp(2 * np.asarray(t, dtype=float))
    return (e - 1) / (e + n - 1)


def two_particle_rho(normalization: str, beta: float, rho0: float, times) -> np.ndarray:
    """Two tokens: SA rho' = 2(1-rho^2)/(1+e^{beta(1-rho)}); USA rho' = e^{beta rho}(1-rho^2)."""

    def rhs(t, r):
        if normalization == "sa":
            return 2 * (1 - r**2) / (1 + np.exp(beta * (1 - r)))
        return np.exp(beta * r) * (1 - r**2)

    times = np.asarray(times, dtype=float)
    sol = solve_ivp(rhs, (0.0, float(times[-1])), [rho0], t_eval=times, rtol=1e-11, atol=1e-13, method="DOP853")
    return sol.y[0]


def pair_with_inner_product(rho0: float, d: int) -> np.ndarray:
    """Two unit vectors in R^d with <x1, x2> = rho0, shape (1, 2, d)."""
    x = np.zeros((1, 2, d))
    x[0, 0, 0] = 1.0
    x[0, 1, 0] = rho0
    x[0, 1, 1] = np.sqrt(1 - rho0**2)
    return x
