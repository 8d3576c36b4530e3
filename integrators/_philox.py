"""Counter-based standard normals (Philox4x32-10 + ziggurat), compiled with Numba.

Normal number ``j`` of row ``r`` of increment ``k`` is a pure function of
(key, k, r, j): no generator state is carried, so rows can be drawn in parallel
(``prange`` over rows, any thread count gives the same numbers), a kernel can draw
its own row's noise inside the loop that uses it (the fused SDE steps), and any
increment is reproducible on its own.

Layout: the Philox block with counter (p, r, k mod 2^32, k div 2^32) under the 64-bit
key gives two 64-bit words, 2p and 2p+1; normal j of row r is made from word j by
Marsaglia and Tsang's 256-layer ziggurat (8 bits choose the layer, 1 the sign, 52 the
magnitude; accepted at once 98.8% of the time, as in numpy's ``standard_normal``).
The rare rejections continue on a secondary stream: Philox blocks (j, r, k mod 2^32,
k div 2^32) under the keys (k0 xor ALT, k1 + a W0), a = 1, 2, ... Counters and keys
never repeat, so distinct (k, r, j) never share random bits.

Kernels elsewhere inline :func:`row_normals` (the fused covariance step); numba's
on-disk cache does not see a change here, so that module drops its cached kernel when
the hash of this file changes (``particles.covariance._numba_kernels``).

References
----------
Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC11
(Philox4x32-10 and its known-answer vectors, tests/test_brownian.py).
Marsaglia, Tsang, "The ziggurat method for generating random variables", J. Stat. Softw. 5 (2000)
(the tables; the statistical checks are in tests/test_brownian.py).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["fill_normals", "philox4x32", "row_normals"]

_M0 = np.uint64(0xD2511F53)
_M1 = np.uint64(0xCD9E8D57)
_W0 = np.uint64(0x9E3779B9)
_W1 = np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S11 = np.uint64(11)
_S8 = np.uint64(8)
_S9 = np.uint64(9)
_LOW8 = np.uint64(0xFF)
_M52 = np.uint64(0x000FFFFFFFFFFFFF)
_ALT = np.uint64(0x5851F42D)  # key offset of the secondary (rejection) stream
_TWO_M53 = 2.0**-53


def _ziggurat_tables(n: int = 256, r: float = 3.6541528853610088, v: float = 0.00492867323399):
    """Marsaglia-Tsang tables for 52-bit magnitudes: k (accept bounds), w (scales), f (densities).

    r is the start of the tail, v the common area of the layers (their values for 256 layers).
    """
    f = lambda x: math.exp(-0.5 * x * x)  # noqa: E731
    k, w, fv = np.zeros(n, np.uint64), np.zeros(n), np.zeros(n)
    q = v / f(r)
    k[0], k[1] = np.uint64(int((r / q) * 2.0**52)), np.uint64(0)
    w[0], w[n - 1] = q / 2.0**52, r / 2.0**52
    fv[0], fv[n - 1] = 1.0, f(r)
    dn = tn = r
    for i in range(n - 2, 0, -1):
        dn = math.sqrt(-2.0 * math.log(v / dn + f(dn)))
        k[i + 1] = np.uint64(int((dn / tn) * 2.0**52))
        tn = dn
        fv[i] = f(dn)
        w[i] = dn / 2.0**52
    return k, w, fv, r


_KI, _WI, _FI, _ZR = _ziggurat_tables()
_ZR_INV = 1.0 / _ZR


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
def _u01(word):
    return (float(np.int64(word >> _S11)) + 0.5) * _TWO_M53  # (0, 1): the logs are finite


@nb.njit(cache=True, inline="always")
def _second(a, j, r, k, k0, k1):
    """Block a (1, 2, ...) of the secondary stream of normal j: two 64-bit words."""
    x0, x1, x2, x3 = philox4x32(np.uint64(j), np.uint64(r), np.uint64(k) & _MASK, np.uint64(k) >> _S32,
                                (k0 ^ _ALT) & _MASK, (k1 + np.uint64(a) * _W0) & _MASK)  # fmt: skip
    return (x0 << _S32) | x1, (x2 << _S32) | x3


@nb.njit(cache=True)
def _ziggurat_slow(word, j, r, k, k0, k1):
    """The ziggurat after a failed fast test of ``word``: the wedge or tail test, then new words."""
    a = 0
    while True:
        idx = np.int64(word & _LOW8)
        neg = (word >> _S8) & np.uint64(1)
        rabs = (word >> _S9) & _M52
        x = float(np.int64(rabs)) * _WI[idx]
        if neg:
            x = -x
        if rabs < _KI[idx]:
            return x
        a += 1
        u, v = _second(a, j, r, k, k0, k1)
        if idx == 0:  # the tail beyond r (Marsaglia 1964), by exponential proposals
            while True:
                xx = -_ZR_INV * math.log(_u01(u))
                yy = -math.log(_u01(v))
                if yy + yy > xx * xx:
                    return -(_ZR + xx) if neg else _ZR + xx
                a += 1
                u, v = _second(a, j, r, k, k0, k1)
        if _FI[idx] + (_FI[idx - 1] - _FI[idx]) * _u01(u) < math.exp(-0.5 * x * x):
            return x
        word = v


@nb.njit(cache=True, inline="always")
def row_normals(k, r, k0, k1, scale, accumulate, out, bits):
    """Normals of row ``r`` of increment ``k`` times ``scale`` into the 1-d array ``out`` (added if ``accumulate``).

    ``bits`` is uint64 scratch of length >= 2 ceil(P / 2), P = out.shape[0].
    """
    P = out.shape[0]
    _bits(k, r, k0, k1, bits[: 2 * ((P + 1) // 2)])
    for j in range(P):
        w = bits[j]
        idx = np.int64(w & _LOW8)
        rabs = (w >> _S9) & _M52
        if rabs < _KI[idx]:  # the fast path, 98.8% of draws
            z = float(np.int64(rabs)) * _WI[idx]
            if (w >> _S8) & np.uint64(1):
                z = -z
        else:
            z = _ziggurat_slow(w, j, r, k, k0, k1)
        if accumulate:
            out[j] += scale * z
        else:
            out[j] = scale * z


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
