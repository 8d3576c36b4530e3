"""Register-blocked building blocks of the per-system attention kernel.

One system of n tokens fits in L1/L2, so the three steps -- logits G = q k^T,
row softmax (or USA weights), and out += W v -- run as plain loops. The two
products are blocked 4 x 4: sixteen accumulators (or sixteen broadcast
weights) stay in registers while the innermost loop runs over the contiguous
feature axis, which LLVM vectorises. That reaches ~70 GFLOP/s per two cores on
n = 32, d = 128, where a BLAS call per system reaches ~30 (call overhead and
packing dominate at this size). Each product asks for 512-bit vectors where the
CPU has them (:func:`particles.sphere._numba_tools.wide_vectors`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._numba_tools import FASTMATH, fexp, wide_vectors

__all__ = ["gram_sym", "qk", "row_max", "softmax_rows", "wv_add"]


@nb.njit(fastmath=FASTMATH, cache=True)
def _dot(a, b):
    s = 0.0
    for c in range(a.shape[0]):
        s += a[c] * b[c]
    return s


@nb.njit(fastmath=FASTMATH, cache=True, inline="always")  # inlined: ~20% faster at d = 128
def _block44(a, b, i, j, G, mirror):
    """G[i:i+4, j:j+4] = a[i:i+4] b[j:j+4]^T (and its transpose into G[j:j+4, i:i+4])."""
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = 0.0
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = 0.0
    for c in range(a.shape[1]):
        x0 = a[i, c]
        x1 = a[i + 1, c]
        x2 = a[i + 2, c]
        x3 = a[i + 3, c]
        y0 = b[j, c]
        y1 = b[j + 1, c]
        y2 = b[j + 2, c]
        y3 = b[j + 3, c]
        a00 += x0 * y0
        a01 += x0 * y1
        a02 += x0 * y2
        a03 += x0 * y3
        a10 += x1 * y0
        a11 += x1 * y1
        a12 += x1 * y2
        a13 += x1 * y3
        a20 += x2 * y0
        a21 += x2 * y1
        a22 += x2 * y2
        a23 += x2 * y3
        a30 += x3 * y0
        a31 += x3 * y1
        a32 += x3 * y2
        a33 += x3 * y3
    G[i, j], G[i, j + 1], G[i, j + 2], G[i, j + 3] = a00, a01, a02, a03
    G[i + 1, j], G[i + 1, j + 1], G[i + 1, j + 2], G[i + 1, j + 3] = a10, a11, a12, a13
    G[i + 2, j], G[i + 2, j + 1], G[i + 2, j + 2], G[i + 2, j + 3] = a20, a21, a22, a23
    G[i + 3, j], G[i + 3, j + 1], G[i + 3, j + 2], G[i + 3, j + 3] = a30, a31, a32, a33
    if mirror:
        G[j, i], G[j + 1, i], G[j + 2, i], G[j + 3, i] = a00, a01, a02, a03
        G[j, i + 1], G[j + 1, i + 1], G[j + 2, i + 1], G[j + 3, i + 1] = a10, a11, a12, a13
        G[j, i + 2], G[j + 1, i + 2], G[j + 2, i + 2], G[j + 3, i + 2] = a20, a21, a22, a23
        G[j, i + 3], G[j + 1, i + 3], G[j + 2, i + 3], G[j + 3, i + 3] = a30, a31, a32, a33


@nb.njit(fastmath=FASTMATH, cache=True)
def gram_sym(x, G):
    """G = x x^T for x of shape (n, d); only the lower block triangle is computed."""
    wide_vectors()
    n = x.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        for j in range(0, i + 1, 4):
            _block44(x, x, i, j, G, True)
    for i in range(n4, n):
        for j in range(i + 1):
            G[i, j] = G[j, i] = _dot(x[i], x[j])


@nb.njit(fastmath=FASTMATH, cache=True)
def qk(q, k, G):
    """G = q k^T for q, k of shape (n, d_k)."""
    wide_vectors()
    n = q.shape[0]
    n4 = n - n % 4
    for i in range(0, n4, 4):
        for j in range(0, n4, 4):
            _block44(q, k, i, j, G, False)
    for i in range(n):
        for j in range(n4 if i < n4 else 0, n):
            G[i, j] = _dot(q[i], k[j])


@nb.njit(fastmath=FASTMATH, cache=True, inline="always")
def row_max(row, lim):
    """max(row[:lim]) (-inf when lim = 0), NaN entries skipped.

    Eight running maxima: a single one is a chain of dependent compare-selects that
    LLVM does not vectorise (Numba's float ``max`` is not a reduction it recognises),
    ~1 ns an entry; eight independent ones run ~4x faster. A NaN entry is skipped here
    but not lost: the softmax that subtracts this maximum turns it into NaN weights.
    """
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -np.inf
    c = 0
    while c + 8 <= lim:
        v0, v1, v2, v3 = row[c], row[c + 1], row[c + 2], row[c + 3]
        v4, v5, v6, v7 = row[c + 4], row[c + 5], row[c + 6], row[c + 7]
        m0 = v0 if v0 > m0 else m0
        m1 = v1 if v1 > m1 else m1
        m2 = v2 if v2 > m2 else m2
        m3 = v3 if v3 > m3 else m3
        m4 = v4 if v4 > m4 else m4
        m5 = v5 if v5 > m5 else m5
        m6 = v6 if v6 > m6 else m6
        m7 = v7 if v7 > m7 else m7
        c += 8
    while c < lim:
        v0 = row[c]
        m0 = v0 if v0 > m0 else m0
        c += 1
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@nb.njit(fastmath=FASTMATH, cache=True)
def softmax_rows(G, beta, mode, causal, scale):
    """Logits q_i.k_j -> attention weights, in place (n x n).

    mode 0 (SA): scale * softmax_j(beta G_ij); mode 1 (USA, GLPR):
    scale * exp(beta G_ij) / n; mode 2 (USA, META): scale * exp(beta (G_ij - 1)) / n.
    With ``causal`` the weights of j > i are zero (and excluded from the softmax).
    """
    n = G.shape[0]
    shift = beta if mode == 2 else 0.0
    for i in range(n):
        row = G[i]
        jmax = i + 1 if causal else n
        if mode == 0:
            m = -np.inf
            for j in range(jmax):
                m = max(m, row[j])
            z = 0.0
            for j in range(jmax):
                e = fexp(beta * (row[j] - m))
                row[j] = e
                z += e
            f = scale / z
        else:
            for j in range(jmax):
                row[j] = fexp(beta * row[j] - shift)
            f = scale / n
        for j in range(jmax):
            row[j] *= f
        for j in range(jmax, n):
            row[j] = 0.0


@nb.njit(fastmath=FASTMATH, cache=True)
def wv_add(W, v, out):
    """out += W v for W (n x n), v and out (n x d_v); blocked 4 rows x 4 keys."""
    wide_vectors()
    n, dv = v.shape
    n4 = n - n % 4
    for i in range(0, n4, 4):
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for j in range(0, n4, 4):
            w00, w01, w02, w03 = W[i, j], W[i, j + 1], W[i, j + 2], W[i, j + 3]
            w10, w11, w12, w13 = W[i + 1, j], W[i + 1, j + 1], W[i + 1, j + 2], W[i + 1, j + 3]
            w20, w21, w22, w23 = W[i + 2, j], W[i + 2, j + 1], W[i + 2, j + 2], W[i + 2, j + 3]
            w30, w31, w32, w33 = W[i + 3, j], W[i + 3, j + 1], W[i + 3, j + 2], W[i + 3, j + 3]
            v0, v1, v2, v3 = v[j], v[j + 1], v[j + 2], v[j + 3]
            for c in range(dv):
                y0, y1, y2, y3 = v0[c], v1[c], v2[c], v3[c]
                o0[c] += w00 * y0 + w01 * y1 + w02 * y2 + w03 * y3
                o1[c] += w10 * y0 + w11 * y1 + w12 * y2 + w13 * y3
                o2[c] += w20 * y0 + w21 * y1 + w22 * y2 + w23 * y3
                o3[c] += w30 * y0 + w31 * y1 + w32 * y2 + w33 * y3
        for j in range(n4, n):
            for r in range(4):
                w = W[i + r, j]
                orow = out[i + r]
                vj = v[j]
                for c in range(dv):
                    orow[c] += w * vj[c]
    for i in range(n4, n):
        orow = out[i]
        for j in range(n):
            w = W[i, j]
            vj = v[j]
            for c in range(dv):
                orow[c] += w * vj[c]
