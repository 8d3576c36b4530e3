"""Drift and diffusion terms of the covariance SDEs: one array-API implementation (numpy or torch).

Notation of MODELS.md section 2: V is a (batch, m, m) covariance, P = I - (1/m) 1 1^T,
PVP the token-centred V, d_nu = (PVP)^{nu nu} - tr(PVP)/m, Q = V P V P V and
Sigma_lin(V)^{ab,cd} = V^{ac} V^{bd} + V^{ad} V^{bc}.

    b_SA^{ab}   = tau0^{-2} [ m^{-2} tr(PVPV) V^{ab}
                  + (2m)^{-1} ( V^{aa} sum_nu d_nu V^{nu b} + V^{bb} sum_nu d_nu V^{nu a} ) ]
    b_ReLU^{ab} = nu(rho^{ab}) sqrt(V^{aa} V^{bb}),
    nu(rho)     = ((c_+ - c_-)^2 / (2 pi)) [ sqrt(1 - rho^2) - rho arccos(rho) ]
    Sigma_SA^{ab,cd} = tau0^{-2} m^{-2} [ V^{ac} Q^{bd} + V^{ad} Q^{bc} + V^{bc} Q^{ad} + V^{bd} Q^{ac} ]

The diffusion is never formed as an m^2 x m^2 matrix: with L L^T = V and standard Brownian
matrices W1, W2,

    sqrt(k/2) (L dW1 L^T + L dW1^T L^T)          has covariance k Sigma_lin dt,
    (sqrt(k_SA) / (tau0 m)) (E V + V E^T), E = L dW2 L^T P,   has covariance k_SA Sigma_SA dt,

so one increment costs O(m^3). The explicit tensors (:func:`sigma_lin_tensor`,
:func:`sigma_sa_tensor`) exist for tests only.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, section 4 (shaped-attention covariance SDE).
Li, Nica, Roy, "The neural covariance SDE", arXiv:2206.02768, section 3 (shaped ReLU, nu(rho)).
The constants were derived from the finite networks of MODELS.md section 2 and checked against
them by the one-step moment test (tests/test_cov_one_step.py).
"""

from __future__ import annotations

import math

import numpy as np

from integrators.ops import is_torch, namespace

__all__ = [
    "b_relu",
    "b_relu_pairs",
    "b_sa",
    "b_sa_parts",
    "centre",
    "correlation",
    "lin_noise",
    "noise_increment",
    "nu",
    "psd_factor",
    "sa_noise",
    "sigma_lin_tensor",
    "sigma_sa_tensor",
]


def _diag(V):
    if is_torch(V):
        return V.diagonal(dim1=-2, dim2=-1)
    return np.diagonal(V, axis1=-2, axis2=-1)


def _arccos(x):
    return x.arccos() if is_torch(x) else np.arccos(x)


def _clip(x, lo, hi):
    return x.clamp(lo, hi) if is_torch(x) else np.clip(x, lo, hi)


def centre(V):
    """P V P: subtract row and column means (token centring), shape (..., m, m)."""
    xp = namespace(V)
    m = V.shape[-1]
    row = xp.sum(V, axis=-1, keepdims=True) / m
    col = xp.sum(V, axis=-2, keepdims=True) / m
    return V - row - col + xp.sum(row, axis=-2, keepdims=True) / m


def b_sa_parts(V, tau0: float):
    """b_SA(V) = c V + (K + K^T) as (c, K): c of shape (...,), K = V^{aa} (V d)^b / (2m tau0^2).

    Uses tr(PVPV) = |V|_F^2 - 2m |r|^2 + m^2 t^2 (r the row means, t their mean), so PVP is
    never formed. The fused torch step folds K into its one symmetrisation.
    """
    xp = namespace(V)
    m = V.shape[-1]
    r = xp.sum(V, axis=-1) / m  # row means = column means (V symmetric)
    t = xp.sum(r, axis=-1, keepdims=True) / m
    tr_cv = xp.sum(xp.sum(V * V, axis=-1), axis=-1) - 2 * m * xp.sum(r * r, axis=-1) + (m * t[..., 0]) ** 2
    dv = _diag(V)
    dc = dv - 2 * r + t  # diag(PVP)
    d = dc - xp.sum(dc, axis=-1, keepdims=True) / m
    vd = xp.sum(V * d[..., None, :], axis=-1)  # (V d)^a = sum_nu V^{a nu} d_nu
    return tr_cv / (m * tau0) ** 2, dv[..., :, None] * vd[..., None, :] / (2 * m * tau0**2)


def b_sa(V, tau0: float):
    """Shaped-attention drift b_SA(V) (without the gamma^2 factor), shape (..., m, m)."""
    xp = namespace(V)
    c, K = b_sa_parts(V, tau0)
    return c[..., None, None] * V + (K + xp.swap(K))


