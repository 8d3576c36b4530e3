"""Numba kernels of the attention field (CPU, parallel, float64 or float32).

Two kernels, one field (GLPR eqs. 2.3-2.4, 2.7, 3.3; META; CAUSAL):

* a **flash kernel** for long sequences. Each task is one (system, block of
  ``br`` query rows); it walks over blocks of ``bc`` keys, computes the logits
  with BLAS, keeps a running row maximum m and normaliser z and rescales its
  accumulator by exp(m_old - m_new) whenever the maximum grows (online softmax,
  Milakov & Gimelshein 2018; flash attention, Dao et al. 2022), and adds
  P @ V with BLAS. Memory is O(br bc) per task: no n x n matrix ever exists.
* a **per-system kernel** for short sequences (the ensemble workload: many
  systems of a few dozen tokens). One system's Gram matrix, softmax, W V,
  projection -- and, for :func:`euler_step_numba`, the Euler update and the
  renormalisation -- all happen while the system sits in L1/L2, in 4 x 4
  register-blocked loops that need no BLAS call.

Parameters arrive as arguments (``beta``, normalisation ``mode``, ``causal``),
so changing them never recompiles; every kernel has ``cache=True``.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, eqs. (2.3),
(2.4), (2.7), (3.3). Milakov & Gimelshein, "Online normalizer calculation for
softmax", arXiv:1805.02867. Dao et al., "FlashAttention", arXiv:2205.14135.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from particles.sphere._numba_blocks import gram_sym, qk, row_max, softmax_rows, wv_add
from ._numba_tools import FASTMATH, blas_single_thread, fexp, gemm, wide_vectors

__all__ = ["SMALL_N", "attention_numba", "euler_step_numba"]

#: Sequences up to this length use the per-system kernel, longer ones the flash kernel.
SMALL_N = 256
_BR, _BC = 128, 512  # query rows x keys per flash block: 512 KiB of logits in float64


@nb.njit(fastmath=FASTMATH, cache=True)
def _epilogue_row(xr, orow, base_row, has_base, project, euler, dt, normalize):
    """Row i of the result: base + attention, projected; with ``euler``, x + dt * that, renormalised if asked."""
    d = orow.shape[0]
    if has_base:
        for c in range(d):
            orow[c] += base_row[c]
    # one pass for <x, o>, |x|^2, |o|^2; then y = (1 - dt s) x + dt o has
    # |y|^2 = (1 - dt s)^2 |x|^2 + 2 dt (1 - dt s) s + dt^2 |o|^2 in closed form
    s = xx = oo = 0.0
    for c in range(d):
        s += xr[c] * orow[c]
        xx += xr[c] * xr[c]
        oo += orow[c] * orow[c]
    if not project:
        s = 0.0
    if not euler:
        if project:
            for c in range(d):
                orow[c] -= s * xr[c]
        return
    a = 1.0 - dt * s
    f = 1.0
    if normalize:
        f = 1.0 / math.sqrt(a * a * xx + 2.0 * dt * a * s + dt * dt * oo)
    a *= f
    e = dt * f
    for c in range(d):
        orow[c] = a * xr[c] + e * orow[c]


@nb.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _small_kernel(x, q, k, v, base, has_base, beta, mode, causal, scale, sym, project, euler, dt, normalize, per, out):
    B, n = x.shape[0], x.shape[1]
    H = max(q.shape[0], k.shape[0], v.shape[0])
    # prange over chunks of ``per`` systems, taken dynamically (see _run_small);
    # the scratch lives as long as a chunk. Each system is computed into the
    # scratch and copied out last, so ``out`` may be ``x`` (an in-place step):
    # system b reads only its own rows.
    for ch in nb.prange((B + per - 1) // per):
        G = np.empty((n, n))
        ob = np.empty((n, out.shape[2]), dtype=out.dtype)
        for b in range(ch * per, min(B, (ch + 1) * per)):
            ob[:, :] = 0.0
            for h in range(H):
                qb = q[min(h, q.shape[0] - 1), b]
                kb = k[min(h, k.shape[0] - 1), b]
                vb = v[min(h, v.shape[0] - 1), b]
                if sym:
                    gram_sym(qb, G)
                else:
                    qk(qb, kb, G)
                softmax_rows(G, beta, mode, causal, scale)
                wv_add(G, vb, ob)
            xb = x[b]
            for i in range(n):
                _epilogue_row(xb[i], ob[i], base[b * has_base, i], has_base, project, euler, dt, normalize)
            out[b, :, :] = ob


@nb.njit(parallel=True, fastmath=FASTMATH, cache=True)
def _flash_kernel(x, q, k, v, base, has_base, beta, mode, causal, scale, project, br, bc, out):
    B, n, dk = q.shape[1], q.shape[2], q.shape[3]
    dv = v.shape[3]
    H = max(q.shape[0], k.shape[0], v.shape[0])
    kind = ord("d") if q.itemsize == 8 else ord("s")
    nrb = (n + br - 1) // br
    shift = beta if mode == 2 else 0.0
    for task in nb.prange(B * nrb):
        wide_vectors()
        b = task // nrb
        t = task - b * nrb
        # zig-zag over row blocks: under a causal mask row block ib costs ~ib;
        # interleaving cheap and dear blocks evens out the chunks threads take.
        ib = t // 2 if t % 2 == 0 else nrb - 1 - t // 2
        i0 = ib * br
        m = min(br, n - i0)
        S = np.empty(m * bc, dtype=q.dtype)
        acc = np.empty((m, dv), dtype=q.dtype)
        tot = np.zeros((m, dv))
        one = np.ones(1, dtype=q.dtype)
        zero = np.zeros(1, dtype=q.dtype)
        alpha = np.full(1, beta, dtype=q.dtype)
        mx = np.empty(m)
        z = np.empty(m)
        jend = i0 + m if causal else n
        for h in range(H):
            qh = q[min(h, q.shape[0] - 1), b]
            kh = k[min(h, k.shape[0] - 1), b]
            vh = v[min(h, v.shape[0] - 1), b]
            acc[:, :] = 0.0
            mx[:] = -np.inf
            z[:] = 0.0
            for j0 in range(0, jend, bc):
                w = min(bc, jend - j0)
                # S (m x w, row-major) = beta * q_rows k_block^T
                gemm(
                    kind,
                    ord("T"),
                    ord("N"),
                    w,
                    m,
                    dk,
                    alpha.ctypes,
                    kh[j0:].ctypes,
                    dk,
                    qh[i0:].ctypes,
                    dk,
                    zero.ctypes,
                    S.ctypes,
                    w,
                )
                for r in range(m):
                    row = S[r * w : (r + 1) * w]
                    lim = min(w, i0 + r - j0 + 1) if causal else w
                    if lim <= 0:
                        row[:] = 0.0
                        continue
                    if mode == 0:
                        rm = row_max(row, lim)
                        if rm > mx[r]:
                            a = math.exp(mx[r] - rm)
                            z[r] *= a
                            for c in range(dv):
                                acc[r, c] *= a
                            mx[r] = rm
                        mr = mx[r]
                        s = 0.0
                        for c in range(lim):
                            e = fexp(row[c] - mr)
                            row[c] = e
                            s += e
                        z[r] += s
                    else:
                        for c in range(lim):
                            row[c] = fexp(row[c] - shift)
                    for c in range(lim, w):
                        row[c] = 0.0
                # acc (m x dv) += P (m x w) v_block (w x dv)
                gemm(
                    kind,
                    ord("N"),
                    ord("N"),
                    dv,
                    m,
                    w,
                    one.ctypes,
                    vh[j0:].ctypes,
                    dv,
                    S.ctypes,
                    w,
                    one.ctypes,
                    acc.ctypes,
                    dv,
                )
            for r in range(m):
                f = scale / z[r] if mode == 0 else scale / n
                for c in range(dv):
                    tot[r, c] += f * acc[r, c]
        xb = x[b]
        for r in range(m):
            orow = out[b, i0 + r]
            for c in range(dv):
                orow[c] = tot[r, c]
            _epilogue_row(xb[i0 + r], orow, base[b * has_base, i0 + r], has_base, project, False, 0.0, False)


def _stack(x: np.ndarray, P) -> np.ndarray:
    """x P_h^T for every head: (H, batch, n, rows); the identity (None) is a view of x, not a copy."""
    if P is None:
        return x[None]
    P = np.asarray(P, dtype=x.dtype)
    return np.ascontiguousarray(np.matmul(x[None], np.swapaxes(P, -1, -2)[:, None]))


def _no_base(x):
    # a one-system dummy: kernels index base[b * has_base], so it is never read
    return np.zeros((1,) + x.shape[1:], dtype=x.dtype)


def attention_numba(x, Q, K, V, heads: int, beta: float, mode: int, causal: bool, *, base=None, project: bool = False):
    """Sum over heads of the attention term, plus ``base``, optionally projected on T_x S^{d-1}.

    Parameters
    ----------
    x : (batch, n, d) float64 or float32, C-contiguous.
    Q, K : (heads, d_k, d) arrays or None (identity); V : (heads, d, d) or None.
    heads : number of identical heads when Q, K, V are all None (the term is scaled by it).
    beta, mode, causal : inverse temperature, 0 = SA / 1 = USA (GLPR) / 2 = USA (META), mask.
    base : optional (batch, n, d) term added before the projection (the feed-forward term).
    project : apply P_x v = v - <x, v> x row by row.

    Returns
    -------
    (batch, n, d) array of x's dtype.
    """
    x = np.ascontiguousarray(x)
    identity = Q is None and K is None and V is None
    q = _stack(x, Q)
    k = q if (K is None and Q is None) else _stack(x, K)
    v = _stack(x, V)
    scale = float(heads) if identity else 1.0
    has_base = base is not None
    base = np.ascontiguousarray(base, dtype=x.dtype) if has_base else _no_base(x)
    out = np.empty_like(x)
    beta_t = float(beta)
    n = x.shape[1]
    if n <= SMALL_N:
        flags = (int(mode), bool(causal), scale, k is q, bool(project))
        _run_small(x, q, k, v, base, has_base, beta_t, *flags, False, 0.0, False, out)
        return out
    nt = nb.get_num_threads()
    br = _BR
    while br > 16 and x.shape[0] * ((n + br - 1) // br) < 2 * nt:
        br //= 2  # enough tasks to keep every thread busy
    with blas_single_thread(), nb.parallel_chunksize(1):
        _flash_kernel(x, q, k, v, base, has_base, beta_t, int(mode), bool(causal), scale, bool(project), br, _BC, out)
    return out


def _run_small(x, q, k, v, base, has_base, beta, mode, causal, scale, sym, project, euler, dt, normalize, out):
    # Threads take chunks of systems as they finish (dynamic scheduling), so a
    # thread that the OS preempts does not hold the others up at the end.
    per = max(1, x.shape[0] // (16 * nb.get_num_threads()))
    with nb.parallel_chunksize(1):
        _small_kernel(
            x, q, k, v, base, has_base, beta, mode, causal, scale, sym, project, euler, dt, normalize, per, out
        )


def euler_step_numba(
    x, dt: float, beta: float, mode: int, causal: bool, heads: int, projected: bool, out, steps: int = 1
):
    """``steps`` fused Euler steps of the identity-parameter flow: out = retract(x + dt * field(x)).

    The field is the projected (``projected=True``) or raw attention term with
    Q = K = V = I and ``heads`` identical heads. ``out`` may be ``x`` itself (an
    in-place step) but must not overlap it otherwise. With ``steps`` > 1 each
    system takes all its steps before the next one starts (it stays in cache).
    """
    from ._numba_euler import euler_kernel

    # dynamic chunks of systems, as in _run_small; with several steps a system is work
    # enough for a chunk (measured: one system a chunk 10% faster than 64 at 64 steps)
    per = max(1, x.shape[0] // (16 * nb.get_num_threads() * int(steps)))
    with nb.parallel_chunksize(1):
        euler_kernel(
            x, float(beta), int(mode), bool(causal), float(heads), bool(projected), float(dt), int(steps), per, out
        )
    return out
