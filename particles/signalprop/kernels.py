"""Gaussian kernels of the MLP nonlinearities: K = E[phi(h1) phi(h2)] and K' = E[phi'(h1) phi'(h2)].

(h1, h2) ~ N(0, [[v1, s12], [s12, v2]]). Closed forms:

* erf:  K  = (2/pi) arcsin(2 s12 / sqrt((1 + 2 v1)(1 + 2 v2)))            (Williams 1997, eq. 11)
        K' = (4/pi) / sqrt((1 + 2 v1)(1 + 2 v2) - 4 s12^2)
* relu: K  = sqrt(v1 v2) (sin t + (pi - t) cos t) / (2 pi),  cos t = rho   (Cho & Saul 2009, arc-cosine kernel n = 1)
        K' = (pi - t) / (2 pi)                                              (arc-cosine kernel n = 0)
* tanh: no closed form. Computed by the trapezoidal rule on a truncated grid,
  which converges geometrically for integrands analytic in a strip: the
  error is ~ exp(-2 pi delta / h) with delta = pi / (2 sqrt(v)) the distance
  of tanh's poles from the real axis, so the step h shrinks as the variance
  grows. (Gauss-Hermite with a fixed, small number of nodes fails for
  sigma_w >~ 4, where tanh(sqrt(v) z) is nearly a step.)

References
----------
C. K. I. Williams, "Computing with infinite networks", NIPS 1997.
Y. Cho, L. K. Saul, "Kernel methods for deep learning", NIPS 2009.
L. N. Trefethen, J. A. C. Weideman, "The exponentially convergent trapezoidal rule",
SIAM Review 56 (2014), theorem 5.1.
"""

from __future__ import annotations

import numpy as np

from integrators.validation import check_choice

__all__ = ["PHI_FUNCTIONS", "dkernel", "kernel", "second_moment", "slope_moment"]

_TRUNC = 8.6  # exp(-8.6^2 / 2) ~ 1e-16: the Gaussian tail beyond is below float64 resolution
_LOG_TOL = 32.0  # target relative quadrature error ~ exp(-32) ~ 1e-14


def _erf(x):
    from scipy.special import erf

    return erf(x)


def _tanh_prime(x):
    return 1.0 / np.cosh(np.clip(x, -350, 350)) ** 2


PHI_FUNCTIONS = {
    "erf": (_erf, lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-(x**2))),
    "tanh": (np.tanh, _tanh_prime),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
}


def _rho(v1, v2, s12):
    den = np.sqrt(v1 * v2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, s12 / np.where(den > 0, den, 1.0), 1.0)
    return np.clip(rho, -1.0, 1.0)


def _nodes(max_var: float) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes and Gaussian weights on [-_TRUNC, _TRUNC] for tanh at variance <= max_var."""
    delta = np.pi / (2.0 * np.sqrt(max(max_var, 1e-12)))  # pole distance of tanh(sqrt(v) z)
    h = min(0.25, 2.0 * np.pi * delta / _LOG_TOL)
    m = int(np.ceil(_TRUNC / h))
    z = np.linspace(-_TRUNC, _TRUNC, 2 * m + 1)
    w = np.exp(-0.5 * z**2)
    return z, w / w.sum()


def _tanh_2d(v1, v2, s12, deriv: bool) -> np.ndarray:
    f = _tanh_prime if deriv else np.tanh
    v1, v2, s12 = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (v1, v2, s12)))
    shape = v1.shape
    v1, v2, s12 = v1.ravel(), v2.ravel(), s12.ravel()
    rho = _rho(v1, v2, s12)
    a, b = np.sqrt(v1), np.sqrt(v2)
    r = np.sqrt(np.clip(1.0 - rho**2, 0.0, None))
    out = np.empty(v1.shape)
    n_nodes = _nodes(float(max(v1.max(initial=0.0), v2.max(initial=0.0))))[0].size
    chunk = max(1, int(4e6) // n_nodes**2)  # bound the (chunk, N, N) work array to ~32 MB
    for lo in range(0, v1.size, chunk):
        sl = slice(lo, lo + chunk)
        z, w = _nodes(float(max(v1[sl].max(initial=0.0), v2[sl].max(initial=0.0))))
        f1 = f(a[sl, None] * z[None, :])  # (m, N)
        arg = b[sl, None, None] * (rho[sl, None, None] * z[None, :, None] + r[sl, None, None] * z[None, None, :])
        inner = f(arg) @ w  # E over z2, (m, N)
        out[sl] = (f1 * inner) @ w
    return out.reshape(shape)


def _tanh_1d(v, deriv: bool) -> np.ndarray:
    f = _tanh_prime if deriv else np.tanh
    v = np.asarray(v, dtype=np.float64)
    z, w = _nodes(float(np.max(v, initial=0.0)))
    return (f(np.sqrt(v)[..., None] * z) ** 2) @ w


def kernel(phi: str, v1, v2, s12) -> np.ndarray:
    """K = E[phi(h1) phi(h2)] for (h1, h2) ~ N(0, [[v1, s12], [s12, v2]]), broadcast over inputs.

    Parameters
    ----------
    phi : "erf", "tanh" or "relu".
    v1, v2 : variances (>= 0); s12 : covariance, |s12| <= sqrt(v1 v2).
    """
    check_choice("phi", phi, PHI_FUNCTIONS)
    v1, v2, s12 = (np.asarray(a, dtype=np.float64) for a in (v1, v2, s12))
    if phi == "erf":
        arg = 2.0 * s12 / np.sqrt((1.0 + 2.0 * v1) * (1.0 + 2.0 * v2))
        return 2.0 / np.pi * np.arcsin(np.clip(arg, -1.0, 1.0))
    if phi == "relu":
        t = np.arccos(_rho(v1, v2, s12))
        return np.sqrt(v1 * v2) * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2.0 * np.pi)
    return _tanh_2d(v1, v2, s12, deriv=False)


def dkernel(phi: str, v1, v2, s12) -> np.ndarray:
    """K' = E[phi'(h1) phi'(h2)] = dK/ds12 (Price's theorem), same arguments as :func:`kernel`."""
    check_choice("phi", phi, PHI_FUNCTIONS)
    v1, v2, s12 = (np.asarray(a, dtype=np.float64) for a in (v1, v2, s12))
    if phi == "erf":
        det = (1.0 + 2.0 * v1) * (1.0 + 2.0 * v2) - 4.0 * s12**2
        return 4.0 / np.pi / np.sqrt(np.clip(det, 1e-300, None))
    if phi == "relu":
        t = np.arccos(_rho(v1, v2, s12))
        return (np.pi - t) / (2.0 * np.pi)
    return _tanh_2d(v1, v2, s12, deriv=True)


def second_moment(phi: str, v) -> np.ndarray:
    """E[phi(h)^2], h ~ N(0, v): the kernel on the diagonal."""
    check_choice("phi", phi, PHI_FUNCTIONS)
    v = np.asarray(v, dtype=np.float64)
    if phi == "tanh":
        return _tanh_1d(v, deriv=False)
    return kernel(phi, v, v, v)


def slope_moment(phi: str, v) -> np.ndarray:
    """E[phi'(h)^2], h ~ N(0, v); sigma_w^2 times this is Poole et al.'s chi_1 (eq. 7)."""
    check_choice("phi", phi, PHI_FUNCTIONS)
    v = np.asarray(v, dtype=np.float64)
    if phi == "tanh":
        return _tanh_1d(v, deriv=True)
    if phi == "relu":
        return np.full_like(v, 0.5)
    return 4.0 / np.pi / np.sqrt(1.0 + 4.0 * v)