def nu(rho, c_plus: float, c_minus: float):
    """LNR's nu(rho) = ((c_+ - c_-)^2/(2 pi)) [sqrt(1 - rho^2) - rho arccos rho]."""
    xp = namespace(rho)
    rho = _clip(rho, -1.0, 1.0)
    return ((c_plus - c_minus) ** 2 / (2 * math.pi)) * (xp.sqrt(_clip(1.0 - rho * rho, 0.0, 1.0)) - rho * _arccos(rho))


def correlation(V):
    """rho^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) (0 where a variance vanishes), clipped to [-1, 1]."""
    xp = namespace(V)
    s = xp.sqrt(_clip(_diag(V), 0.0, None))
    ss = s[..., :, None] * s[..., None, :]
    safe = xp.where(ss > 0, ss, ss * 0 + 1.0)
    return _clip(xp.where(ss > 0, V / safe, V * 0), -1.0, 1.0)


def _strict_lower(m: int, like):
    """Row and column indices of the strict lower triangle (i > j) of an m x m matrix."""
    i, j = np.tril_indices(m, -1)
    if is_torch(like):
        import torch

        return torch.as_tensor(i, device=like.device), torch.as_tensor(j, device=like.device)
    return i, j


def b_relu(V, c_plus: float, c_minus: float):
    """Shaped-ReLU drift b_ReLU(V)^{ab} = nu(rho^{ab}) sqrt(V^{aa} V^{bb}); zero on the diagonal.

    Evaluated on the m(m-1)/2 pairs a > b only (nu(1) = 0 on the diagonal) and mirrored.
    """
    xp = namespace(V)
    i, j = _strict_lower(V.shape[-1], V)
    out = V * 0
    out[..., i, j] = b_relu_pairs(V, i, j, c_plus, c_minus)
    return out + xp.swap(out)


def b_relu_pairs(V, i, j, c_plus: float, c_minus: float):
    """b_ReLU^{ij} for the index pairs (i, j), shape (batch, len(i)), gathered from the flattened matrix."""
    xp = namespace(V)
    m = V.shape[-1]
    flat = V.reshape(V.shape[:-2] + (m * m,))
    s = xp.sqrt(_clip(_diag(V), 0.0, None))
    ss = s[..., i] * s[..., j]
    safe = xp.where(ss > 0, ss, ss * 0 + 1.0)
    rho = xp.where(ss > 0, flat[..., i * m + j] / safe, ss * 0)
    return nu(rho, c_plus, c_minus) * ss


def _eig_floor(w, eps):
    """Eigenvalues at or below this are round-off of zero: 8 m eps max|lambda| per matrix."""
    m = w.shape[-1]
    return 8 * m * eps * abs(w).max(-1, keepdims=True) if not is_torch(w) else 8 * m * eps * w.abs().amax(-1, keepdim=True)


def psd_factor(V):
    """L with L L^T = V for symmetric PSD V, shape (..., m, m).

    Cholesky where V is numerically positive definite; elsewhere the symmetric
    eigen-clipped root U Lambda_+^{1/2} U^T (unique, so the numba kernel, which
    follows the same rule, gives the same factor). Eigenvalues below
    ``8 m eps max|lambda|`` count as zero, and a Cholesky pivot^2 below ``8 m eps
    max_j V^{jj}`` counts as a failure: a rank-one V gets an exactly rank-one factor
    instead of sqrt(round-off) ~ 1e-8 noise in the other directions.
    """
    if is_torch(V):
        import torch

        L, info = torch.linalg.cholesky_ex(V)
        piv = L.diagonal(dim1=-2, dim2=-1) ** 2
        floor = _eig_floor(V.diagonal(dim1=-2, dim2=-1), torch.finfo(V.dtype).eps)[..., 0]
        bad = (info != 0) | ~torch.isfinite(piv).all(dim=-1) | (piv.amin(dim=-1) <= floor)
        if bool(bad.any()):
            L = L.clone()
            # a path that already blew up (inf/NaN) gets a NaN factor: eigh would raise on it,
            # and the driver's exit handling (or the caller) flags the path
            finite = torch.isfinite(V).all(dim=-1).all(dim=-1)
            L[bad & ~finite] = float("nan")
            fix = bad & finite
            if bool(fix.any()):
                w, U = torch.linalg.eigh(V[fix])
                w = torch.where(w > _eig_floor(w, torch.finfo(w.dtype).eps), w, torch.zeros_like(w))
                L[fix] = (U * w.sqrt()[..., None, :]) @ U.transpose(-1, -2)
        return L
    eps = np.finfo(V.dtype).eps
    try:
        L = np.linalg.cholesky(V)
        piv = np.diagonal(L, axis1=-2, axis2=-1) ** 2
        bad = piv.min(axis=-1) <= _eig_floor(np.diagonal(V, axis1=-2, axis2=-1), eps)[..., 0]
        if not np.any(bad):
            return L
    except np.linalg.LinAlgError:
        pass
    flat = V.reshape((-1,) + V.shape[-2:])
    out = np.empty_like(flat)
    for i, v in enumerate(flat):  # only reached when some matrix is (nearly) singular: a rare path
        try:
            Li = np.linalg.cholesky(v)
            if np.min(np.diag(Li) ** 2) > _eig_floor(np.diag(v), eps)[0]:
                out[i] = Li
                continue
        except np.linalg.LinAlgError:
            pass
        if not np.all(np.isfinite(v)):  # a blown-up path: NaN factor, flagged by the driver
            out[i] = np.nan
            continue
        w, U = np.linalg.eigh(v)
        w = np.where(w > _eig_floor(w, eps), w, 0.0)
        out[i] = (U * np.sqrt(w)) @ U.T
    return out.reshape(V.shape)


