"""The large-width map of a general n x n Gram matrix C (no permutation symmetry).

Attention: with Ubar the Gram of the attention input (Cbar_ik = C_ik / sqrt(C_ii C_kk)
under layer norm, C without), the logits are Gaussian with Cov(S_ij, S_kl) =
sigma_A^2 Ubar_ik Ubar_jl, i.e. S = sigma_A L Z L^T with L = Ubar^{1/2}, and

    C_A = sigma_V^2 E[A Ubar A^T],   C_Y = beta_A^2 C + alpha_A^2 C_A.

MLP: with the MLP input Gram Ubar_Y, (h_i, h_k) ~ N(0, sigma_w^2 Ubar_Y + sigma_b^2), and
C' = beta_M^2 C_Y + alpha_M^2 sigma_2^2 K(Sigma_ii, Sigma_kk, Sigma_ik) entrywise.

The expectation over logits is a Monte Carlo average with common random numbers (the
same Z for every C, shared with :func:`.overlaps.attention_moments` for equal
``samples`` and ``seed``), so the map is a smooth deterministic function of C and at a
permutation-symmetric C it reproduces the (q, p) map computed from the same samples.

References
----------
MODELS.md section 3 (logit covariance; "for a general n x n C where the overlaps allow it").
"""

from __future__ import annotations

import numpy as np

from integrators.validation import ParameterError, check_positive_int
from .config import SignalPropParams
from .kernels import kernel
from .overlaps import _standard_normals

__all__ = ["gram_jacobian_eigenvalues", "gram_map", "iterate_gram"]


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, u = np.linalg.eigh(m)
    return (u * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(u, -1, -2)


def _normalised(c: np.ndarray) -> np.ndarray:
    dg = np.sqrt(np.einsum("...ii->...i", c))
    return c / (dg[..., :, None] * dg[..., None, :])


def _check_gram(c, n_expected: int) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2] or c.shape[-1] != n_expected:
        raise ParameterError("C", f"expected (..., {n_expected}, {n_expected}) Gram matrices, got shape {c.shape}")
    if not np.all(np.isfinite(c)) or not np.allclose(c, np.swapaxes(c, -1, -2), atol=1e-10):
        raise ParameterError("C", "must be finite and symmetric")
    if np.any(np.einsum("...ii->...i", c) <= 0):
        raise ParameterError("C", "diagonal entries (squared token norms / d) must be > 0")
    return c


def gram_map(params: SignalPropParams, C, samples: int = 4096, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One block on Gram matrices C (..., n, n): returns (C_Y after attention, C' after the block)."""
    c = _check_gram(C, params.n)
    samples = check_positive_int("samples", samples, minimum=2)
    n = params.n
    c_y = c
    if params.alpha_A > 0:
        ubar = _normalised(c) if params.layer_norm else c
        root = _sqrtm_psd(ubar)[..., None, :, :]  # (..., 1, n, n)
        z = _standard_normals(n, samples, int(seed))
        logits = params.sigma_A * root @ z @ np.swapaxes(root, -1, -2)
        logits -= logits.max(axis=-1, keepdims=True)
        a = np.exp(logits)
        a /= a.sum(axis=-1, keepdims=True)
        c_att = params.sigma_V**2 * np.mean(a @ ubar[..., None, :, :] @ np.swapaxes(a, -1, -2), axis=-3)
        c_y = params.beta_A**2 * c + params.alpha_A**2 * c_att
    elif params.beta_A != 1.0:
        c_y = params.beta_A**2 * c
    c_new = c_y
    if params.alpha_M > 0:
        u = _normalised(c_y) if params.layer_norm else c_y
        sig = params.sigma_w**2 * u + params.sigma_b**2
        dg = np.einsum("...ii->...i", sig)
        k = kernel(params.phi, dg[..., :, None], dg[..., None, :], sig)
        c_new = params.beta_M**2 * c_y + params.alpha_M**2 * params.sigma_2**2 * k
    elif params.beta_M != 1.0:
        c_new = params.beta_M**2 * c_y
    return c_y, c_new


def iterate_gram(params: SignalPropParams, C0, depth: int, samples: int = 4096, seed: int = 0) -> np.ndarray:
    """Gram matrices at block inputs, (depth + 1, ..., n, n)."""
    depth = check_positive_int("depth", depth, minimum=0)
    out = [_check_gram(C0, params.n)]
    for _ in range(depth):
        out.append(gram_map(params, out[-1], samples, seed)[1])
    return np.stack(out)


def gram_jacobian_eigenvalues(params: SignalPropParams, C, samples: int = 1024, seed: int = 0, rel: float = 1e-5) -> np.ndarray:
    """Eigenvalues of the block map's Jacobian at one Gram matrix C (n, n), all n(n+1)/2 directions.

    Central differences along symmetric unit perturbations of each entry (i <= j); the
    map is smooth in C (common random numbers). At the regular simplex this gives its
    stability against every perturbation, not only permutation-symmetric ones: stable
    when all moduli are < 1. Sorted by decreasing modulus.
    """
    c = _check_gram(C, params.n)
    if c.ndim != 2:
        raise ParameterError("C", f"expected one (n, n) Gram matrix, got shape {c.shape}")
    n = params.n
    iu = np.triu_indices(n)
    h = rel * float(np.mean(np.diag(c)))
    dirs = np.zeros((iu[0].size, n, n))
    dirs[np.arange(iu[0].size), iu[0], iu[1]] = 1.0
    dirs[np.arange(iu[0].size), iu[1], iu[0]] = 1.0
    plus = gram_map(params, c + h * dirs, samples, seed)[1][:, iu[0], iu[1]]
    minus = gram_map(params, c - h * dirs, samples, seed)[1][:, iu[0], iu[1]]
    jac = ((plus - minus) / (2 * h)).T  # (out entry, in entry)
    eig = np.linalg.eigvals(jac)
    return eig[np.argsort(-np.abs(eig))]
