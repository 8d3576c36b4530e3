"""Scalar predictions for the attention flow: mean-field modes, cluster heuristics, staircases.

Closed forms and heuristics that tests and studies compare simulations with.
The equiangular ODE (GLPR Thm 6.8) and the two-cluster ODE and merge time live
in :mod:`particles.sphere.flow_theory`; this module adds what is derived here:

* mean field on the circle, linearised at the uniform law: the Fourier mode
  e^{ik theta} of the density grows at the rate
  lambda_k = k^2 I_k(beta) / (beta I_0(beta))  (SA),  k^2 I_k(beta) / beta  (USA),
  so the fastest mode, argmax_k k^2 I_k(beta) ~ sqrt(2 beta), is the
  heuristic number of clusters from a uniform start (MODELS.md section 1 [D]);
* beta = 0 on the circle: x_i' = P_{x_i}(mean) is the Kuramoto model of
  identical oscillators with unit coupling, and a wrapped-Cauchy start stays
  wrapped Cauchy (Ott-Antonsen manifold) with order parameter r(t):
  r' = (r - r^3)/2, i.e. r^2 = r0^2 e^t / (1 - r0^2 + r0^2 e^t);
* the META energy staircase: plateaus at sum_q (m_q/n)^2, a merge of sizes
  a, b adds 2ab/n^2; the normalised energy of two point clusters;
* the merge time of two point clusters for large beta (Laplace's method on
  the two-cluster ODE): T ~ e^{beta(1-rho0)} / (beta (1-rho0^2)(m1/m2 + m2/m1));
* the flow without layer norm (EMERGE): the rescaled tokens z_i = e^{-tV} x_i
  and the top (left) eigendirection of V on which they form hyperplanes.

Derivations (mode rates): with f = 1/(2 pi) + eps e^{ik theta}, the USA
velocity is v = eps e^{ik theta} 2 pi i (k/beta) I_k(beta) (integrate
e^{beta cos psi} sin psi sin(k psi) by parts), and d_t f = -d_theta(f v)
gives the rate k^2 I_k(beta)/beta; SA divides by Z = I_0(beta). At beta = 0,
lambda_1 = 1/2, the linearisation of r' = (r - r^3)/2.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, eqs. (3.2)-(3.4) (mean field), section 7
(circle), section 9.1. Geshkovski, Letrouit, Polyanskiy, Rigollet, "The
emergence of clusters in self-attention dynamics", arXiv:2305.05465.
Geshkovski, Koubbi, Polyanskiy, Rigollet, arXiv:2410.06833 (staircase).
Ott & Antonsen, "Low dimensional behavior of large systems of globally coupled
oscillators", Chaos 18, 037113 (2008).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.linalg import expm
from scipy.special import ive

from integrators.validation import ParameterError, check_choice, check_in_range, check_nonnegative, check_positive_int

__all__ = [
    "mode_growth_rate",
    "bessel_cluster_count",
    "staircase_level",
    "merge_increment",
    "two_cluster_energy",
    "two_cluster_merge_time_asymptotic",
    "kuramoto_order_parameter",
    "wrapped_cauchy_circle",
    "rescale_tokens",
    "top_value_direction",
]


def mode_growth_rate(beta: float, k, normalization: str = "sa") -> np.ndarray:
    """Growth rate of the Fourier mode k of the mean-field density on S^1, at the uniform law.

    lambda_k = k^2 I_k(beta) / (beta I_0(beta)) for "sa", k^2 I_k(beta)/beta for
    "usa" (GLPR's 1/n), k^2 I_k(beta) e^{-beta}/beta for "usa-meta". At beta = 0
    every normalisation gives lambda_1 = 1/2 and lambda_k = 0 for k >= 2.
    """
    beta = check_nonnegative("beta", beta)
    check_choice("normalization", normalization, ("sa", "usa", "usa-meta"))
    k = np.asarray(k)
    if not np.issubdtype(k.dtype, np.integer) or np.any(k < 1):
        raise ParameterError("k", "mode numbers must be integers >= 1")
    kf = k.astype(np.float64)
    if beta == 0.0:
        return np.where(k == 1, 0.5, 0.0)
    # ive(k, b) = I_k(b) e^{-b}: the ratios below never overflow
    if normalization == "sa":
        return kf**2 * ive(kf, beta) / (beta * ive(0.0, beta))
    scale = 1.0 if normalization == "usa-meta" else np.exp(beta)
    return kf**2 * ive(kf, beta) * scale / beta


def bessel_cluster_count(beta: float) -> int:
    """argmax_{k >= 1} k^2 I_k(beta): the fastest-growing mode from a uniform start on S^1.

    The heuristic number of clusters at intermediate times for large n
    (MODELS.md section 1, [D]); ~ sqrt(2 beta) for large beta. The same argmax for
    SA and USA (the normalisations differ by a k-independent factor).
    """
    beta = check_nonnegative("beta", beta)
    if beta == 0.0:
        return 1
    k = np.arange(1, int(4 * np.sqrt(2 * beta)) + 8)
    return int(k[np.argmax(k.astype(float) ** 2 * ive(k, beta))])


def staircase_level(sizes: Sequence[int], n: int | None = None) -> float:
    """sum_q (m_q/n)^2: the plateau of the normalised energy for point clusters of sizes m_q (META).

    ``n`` defaults to sum(sizes).
    """
    m = np.asarray(sizes)
    if m.ndim != 1 or m.size == 0 or not np.issubdtype(m.dtype, np.integer) or np.any(m < 1):
        raise ParameterError("sizes", f"expected a non-empty list of positive integers, got {sizes!r}")
    total = int(m.sum()) if n is None else check_positive_int("n", n)
    if total < m.sum():
        raise ParameterError("n", f"n={total} is smaller than the sum of the cluster sizes {int(m.sum())}")
    return float(np.sum((m / total) ** 2))


def merge_increment(a: int, b: int, n: int) -> float:
    """2ab/n^2: the rise of the staircase when clusters of sizes a and b merge (META)."""
    a, b, n = check_positive_int("a", a), check_positive_int("b", b), check_positive_int("n", n)
    return 2.0 * a * b / n**2


def two_cluster_energy(rho, beta: float, m1: int, m2: int) -> np.ndarray:
    """Normalised energy of m1 copies of a and m2 copies of b with <a, b> = rho.

    (1/n^2) sum_{ij} e^{beta(<x_i,x_j> - 1)} = (m1^2 + m2^2 + 2 m1 m2 e^{beta(rho-1)}) / n^2, n = m1 + m2.
    """
    beta = check_nonnegative("beta", beta)
    m1, m2 = check_positive_int("m1", m1), check_positive_int("m2", m2)
    rho = np.asarray(rho, dtype=np.float64)
    return (m1**2 + m2**2 + 2.0 * m1 * m2 * np.exp(beta * (rho - 1.0))) / (m1 + m2) ** 2


def two_cluster_merge_time_asymptotic(beta: float, m1: int, m2: int, rho0: float) -> float:
    """Large-beta merge time of two point clusters (SA), with its first correction.

    Laplace's method on T = int_{rho0} d rho / rho'(rho) of the two-cluster ODE
    (:func:`particles.sphere.flow_theory.two_cluster_rhs`): for e^{beta(1-rho)} >> 1,
    1/rho' = e^{beta(1-rho)} g(rho), g = 1/((1-rho^2)(m1/m2 + m2/m1)), so

        T = e^{beta(1-rho0)} g(rho0)/beta * (1 + 2 rho0 / ((1 - rho0^2) beta) + O(beta^-2)),

    independent of the end level. log T is linear in beta with slope 1 - rho0
    up to the -log(beta) term.
    """
    beta = check_nonnegative("beta", beta)
    if beta == 0.0:
        raise ParameterError("beta", "the asymptotic form needs beta > 0")
    m1, m2 = check_positive_int("m1", m1), check_positive_int("m2", m2)
    rho0 = check_in_range("rho0", rho0, -1.0, 1.0, lo_open=True, hi_open=True)
    g = 1.0 / ((1.0 - rho0**2) * (m1 / m2 + m2 / m1))
    return float(np.exp(beta * (1.0 - rho0)) * g / beta * (1.0 + 2.0 * rho0 / ((1.0 - rho0**2) * beta)))


def kuramoto_order_parameter(t, r0: float) -> np.ndarray:
    """Mean-field |mean of x| at beta = 0 on S^1 from a wrapped-Cauchy start of mean length r0.

    x_i' = P_{x_i}((1/n) sum_j x_j) is theta_i' = r sin(phi - theta_i), the Kuramoto
    model of identical oscillators (coupling 1); the Ott-Antonsen manifold
    (wrapped Cauchy laws) is invariant and r' = (r - r^3)/2, so
    r(t) = r0 e^{t/2} / sqrt(1 - r0^2 + r0^2 e^t); the mean direction phi is fixed.
    """
    r0 = check_in_range("r0", r0, 0.0, 1.0)
    e = np.exp(np.asarray(t, dtype=np.float64))
    return r0 * np.sqrt(e) / np.sqrt(1.0 - r0**2 + r0**2 * e)


def wrapped_cauchy_circle(batch: int, n: int, r0: float, seed=None, quantiles: bool = False) -> np.ndarray:
    """n tokens on S^1 from the wrapped Cauchy law with mean resultant r0 e^{i 0}, (batch, n, 2).

    theta = 2 arctan(((1 - r0)/(1 + r0)) tan(pi (u - 1/2))) is the Moebius image
    of u uniform on [0, 1). ``quantiles=True`` uses u = (j + 1/2)/n (a
    deterministic sample whose empirical law is within O(1/n) of the law; the
    same in every system) instead of iid draws.
    """
    batch, n = check_positive_int("batch", batch), check_positive_int("n", n)
    r0 = check_in_range("r0", r0, 0.0, 1.0, hi_open=True)
    if quantiles:
        u = np.broadcast_to((np.arange(n) + 0.5) / n, (batch, n))
    else:
        u = np.random.default_rng(seed).random((batch, n))
    theta = 2.0 * np.arctan((1.0 - r0) / (1.0 + r0) * np.tan(np.pi * (u - 0.5)))
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def rescale_tokens(x: np.ndarray, t, V=None) -> np.ndarray:
    """z_i = e^{-tV} x_i (V = None: the identity) for states ``x`` of shape (time, ..., n, d).

    The flow without layer norm (EMERGE, GLPR 9.1) grows like e^{tV}; its
    clustering statements are about z. ``t`` has one entry per leading index of x.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    if t.shape != (x.shape[0],):
        raise ParameterError("t", f"expected {x.shape[0]} times (one per state), got shape {t.shape}")
    if V is None:
        return x * np.exp(-t).reshape((-1,) + (1,) * (x.ndim - 1))
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (x.shape[-1],) * 2:
        raise ParameterError("V", f"expected shape ({x.shape[-1]}, {x.shape[-1]}), got {V.shape}")
    return np.stack([xk @ expm(-tk * V).T for tk, xk in zip(t, x)])


def top_value_direction(V) -> tuple[float, np.ndarray]:
    """(lambda_1, psi): the eigenvalue of V of largest real part and its unit left eigenvector.

    psi^T V = lambda_1 psi^T, so a_i = <psi, z_i> obeys a_i' = lambda_1 sum_j P_ij (a_j - a_i)
    along the flow without layer norm: the range of the a_i never grows, and
    EMERGE shows the a_i settle on at most three values (three parallel
    hyperplanes) when lambda_1 is simple and positive. Raises if lambda_1 is not
    real, positive and simple.
    """
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[0] != V.shape[1]:
        raise ParameterError("V", f"expected a square matrix, got shape {V.shape}")
    w, left = np.linalg.eig(V.T)
    order = np.argsort(-w.real)
    lam, psi = w[order[0]], left[:, order[0]]
    gap = lam.real - w[order[1]].real if len(w) > 1 else np.inf
    if abs(lam.imag) > 1e-12 or lam.real <= 0 or gap <= 1e-12 * max(1.0, abs(lam.real)):
        raise ParameterError("V", f"the top eigenvalue must be real, positive and simple, got spectrum {np.round(w, 6)}")
    psi = np.real(psi)
    return float(lam.real), psi / np.linalg.norm(psi)
