"""The fused Euler step of the identity-parameter flow, one system at a time (Numba).

    x_new_i = retract(x_i + dt * P_{x_i}(scale * sum_j W_ij x_j)),

with W the SA softmax of beta <x_i, x_j> (row-normalised) or the USA weights
exp(beta <x_i, x_j> - shift) / n (GLPR eqs. 2.3-2.4, 3.3; META), under a causal
mask when asked, and ``scale`` the number of identical heads.

This is :func:`particles.sphere._numba_kernels.euler_step_numba`'s kernel. It
computes what the general per-system kernel computes with ``euler=True``, with
less work per system, since Q = K = V = I makes the Gram matrix G = X X^T do
three jobs:

* on the sphere the softmax shift is G_ii (no max pass);
* the row normalisation 1 / z_i is not applied to the n x n weights but, as a
  per-row factor, to the n x d result (``c_i`` below);
* the projection coefficient <x_i, A_i> = c_i sum_j E_ij G_ij is summed while
  the weights E are formed, and |x_i|^2 = G_ii: the epilogue needs only |A_i|^2
  (one dot) before it writes the new row;
* the new row is formed in the scratch row of A_i and copied out: every row of x
  has been read by then, so ``out`` may be ``x`` (an in-place step), and no loop
  reads and writes one row (which LLVM would not vectorise).

Measured on one core (n = 32, d = 128, float64): 14.0 us per system-step against
16.5 us for the general kernel's Euler epilogue (which the tests compare it with);
11.1 us with several steps per call (the system stays in cache) and 512-bit
vectors (:func:`particles.sphere._numba_tools.wide_vectors`).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._numba_blocks import gram_sym, wv_add
from ._numba_tools import FASTMATH, fexp, wide_vectors

__all__ = ["euler_kernel"]


@nb.njit(fastmath=FASTMATH, cache=True)
def _weights(G, beta, mode, causal, on_sphere, coef, s):
    """G (n x n logits <x_i, x_j>) -> unnormalised weights E, in place.

    coef[i] is the row's normaliser (1 / z_i for SA, 1 / n for USA) and
    s[i] = sum_j E_ij G_ij (so that <x_i, sum_j W_ij x_j> = coef[i] s[i]).
    Masked entries (j > i under ``causal``) are zero. ``on_sphere``: the rows
    of X are unit vectors, so the softmax shift is the diagonal.
    """
    wide_vectors()
    n = G.shape[0]
    shift = beta if mode == 2 else 0.0
    for i in range(n):
        row = G[i]
        jmax = i + 1 if causal else n
        si = 0.0
        if mode == 0:
            if on_sphere:
                # G_ii = |x_i|^2 is the row maximum (Cauchy-Schwarz, to rounding): no max pass
                m = row[i]
            else:
                # one accumulator: these rows are short (n <= 256), and the inlined
                # eight-lane row_max made the whole kernel slower (11.1 -> 12.7 us, one run each)
                m = -np.inf
                for j in range(jmax):
                    m = max(m, row[j])
            z = 0.0
            for j in range(jmax):
                g = row[j]
                e = fexp(beta * (g - m))
                row[j] = e
                z += e
                si += e * g
            coef[i] = 1.0 / z
        else:
            for j in range(jmax):
                g = row[j]
                e = fexp(beta * g - shift)
                row[j] = e
                si += e * g
            coef[i] = 1.0 / n
        s[i] = si
        for j in range(jmax, n):
            row[j] = 0.0


@nb.njit(fastmath=FASTMATH, cache=True, inline="always")
def _system_step(xb, ob, G, acc, coef, s, xx, beta, mode, causal, scale, project, dt):
    """ob = retract(xb + dt * field(xb)) for one system (n, d); ``ob`` may be ``xb``.

    G (n x n), acc (n x d), coef, s, xx (n) are scratch.
    """
    wide_vectors()
    n, d = xb.shape
    gram_sym(xb, G)
    for i in range(n):
        xx[i] = G[i, i]
    _weights(G, beta, mode, causal, project, coef, s)
    acc[:, :] = 0.0
    wv_add(G, xb, acc)
    for i in range(n):
        f = scale * coef[i]  # A_i = f * acc_i
        ar = acc[i]
        a = 1.0
        g = dt * f
        if project:
            si = f * s[i]  # <x_i, A_i>
            oo = 0.0
            for c in range(d):
                oo += ar[c] * ar[c]
            oo *= f * f
            a = 1.0 - dt * si
            # |a x + dt A|^2 = a^2 |x|^2 + 2 a dt <x, A> + dt^2 |A|^2
            nrm = 1.0 / math.sqrt(a * a * xx[i] + 2.0 * dt * a * si + dt * dt * oo)
            a *= nrm
            g *= nrm
        # the new row is formed in the scratch row and then copied: written straight
        # into ``ob``, which is ``xb`` in an in-place step, the loop would read and write
        # one row, fail LLVM's runtime alias check and run unvectorised (~3x slower)
        xr = xb[i]
        for c in range(d):
            ar[c] = a * xr[c] + g * ar[c]
        yr = ob[i]
        for c in range(d):
            yr[c] = ar[c]


@nb.njit(parallel=True, fastmath=FASTMATH, cache=True)
def euler_kernel(x, beta, mode, causal, scale, project, dt, steps, per, out):
    """``steps`` Euler steps out = retract(x + dt * field(x)) of every system; ``out`` may be ``x``.

    x, out : (batch, n, d); beta, mode (0 SA, 1 USA GLPR, 2 USA META), causal;
    scale : heads; project : P_x and renormalisation (the sphere) or neither;
    steps : steps per system, all taken while the system sits in L1/L2 (systems
    are independent, so stepping one system ``steps`` times before the next is
    the same computation as ``steps`` sweeps over the batch, without streaming
    the whole (batch, n, d) state through memory every step);
    per : systems per parallel chunk (threads take chunks dynamically).
    """
    B, n, d = x.shape
    for ch in nb.prange((B + per - 1) // per):
        G = np.empty((n, n))
        acc = np.empty((n, d), dtype=out.dtype)
        coef = np.empty(n)
        s = np.empty(n)
        xx = np.empty(n)
        for b in range(ch * per, min(B, (ch + 1) * per)):
            ob = out[b]
            _system_step(x[b], ob, G, acc, coef, s, xx, beta, mode, causal, scale, project, dt)
            for _ in range(1, steps):
                _system_step(ob, ob, G, acc, coef, s, xx, beta, mode, causal, scale, project, dt)
