"""Numba kernels for the attention term (CPU, parallel over batch x tokens).

One pass over the keys per query with an online (streamed) softmax: a running
maximum m, running normaliser z and accumulator are rescaled by exp(m_old - m_new)
whenever the maximum grows (Milakov & Gimelshein 2018; the flash-attention
recurrence). Memory is O(batch n d): no n x n matrix is ever formed.
Parameters arrive as arguments so a new beta or mode never triggers a recompile.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["attend", "attention_numba"]


@nb.njit(parallel=True, cache=True, fastmath=False)
def _attend_kernel(q, k, v, beta, mode, causal, out):
    B, n, dk = q.shape
    dv = v.shape[2]
    for idx in nb.prange(B * n):
        b = idx // n
        i = idx - b * n
        jmax = i + 1 if causal else n
        acc = np.zeros(dv, dtype=out.dtype)
        if mode == 0:
            m = -np.inf
            z = 0.0
            for j in range(jmax):
                s = 0.0
                for c in range(dk):
                    s += q[b, i, c] * k[b, j, c]
                s *= beta
                if s > m:
                    scale = math.exp(m - s)
                    z *= scale
                    for c in range(dv):
                        acc[c] *= scale
                    m = s
                w = math.exp(s - m)
                z += w
                for c in range(dv):
                    acc[c] += w * v[b, j, c]
            for c in range(dv):
                out[b, i, c] += acc[c] / z
        else:
            shift = beta if mode == 2 else 0.0
            for j in range(jmax):
                s = 0.0
                for c in range(dk):
                    s += q[b, i, c] * k[b, j, c]
                w = math.exp(beta * s - shift)
                for c in range(dv):
                    acc[c] += w * v[b, j, c]
            for c in range(dv):
                out[b, i, c] += acc[c] / n


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, beta: float, mode: int, causal: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Add softmax/USA attention of (q, k, v) to ``out``; shapes (B, n, d_k), (B, n, d_k), (B, n, d_v)."""
    q = np.ascontiguousarray(q)
    k = np.ascontiguousarray(k)
    v = np.ascontiguousarray(v)
    if out is None:
        out = np.zeros(v.shape, dtype=v.dtype)
    _attend_kernel(q, k, v, q.dtype.type(beta), int(mode), bool(causal), out)
    return out


def attention_numba(x, Q, K, V, heads: int, beta: float, mode: int, causal: bool) -> np.ndarray:
    """Sum over heads of the attention term; Q, K, V lists of per-head matrices or None (identity)."""
    out = np.zeros_like(x)
    for h in range(heads):
        q = x if Q is None else x @ Q[h].T
        k = x if K is None else x @ K[h].T
        v = x if V is None else x @ V[h].T
        attend(q, k, v, beta, mode, causal, out)
    return out
