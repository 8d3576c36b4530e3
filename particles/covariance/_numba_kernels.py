"""Numba kernels of the covariance SDEs: one path per prange iteration, O(m^3) work per path.

They follow :mod:`particles.covariance._algebra` line by line (the same Cholesky
factor, the same eigen-clipped fallback), so the numba and numpy/torch backends
agree path by path up to rounding. Each piece is a per-path function (drift, diffusion,
PSD projection) that three parallel kernels share: the drift, the diffusion, and the
fused (PSD-)Euler-Maruyama step, which also draws the path's Brownian row in place
(:func:`integrators._philox.row_normals`). Small products run in row-times-matrix order
so that the inner loops vectorise. Coefficients arrive as arguments: a new gamma or tau0
never triggers a recompile.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from integrators._philox import row_normals

__all__ = ["correlation_drift", "diffusion", "drift", "em_step"]

_CHUNK = 32  # paths per parallel work item of the fused step


def _drop_stale_fused_cache() -> None:
    """Numba's on-disk cache checks only the timestamp of the file defining a kernel, but the
    fused step inlines :mod:`integrators._philox`: after that file changes (a ``git pull`` in an
    editable install), the cached fused kernel would still draw the old numbers. A marker named
    by the hash of _philox.py records which version the cache belongs to; on a mismatch the
    fused kernel's cache files are removed. Read-only installs skip this (nothing is written)."""
    import hashlib
    from pathlib import Path

    import integrators._philox as ph

    try:
        digest = hashlib.sha256(Path(ph.__file__).read_bytes()).hexdigest()[:16]
        cache = Path(__file__).parent / "__pycache__"
        marker = cache / f"{Path(__file__).stem}.philox-{digest}.stamp"
        if marker.exists() or not cache.is_dir():
            return
        for f in cache.glob(f"{Path(__file__).stem}._em_kernel-*.nb[ic]"):
            f.unlink()
        for f in cache.glob(f"{Path(__file__).stem}.philox-*.stamp"):
            f.unlink()
        marker.touch()
    except OSError:
        pass


_drop_stale_fused_cache()


@nb.njit(cache=True, fastmath=False)
def _factor(V, L, rel_floor):
    """Cholesky of V into L (lower); False if a pivot^2 is not above rel_floor max_i |V^ii|.

    rel_floor = 8 m eps: pivots^2 at round-off level count as singular (the diffusion factor);
    0: a plain Cholesky (the PSD projection's test, as numpy's).
    """
    m = V.shape[0]
    floor = 0.0
    for i in range(m):
        floor = max(floor, abs(V[i, i]))
        for j in range(m):
            L[i, j] = 0.0
    floor *= rel_floor
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
    """Fill L with a factor of V; returns 0 for a Cholesky factor (lower triangular), m for a full one.

    Cholesky, or, when V is not numerically positive definite, the symmetric
    eigen-clipped root (as :func:`particles.covariance._algebra.psd_factor`).
    """
    if _factor(V, L, 8.0 * V.shape[0] * 2.220446049250313e-16):
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


@nb.njit(cache=True, fastmath=False, inline="always")
def _drift_path(v, a_sa, a_relu, inv_t2, cnu, row, dc, vd, o):
    """o = a_sa b_SA(v) + a_relu b_ReLU(v) for one (m, m) path; row, dc, vd: (m,) scratch."""
    m = v.shape[0]
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


@nb.njit(parallel=True, cache=True, fastmath=False)
def _drift_kernel(V, a_sa, a_relu, tau0, c_plus, c_minus, work, out):
    inv_t2 = 1.0 / (tau0 * tau0)
    cnu = (c_plus - c_minus) ** 2 / (2.0 * math.pi)
    for b in nb.prange(V.shape[0]):
        _drift_path(V[b], a_sa, a_relu, inv_t2, cnu, work[b, 0], work[b, 1], work[b, 2], out[b])


@nb.njit(cache=True, fastmath=False, inline="always")
def _mm(A, B, C, lower):
    """C = A B for (m, m) matrices; A lower triangular if ``lower`` (columns k <= i only).

    Row-times-matrix (axpy) order: the inner loop runs over independent outputs C[i, :],
    so it vectorises, where dot-product order is a chain of dependent additions.
    """
    m = A.shape[0]
    for i in range(m):
        for j in range(m):
            C[i, j] = 0.0
        for k in range(i + 1 if lower else m):
            a = A[i, k]
            for j in range(m):
                C[i, j] += a * B[k, j]


@nb.njit(cache=True, fastmath=False, inline="always")
def _diffusion_path(v, w1, w2, s_lin, s_sa, L, Lt, T, N, o):
    """o += g(v) dW for one path: the factorised increment of _algebra.lin_noise + sa_noise.

    w1, w2: (m, m) Brownian matrices (w2 unused when s_sa == 0); L, Lt, T, N: (m, m) scratch.
    """
    m = v.shape[0]
    lower = _psd_factor(v, L) == 0  # Cholesky (lower triangular) or the symmetric eigen root
    for i in range(m):
        for j in range(m):
            Lt[i, j] = L[j, i]
    _mm(L, w1, T, lower)
    _mm(T, Lt, N, False)  # N = L dW1 L^T
    for i in range(m):
        for j in range(m):
            o[i, j] += s_lin * (N[i, j] + N[j, i])
    if s_sa != 0.0:
        _mm(L, w2, T, lower)
        _mm(T, Lt, N, False)  # L dW2 L^T
        for i in range(m):
            mean = 0.0
            for j in range(m):
                mean += N[i, j]
            mean /= m
            for j in range(m):
                N[i, j] -= mean  # E P
        _mm(N, v, T, False)  # F = E P V
        for i in range(m):
            for j in range(m):
                o[i, j] += s_sa * (T[i, j] + T[j, i])


