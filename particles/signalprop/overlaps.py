"""Attention overlaps s(c), x(c) and softmax-Jacobian moments by Monte Carlo over Gaussian logits.

At large width the logits of the reference attention are jointly Gaussian with
Cov(S_ij, S_kl) = sigma^2 Cbar_ik Cbar_jl (MODELS.md section 3), Cbar the Gram
matrix of the attention input. For the permutation-symmetric Cbar =
(1 - c) I + c 1 1^T a square root is L = sqrt(1 - c) I + (a / n) 1 1^T with
a = sqrt(1 - c + n c) - sqrt(1 - c), and S = sigma L Z L^T for Z with iid N(0, 1)
entries. Dropping the terms constant along each row (softmax ignores them):

    S_ij = sigma [(1 - c) Z_ij + sqrt(1 - c) a m_j],   m_j = (1/n) sum_k Z_kj.

With A = softmax_rows(S) and J_i = diag(A_i) - A_i A_i^T the softmax Jacobian of row i:

    s(c)   = E sum_j A_ij^2,            x(c)   = E sum_j A_ij A_kj       (i != k)
    t_d(c) = E tr(J_i J_i),             t_o(c) = E tr(J_i J_k)           (i != k)

s, x give the forward map of the Gram matrix through attention; t_d, t_o give
the logit-perturbation part of the gradient map. All four come from one pass
over the same samples (common random numbers across c, so the estimates are
smooth in c and the map built on them is a deterministic smooth function).
Each is reported with its Monte Carlo standard error. Exact values: s = x = 1/n
and t_d = t_o = (n - 1)/n^2 at c = 1; x = 1/n at c = 0 (independent rows).

References
----------
MODELS.md section 3 (logit covariance, q_A and p_A through s and x);
Cowsik et al., arXiv:2403.02579, section 3 (attention update of the dot-product matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from integrators.validation import ParameterError, check_nonnegative, check_positive_int

__all__ = ["MOMENT_NAMES", "AttentionMoments", "OverlapTable", "attention_moments", "overlap_table"]

MOMENT_NAMES = ("s", "x", "t_d", "t_o")


@dataclass(frozen=True)
class AttentionMoments:
    """Moments of the random softmax attention at cosines ``c`` (arrays of c's shape)."""

    c: np.ndarray
    s: np.ndarray
    x: np.ndarray
    t_d: np.ndarray
    t_o: np.ndarray
    s_err: np.ndarray
    x_err: np.ndarray
    t_d_err: np.ndarray
    t_o_err: np.ndarray


@lru_cache(maxsize=8)
def _standard_normals(n: int, samples: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((samples, n, n))
    z.setflags(write=False)
    return z


def _check_c(c: np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    lo = -1.0 / (n - 1)
    if np.any(~np.isfinite(c)) or np.any(c < lo - 1e-12) or np.any(c > 1.0 + 1e-12):
        raise ParameterError("c", f"cosines must lie in [-1/(n-1), 1] = [{lo:.4g}, 1] (Gram matrix PSD)")
    return np.clip(c, lo, 1.0)


def _moments_one(z: np.ndarray, c: float, sigma: float) -> np.ndarray:
    """Per-sample (s, x, t_d, t_o), shape (4, samples), at one cosine c."""
    n = z.shape[-1]
    r = np.sqrt(max(1.0 - c, 0.0))
    a = np.sqrt(max(1.0 - c + n * c, 0.0)) - r
    logits = sigma * ((1.0 - c) * z + (r * a) * z.mean(axis=1, keepdims=True))
    logits -= logits.max(axis=-1, keepdims=True)
    A = np.exp(logits)
    A /= A.sum(axis=-1, keepdims=True)
    sq = A * A
    s_i = sq.sum(axis=-1)  # sum_j A_ij^2, (samples, n)
    col = A.sum(axis=-2)  # column sums
    s = s_i.mean(axis=-1)
    x = ((col * col).sum(axis=-1) - s_i.sum(axis=-1)) / (n * (n - 1))
    # tr(J_i J_k) = (A A^T)_ik - (A (A.A)^T)_ik - ((A.A) A^T)_ik + (A A^T)_ik^2; only the
    # Frobenius norm of A A^T needs an O(n^3) product, everything else is O(n^2)
    t_ii = s_i - 2.0 * (sq * A).sum(axis=-1) + s_i * s_i
    gram = A @ np.swapaxes(A, -1, -2)
    t_all = (col * col).sum(axis=-1) - 2.0 * (col * sq.sum(axis=-2)).sum(axis=-1) + (gram * gram).sum(axis=(-1, -2))
    t_d = t_ii.mean(axis=-1)
    t_o = (t_all - t_ii.sum(axis=-1)) / (n * (n - 1))
    return np.stack([s, x, t_d, t_o])


def attention_moments(c, n: int, sigma, samples: int = 8192, seed: int = 0) -> AttentionMoments:
    """Monte Carlo moments of softmax attention over Gaussian logits at cosines ``c``.

    Parameters
    ----------
    c : cosine(s) of the attention input, in [-1/(n-1), 1]; any shape.
    n : number of tokens (>= 2).
    sigma : logit standard deviation sigma_A (>= 0), scalar or broadcastable to ``c``
        (without layer norm the effective value is sigma_A q).
    samples : number of Monte Carlo draws of the n x n logit matrix; the standard
        error of each moment shrinks as samples^{-1/2}.
    seed : seed of the common random numbers (the same Z for every c).

    Returns
    -------
    AttentionMoments with s, x, t_d, t_o and their standard errors.
    """
    n = check_positive_int("n", n, minimum=2)
    samples = check_positive_int("samples", samples, minimum=2)
    c = _check_c(c, n)
    sig = np.asarray(sigma, dtype=np.float64)
    if np.any(~np.isfinite(sig)) or np.any(sig < 0):
        raise ParameterError("sigma", "logit standard deviation must be finite and >= 0")
    c_b, sig_b = np.broadcast_arrays(c, sig)
    z = _standard_normals(n, samples, int(seed))
    mean = np.empty((4,) + c_b.shape)
    err = np.empty((4,) + c_b.shape)
    for idx in np.ndindex(c_b.shape):
        vals = _moments_one(z, float(c_b[idx]), float(sig_b[idx]))
        mean[(slice(None),) + idx] = vals.mean(axis=-1)
        err[(slice(None),) + idx] = vals.std(axis=-1, ddof=1) / np.sqrt(samples)
    return AttentionMoments(c_b.copy(), *mean, *err)


class OverlapTable:
    """s, x, t_d, t_o on a grid of c for fixed (n, sigma_A), computed once and interpolated.

    The grid is Chebyshev-spaced on [-1/(n-1), 1] (dense near both ends, where
    the moments vary fastest in relative terms) and interpolated with cubic
    splines; the stated error of an interpolated value is the interpolated
    Monte Carlo standard error (spline error is far below it on the default grid).
    Build through :func:`overlap_table`, which caches tables in memory.
    """

    def __init__(self, n: int, sigma: float, samples: int = 8192, points: int = 65, seed: int = 0):
        from scipy.interpolate import CubicSpline

        self.n = check_positive_int("n", n, minimum=2)
        self.sigma = check_nonnegative("sigma", sigma)
        self.samples = check_positive_int("samples", samples, minimum=2)
        self.points = check_positive_int("points", points, minimum=4)
        self.seed = int(seed)
        lo = -1.0 / (self.n - 1)
        k = np.arange(self.points)
        grid = lo + (1.0 - lo) * 0.5 * (1.0 - np.cos(np.pi * k / (self.points - 1)))
        grid[0], grid[-1] = lo, 1.0
        m = attention_moments(grid, self.n, self.sigma, self.samples, self.seed)
        # exact endpoint values remove the Monte Carlo error where they are known
        m.s[-1] = m.x[-1] = 1.0 / self.n
        m.t_d[-1] = m.t_o[-1] = (self.n - 1) / self.n**2
        self.grid = grid
        self.values = {name: getattr(m, name) for name in MOMENT_NAMES}
        self.errors = {name: getattr(m, name + "_err") for name in MOMENT_NAMES}
        self._splines = {name: CubicSpline(grid, v) for name, v in self.values.items()}
        self._err_splines = {name: CubicSpline(grid, v) for name, v in self.errors.items()}

    def __call__(self, c) -> AttentionMoments:
        c = _check_c(c, self.n)
        vals = [self._splines[k](c) for k in MOMENT_NAMES]
        errs = [np.abs(self._err_splines[k](c)) for k in MOMENT_NAMES]
        return AttentionMoments(c, *vals, *errs)

    def max_error(self) -> float:
        """Largest Monte Carlo standard error of s or x on the grid."""
        return float(max(self.errors["s"].max(), self.errors["x"].max()))


@lru_cache(maxsize=32)
def _cached_table(n: int, sigma: float, samples: int, points: int, seed: int) -> OverlapTable:
    return OverlapTable(n, sigma, samples, points, seed)


def overlap_table(n: int, sigma: float, samples: int = 8192, points: int = 65, seed: int = 0) -> OverlapTable:
    """The :class:`OverlapTable` for (n, sigma, samples, points, seed), built once per process."""
    return _cached_table(int(n), float(sigma), int(samples), int(points), int(seed))