def _sandwich(L, dW):
    """L dW L^T; dW may carry extra axes before the matrix axes of L (one batched product for all)."""
    xp = namespace(L)
    extra = dW.ndim - L.ndim
    Lb = L.reshape(L.shape[:-2] + (1,) * extra + L.shape[-2:])
    return Lb @ dW @ xp.swap(Lb)


def lin_noise(L, dW, k_lin: float):
    """sqrt(k/2) (L dW L^T + L dW^T L^T): covariance k Sigma_lin dt for dW of variance dt."""
    xp = namespace(L)
    N = _sandwich(L, dW)
    return math.sqrt(k_lin / 2.0) * (N + xp.swap(N))


def _sa_half(N, V, k_sa: float, tau0: float):
    """(sqrt(k_SA)/(tau0 m)) E V with E = N P, N = L dW L^T."""
    xp = namespace(N)
    m = V.shape[-1]
    E = N - xp.sum(N, axis=-1, keepdims=True) / m  # E P
    return (math.sqrt(k_sa) / (tau0 * m)) * (E @ V)


def sa_noise(L, V, dW, k_sa: float, tau0: float):
    """(sqrt(k_SA)/(tau0 m)) (E V + V E^T), E = L dW L^T P: covariance k_SA Sigma_SA dt."""
    xp = namespace(L)
    F = _sa_half(_sandwich(L, dW), V, k_sa, tau0)
    return F + xp.swap(F)


def noise_increment(L, V, dW, k_lin: float, k_sa: float, tau0: float, symmetric: bool = True):
    """g(V) dW = lin_noise(L, dW[:, 0], k_lin) + sa_noise(L, V, dW[:, 1], k_sa, tau0), in one pass.

    dW has shape (batch, 1 or 2, m, m) (the second matrix only when k_sa > 0). The sum is
    X + X^T (X itself if not ``symmetric``) with, for s_l = sqrt(k_lin/2), s_a = sqrt(k_SA)/(tau0 m),

        X = s_l L dW1 L^T + s_a (L dW2 L^T) P V
          = L [s_l dW1 L^T + s_a dW2 (L^T V)] - (s_a/m) (L dW2 L^T 1)(1^T V),

    four batched m x m products instead of five (and no broadcast copies of L).
    """
    xp = namespace(L)
    m = V.shape[-1]
    Lt = xp.swap(L)
    inner = math.sqrt(k_lin / 2.0) * (dW[:, 0] @ Lt)
    if k_sa:
        s_a = math.sqrt(k_sa) / (tau0 * m)
        W2 = dW[:, 1]
        inner = inner + s_a * (W2 @ (Lt @ V))
    X = L @ inner
    if k_sa:
        u = L @ (W2 @ xp.sum(Lt, axis=-1, keepdims=True))  # L dW2 L^T 1, shape (batch, m, 1)
        X = X - (s_a / m) * (u * xp.sum(V, axis=-2, keepdims=True))
    return X + xp.swap(X) if symmetric else X


def sigma_lin_tensor(V: np.ndarray) -> np.ndarray:
    """Sigma_lin^{ab,cd} as an (..., m, m, m, m) array (tests only)."""
    V = np.asarray(V)
    return np.einsum("...ac,...bd->...abcd", V, V) + np.einsum("...ad,...bc->...abcd", V, V)


def sigma_sa_tensor(V: np.ndarray, tau0: float) -> np.ndarray:
    """Sigma_SA^{ab,cd} as an (..., m, m, m, m) array (tests only)."""
    V = np.asarray(V)
    m = V.shape[-1]
    P = np.eye(m) - 1.0 / m
    Q = V @ P @ V @ P @ V
    t = (
        np.einsum("...ac,...bd->...abcd", V, Q)
        + np.einsum("...ad,...bc->...abcd", V, Q)
        + np.einsum("...bc,...ad->...abcd", V, Q)
        + np.einsum("...bd,...ac->...abcd", V, Q)
    )
    return t / (tau0 * m) ** 2