@nb.njit(parallel=True, cache=True, fastmath=False)
def _diffusion_kernel(V, dW, k_lin, k_sa, tau0, work, out):
    m = V.shape[1]
    s_lin = math.sqrt(k_lin / 2.0)
    s_sa = math.sqrt(k_sa) / (tau0 * m)
    for b in nb.prange(V.shape[0]):
        o = out[b]
        for i in range(m):
            for j in range(m):
                o[i, j] = 0.0
        w = dW[b]
        wk = work[b]
        _diffusion_path(V[b], w[0], w[w.shape[0] - 1], s_lin, s_sa, wk[0], wk[1], wk[2], wk[3], o)


@nb.njit(cache=True, fastmath=False, inline="always")
def _psd_clip(X, L):
    """Projection of the symmetric X onto the PSD cone, in place (as matrix_steppers.psd_project).

    Unchanged where a plain Cholesky succeeds; else eigenvalues at or below the round-off
    floor 8 m eps max|lambda| (negative ones included) are set to zero.
    """
    m = X.shape[0]
    if _factor(X, L, 0.0):
        return
    w, U = np.linalg.eigh(X)
    floor = 0.0
    for k in range(m):
        floor = max(floor, abs(w[k]))
    floor *= 8.0 * m * 2.220446049250313e-16  # round-off zeros, as psd_project
    for i in range(m):
        for j in range(i + 1):  # mirrored: the projection is exactly symmetric
            s = 0.0
            for k in range(m):
                if w[k] > floor:
                    s += U[i, k] * w[k] * U[j, k]
            X[i, j] = s
            X[j, i] = s


@nb.njit(parallel=True, cache=True, fastmath=False)
def _em_kernel(V, exited, k_first, count, key0, key1, sqdt, dt, a_sa, a_relu, tau0, c_plus, c_minus, k_lin, k_sa,
               threshold, psd, out, new_bad):  # fmt: skip
    """One Euler-Maruyama step for every path, noise drawn in place (the rows of BrownianIncrements).

    out[b] = sym(V[b] + dt drift + g dW) (projected onto the PSD cone if ``psd``); a path that is
    already ``exited`` is copied, one that becomes non-finite or exceeds ``threshold`` keeps V[b]
    and is flagged in ``new_bad``.
    """
    B, m, _ = V.shape
    n_noise = 2 if k_sa != 0.0 else 1
    inv_t2 = 1.0 / (tau0 * tau0)
    cnu = (c_plus - c_minus) ** 2 / (2.0 * math.pi)
    s_lin = math.sqrt(k_lin / 2.0)
    s_sa = math.sqrt(k_sa) / (tau0 * m)
    n_chunks = (B + _CHUNK - 1) // _CHUNK
    for c in nb.prange(n_chunks):  # chunks of paths: the scratch is allocated once per chunk
        w = np.empty(n_noise * m * m)
        bits = np.empty(2 * ((n_noise * m * m + 1) // 2), dtype=np.uint64)
        w3 = w.reshape((n_noise, m, m))
        vec = np.empty((3, m))
        S = np.empty((6, m, m))
        D = S[4]
        G = S[5]
        for b in range(c * _CHUNK, min(B, (c + 1) * _CHUNK)):
            v = V[b]
            o = out[b]
            new_bad[b] = False
            if exited[b]:
                o[:, :] = v
                continue
            for i in range(count):
                row_normals(k_first + i, b, key0, key1, sqdt, i > 0, w, bits)
            _drift_path(v, a_sa, a_relu, inv_t2, cnu, vec[0], vec[1], vec[2], D)
            G[:, :] = 0.0
            _diffusion_path(v, w3[0], w3[n_noise - 1], s_lin, s_sa, S[0], S[1], S[2], S[3], G)
            for i in range(m):
                for j in range(m):
                    D[i, j] = v[i, j] + dt * D[i, j] + G[i, j]  # the order of euler_maruyama_step
            bad = False
            for i in range(m):
                for j in range(m):
                    x = 0.5 * (D[i, j] + D[j, i])
                    o[i, j] = x
                    if not math.isfinite(x):
                        bad = True
            if psd and not bad:
                _psd_clip(o, S[0])
            for i in range(m):
                for j in range(m):
                    if abs(o[i, j]) > threshold:
                        bad = True
            if bad:
                new_bad[b] = True
                o[:, :] = v


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
    work = np.empty((V.shape[0], 4, m, m))
    _diffusion_kernel(V, dW, float(k_lin), float(k_sa), float(tau0), work, out)
    return out


def correlation_drift(x: np.ndarray, a: float, k: float, cnu: float) -> np.ndarray:
    """Drift of the artanh correlation SDE, a nu(rho)/(1 - rho^2) + k rho / 2, elementwise."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _corr_drift_kernel(x, float(a), float(k), float(cnu), out)
    return out


def em_step(V, exited, k_first, count, key, sqdt, dt, coef, tau0, c_plus, c_minus, threshold, psd):
    """One fused (PSD-)Euler-Maruyama step; returns (V_new, newly_bad). See :func:`_em_kernel`."""
    out = np.empty_like(V)
    new_bad = np.empty(V.shape[0], dtype=np.bool_)
    thr = math.inf if threshold is None else float(threshold)
    _em_kernel(V, exited, int(k_first), int(count), np.uint64(key[0]), np.uint64(key[1]), float(sqdt), float(dt),
               float(coef.a_sa), float(coef.a_relu), float(tau0), float(c_plus), float(c_minus), float(coef.k_lin),
               float(coef.k_sa), thr, bool(psd), out, new_bad)  # fmt: skip
    return out, new_bad
