"""Numba kernels of the covariance SDEs: one path per prange iteration, O(m^3) work per path.

They follow :mod:`particles.covariance._algebra` line by line (the same Cholesky
factor, the same eigen-clipped fallback), so the numba and numpy/torch backends
agree path by path up to rounding. Coefficients arrive as arguments: a new gamma or
tau0 never triggers a recompile.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["correlation_drift", "diffusion", "drift"]


@nb.njit(cache=True, fastmath=False)
def _factor(V, L):
    """Cholesky of V into L (lower); False if V is not numerically positive definite."""
    m = V.shape[0]
    floor = 0.0
    for i in range(m):
        floor = max(floor, abs(V[i, i]))
        for j in range(m):
            L[i, j] = 0.0
    floor *= 8.0 * m * 2.220446049250313e-16  # pivots^2 at round-off level: treat V as singular
    for j in range(m):
        s = V[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not (s > floor) or not math.isfinite(s):
            return False
        ljj = math.sqrt(s)
        L[j, j] = ljj
        for i in range(j + 1, m):
            s = V[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / ljj
    return True


@nb.njit(cache=True, fastmath=False)
def _psd_factor(V, L):
    """Fill L with a factor of V; returns the number of leading columns to sum over per row.

    Cholesky (lower triangular: row i needs columns 0..i, returned as 0) or, when V is
    not numerically positive definite, the symmetric eigen-clipped root (full: returned as m).
    """
    if _factor(V, L):
        return 0
    m = V.shape[0]
    S = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            S[i, j] = 0.5 * (V[i, j] + V[j, i])
    w, U = np.linalg.eigh(S)
    floor = 0.0
    for k in range(m):
        floor = max(floor, abs(w[k]))
    floor *= 8.0 * m * 2.220446049250313e-16  # same round-off floor as _algebra.psd_factor
    for i in range(m):
        for j in range(m):
            s = 0.0
            for k in range(m):
                if w[k] > floor:
                    s += U[i, k] * w[k] ** 0.5 * U[j, k]
            L[i, j] = s
    return m


@nb.njit(parallel=True, cache=True, fastmath=False)
def _drift_kernel(V, a_sa, a_relu, tau0, c_plus, c_minus, work, out):
    B, m, _ = V.shape
    inv_t2 = 1.0 / (tau0 * tau0)
    cnu = (c_plus - c_minus) ** 2 / (2.0 * math.pi)
    for b in nb.prange(B):
        v = V[b]
        o = out[b]
        row = work[b, 0]
        dc = work[b, 1]
        vd = work[b, 2]
        for i in range(m):
            for j in range(m):
                o[i, j] = 0.0
        if a_sa != 0.0:
            tot = 0.0
            for i in range(m):
                s = 0.0
                for j in range(m):
                    s += v[i, j]
                row[i] = s / m
                tot += row[i]
            tot /= m
            tr_cv = 0.0
            trc = 0.0
            for i in range(m):
                for j in range(m):
                    c = v[i, j] - row[i] - row[j] + tot  # V symmetric: column means = row means
                    tr_cv += c * v[i, j]
                dc[i] = v[i, i] - 2.0 * row[i] + tot
                trc += dc[i]
            for i in range(m):
                s = 0.0
                for k in range(m):
                    s += v[i, k] * (dc[k] - trc / m)
                vd[i] = s
            f1 = a_sa * inv_t2 * tr_cv / (m * m)
            f2 = a_sa * inv_t2 / (2.0 * m)
            for i in range(m):
                for j in range(i + 1):
                    x = f1 * v[i, j] + f2 * (v[i, i] * vd[j] + v[j, j] * vd[i])
                    o[i, j] = x
                    o[j, i] = x
        if a_relu != 0.0:
            for i in range(m):
                for j in range(i):
                    ss = math.sqrt(max(v[i, i], 0.0)) * math.sqrt(max(v[j, j], 0.0))
                    if ss > 0.0:
                        r = min(1.0, max(-1.0, v[i, j] / ss))
                        x = a_relu * cnu * (math.sqrt(min(max(1.0 - r * r, 0.0), 1.0)) - r * math.acos(r)) * ss
                        o[i, j] += x
                        o[j, i] += x


@nb.njit(cache=True, fastmath=False, inline="always")
def _tri_left(L, w, full, T):
    """T = L w for the factor L (lower triangular unless ``full``: the eigen root)."""
    m = L.shape[0]
    for i in range(m):
        for j in range(m):
            s = 0.0
            for k in range(max(i + 1, full)):
                s += L[i, k] * w[k, j]
            T[i, j] = s


@nb.njit(parallel=True, cache=True, fastmath=False)
def _diffusion_kernel(V, dW, k_lin, k_sa, tau0, work, out):
    B, m, _ = V.shape
    s_lin = math.sqrt(k_lin / 2.0)
    s_sa = math.sqrt(k_sa) / (tau0 * m)
    for b in nb.prange(B):
        v = V[b]
        o = out[b]
        L = work[b, 0]
        T = work[b, 1]
        N = work[b, 2]
        full = _psd_factor(v, L)
        # T = L dW1 (L lower triangular), N = T L^T
        _tri_left(L, dW[b, 0], full, T)
        for i in range(m):
            for j in range(m):
                s = 0.0
                for k in range(m):
                    s += T[i, k] * L[j, k]
                N[i, j] = s
        for i in range(m):
            for j in range(m):
                o[i, j] = s_lin * (N[i, j] + N[j, i])
        if k_sa != 0.0:
            _tri_left(L, dW[b, 1], full, T)
            for i in range(m):
                mean = 0.0
                for j in range(m):
                    s = 0.0
                    for k in range(m):
                        s += T[i, k] * L[j, k]
                    N[i, j] = s
                    mean += s
                mean /= m
                for j in range(m):
                    N[i, j] -= mean  # E P
            for i in range(m):
                for j in range(m):
                    s = 0.0
                    for k in range(m):
                        s += N[i, k] * v[k, j]
                    T[i, j] = s  # F = E P V
            for i in range(m):
                for j in range(m):
                    o[i, j] += s_sa * (T[i, j] + T[j, i])


@nb.njit(cache=True)
def _nu_over_sech2(x, cnu):
    """nu(tanh x) / (1 - tanh^2 x), accurate for large |x| (no 1 - rho^2 cancellation).

    With s = sech x and r = tanh x: arccos r = atan2(s, r), so
    nu / s^2 = cnu (s - r atan2(s, r)) / s^2; for s << r the bracket is
    r (u^3/3 - u^5/5 + u^7/7), u = s/r, which tends to 0 as rho -> 1.
    """
    ax = abs(x)
    if ax > 700.0:
        return 0.0 if x > 0 else math.inf
    s = 1.0 / math.cosh(x)
    r = math.tanh(x)
    if r > 0.0 and s < 1e-3 * r:
        u = s / r
        u2 = u * u
        return cnu * r * u * u2 * (1.0 / 3.0 - u2 / 5.0 + u2 * u2 / 7.0) / (s * s)
    return cnu * (s - r * math.atan2(s, r)) / (s * s)


@nb.njit(parallel=True, cache=True)
def _corr_drift_kernel(x, a, k, cnu, out):
    flat = x.ravel()
    res = out.ravel()
    for i in nb.prange(flat.size):
        res[i] = a * _nu_over_sech2(flat[i], cnu) + 0.5 * k * math.tanh(flat[i])


def drift(V: np.ndarray, a_sa: float, a_relu: float, tau0: float, c_plus: float, c_minus: float) -> np.ndarray:
    """a_sa b_SA(V) + a_relu b_ReLU(V) for (batch, m, m) float arrays."""
    V = np.ascontiguousarray(V)
    out = np.empty_like(V)
    work = np.empty((V.shape[0], 3, V.shape[-1]))
    _drift_kernel(V, float(a_sa), float(a_relu), float(tau0), float(c_plus), float(c_minus), work, out)
    return out


def diffusion(V: np.ndarray, dW: np.ndarray, k_lin: float, k_sa: float, tau0: float) -> np.ndarray:
    """The factorised increment; dW of shape (batch, 1 or 2, m, m)."""
    V = np.ascontiguousarray(V)
    dW = np.ascontiguousarray(dW, dtype=V.dtype)
    out = np.empty_like(V)
    m = V.shape[-1]
    work = np.empty((V.shape[0], 3, m, m))
    _diffusion_kernel(V, dW, float(k_lin), float(k_sa), float(tau0), work, out)
    return out


def correlation_drift(x: np.ndarray, a: float, k: float, cnu: float) -> np.ndarray:
    """Drift of the artanh correlation SDE, a nu(rho)/(1 - rho^2) + k rho / 2, elementwise."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _corr_drift_kernel(x, float(a), float(k), float(cnu), out)
    return out
