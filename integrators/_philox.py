"""Counter-based standard normals (Philox4x32-10 + Box-Muller), compiled with Numba.

Normal number ``j`` of row ``r`` of increment ``k`` is a pure function of
(key, k, r, j): no generator state is carried, so rows can be drawn in parallel
(``prange`` over rows, any thread count gives the same numbers), a kernel can draw
its own row's noise inside the loop that uses it (the fused SDE steps), and any
increment is reproducible on its own.

Layout: row ``r`` of increment ``k`` holds ``P`` normals; normals 2p and 2p+1 come
from one Philox block with counter (p, r, k mod 2^32, k div 2^32) and the 64-bit
key; its four 32-bit words make two 64-bit words a, b: a gives the uniform
u1 in (0, 1) (53 bits), b the angle theta = q pi/2 + phi (q: 2 bits, phi uniform in
[-pi/4, pi/4): 53 bits), and Box-Muller gives sqrt(-2 ln u1) (cos theta, sin theta).
For odd P the last block's second normal is unused. Counters never repeat, so distinct
(k, r, j) never share random bits.

Kernels elsewhere inline :func:`row_normals` (the fused covariance step); numba's
on-disk cache does not see a change here, so that module drops its cached kernel when
the hash of this file changes (``particles.covariance._numba_kernels``).

References
----------
Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC11
(Philox4x32-10 and its known-answer vectors, tests/test_brownian.py).
Box, Muller, "A note on the generation of random normal deviates", Ann. Math. Stat. 1958.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["fill_normals", "philox4x32", "row_normals", "scratch_bits"]

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_S2 = np.uint64(2)
_S62 = np.uint64(62)
_TWO_M53 = 2.0**-53
_HALF_PI = 0.5 * math.pi
_C = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(1, 10))  # cos: x^2 .. x^18
_S = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9))  # sin: x^3 .. x^17


@nb.njit(cache=True, inline="always")
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c0..c3) under the key (k0, k1); uint64 words holding 32 bits."""
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0 = p0 >> _S32
        lo0 = p0 & _MASK
        hi1 = p1 >> _S32
        lo1 = p1 & _MASK
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


@nb.njit(cache=True, inline="always")
def _bits(k, r, k0, k1, bits):
    """Philox blocks (p, r, k) for p < bits.shape[0] // 2, as two 64-bit words per block.

    A loop of its own: independent blocks, so the 10 dependent multiply rounds of one
    block overlap with the next (SIMD and out-of-order); fused with the transcendental
    functions below, the loop runs at the latency of one block at a time (~2.5x slower).
    """
    kl = np.uint64(k) & _MASK
    kh = np.uint64(k) >> _S32
    rr = np.uint64(r)
    for p in range(bits.shape[0] // 2):
        x0, x1, x2, x3 = philox4x32(np.uint64(p), rr, kl, kh, k0, k1)
        bits[2 * p] = (x0 << _S32) | x1
        bits[2 * p + 1] = (x2 << _S32) | x3


@nb.njit(cache=True, inline="always")
def row_normals(k, r, k0, k1, scale, accumulate, out, bits):
    """Normals of row ``r`` of increment ``k`` times ``scale`` into the 1-d array ``out`` (added if ``accumulate``).

    ``bits`` is uint64 scratch of length >= 2 ceil(P / 2), P = out.shape[0].
    """
    P = out.shape[0]
    n_pairs = (P + 1) // 2
    _bits(k, r, k0, k1, bits[: 2 * n_pairs])
    for p in range(n_pairs):
        z0, z1 = _box_muller(bits[2 * p], bits[2 * p + 1], scale)
        if 2 * p + 1 < P:
            if accumulate:
                out[2 * p] += z0
                out[2 * p + 1] += z1
            else:
                out[2 * p] = z0
                out[2 * p + 1] = z1
        elif accumulate:  # odd P: the last block's second normal is unused
            out[2 * p] += z0
        else:
            out[2 * p] = z0


@nb.njit(cache=True, inline="always")
def _sincos(x):
    """(cos x, sin x) for |x| <= pi/4 by their Taylor polynomials to x^18 / x^17.

    The remainder is below (pi/4)^19/19! ~ 1e-19, under half an ulp; a polynomial
    instead of libm's sin and cos, whose argument-range branches mispredict on
    random angles (measured: 1.6x the cost of the whole transform).
    """
    x2 = x * x
    c = 1.0 + x2 * (_C[0] + x2 * (_C[1] + x2 * (_C[2] + x2 * (_C[3] + x2 * (_C[4] + x2 * (_C[5] + x2 * (_C[6] + x2 * (_C[7] + x2 * _C[8]))))))))
    s = x * (1.0 + x2 * (_S[0] + x2 * (_S[1] + x2 * (_S[2] + x2 * (_S[3] + x2 * (_S[4] + x2 * (_S[5] + x2 * (_S[6] + x2 * _S[7]))))))))
    return c, s


@nb.njit(cache=True, inline="always")
def _box_muller(a, b, scale):
    """Two normals from two 64-bit words: radius from a, angle from b.

    The angle is q pi/2 + phi: q from the top two bits of b, phi uniform in [-pi/4, pi/4)
    from the next 53; then (cos, sin) of the angle is a signed swap of (cos phi, sin phi).
    """
    # via int64: 53-bit values convert to double in one instruction, while a uint64 conversion
    # branches on the top bit (a mispredicted branch per draw)
    u1 = (float(np.int64(a >> _S11)) + 0.5) * _TWO_M53  # (0, 1): the log is finite
    q = np.int64(b >> _S62)
    phi = (float(np.int64((b << _S2) >> _S11)) * _TWO_M53 - 0.5) * _HALF_PI
    rad = scale * math.sqrt(-2.0 * math.log(u1))
    c, s = _sincos(phi)
    ca = (1.0 if q == 0 else 0.0) - (1.0 if q == 2 else 0.0)  # cos(q pi / 2)
    sa = (1.0 if q == 1 else 0.0) - (1.0 if q == 3 else 0.0)  # sin(q pi / 2)
    return rad * (ca * c - sa * s), rad * (sa * c + ca * s)


def scratch_bits(P: int) -> np.ndarray:
    """uint64 scratch for :func:`row_normals` with rows of P normals."""
    return np.empty(2 * ((P + 1) // 2), dtype=np.uint64)


@nb.njit(parallel=True, cache=True)
def _fill(k_first, count, k0, k1, scale, out):
    R, P = out.shape
    chunk = 16
    for c in nb.prange((R + chunk - 1) // chunk):
        bits = np.empty(2 * ((P + 1) // 2), dtype=np.uint64)
        for r in range(c * chunk, min(R, (c + 1) * chunk)):
            row = out[r]
            for i in range(count):
                row_normals(k_first + i, r, k0, k1, scale, i > 0, row, bits)


def fill_normals(key: tuple[int, int], k_first: int, count: int, scale: float, out: np.ndarray) -> np.ndarray:
    """out[r, :] = scale * (sum over increments k_first .. k_first + count - 1 of row r's normals).

    ``out`` is a C-contiguous float64 array of shape (rows, P), filled in place and returned.
    """
    _fill(int(k_first), int(count), np.uint64(key[0]), np.uint64(key[1]), float(scale), out)
    return out
