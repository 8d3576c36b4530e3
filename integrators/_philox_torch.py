"""The counter-based normals of :mod:`integrators._philox`, drawn with torch integer ops on any device.

The same numbers as the Numba stream, bit for bit: normal ``j`` of row ``r`` of increment
``k`` is a pure function of (key, k, r, j), so a run whose state lives on a GPU draws its
Brownian increments there (no host -> device copy per step) and still follows the path a
CPU run of the same seed follows.

torch has no unsigned 32-bit multiply with a 64-bit result on every device, so the
uint32 words live in int64 tensors and the Philox products M * c (M, c < 2^32, up to 2^64)
are split at 16 bits of the constant: M c = (M_hi c) 2^16 + M_lo c, both halves < 2^48
(:func:`_mulhilo`). The 64-bit ziggurat words are never formed: their fields (8 bits of
layer, 1 of sign, 52 of magnitude; the 53 bits of a uniform) are cut from the two
32-bit halves. Floating-point steps are the Numba kernel's, in the same order
((-0.5 x) x, f_i + (f_{i-1} - f_i) u, ...), so they round the same way.

The rare draws the fast test rejects (1.2%) continue through the wedge and tail tests
on the secondary stream as a vectorised state machine over the pending draws (a few
rounds; each round one device -> host read of "any left?"). The wedge and tail tests call
exp and log: the CPU's torch and libm agree on them in the draws tested
(tests/test_philox_device.py, tail branch included); a CUDA libdevice log may differ
from libm in the last bit, which moves a tail normal (2.6e-4 of the draws) by one ulp.

References
----------
Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC11.
Marsaglia, Tsang, "The ziggurat method for generating random variables", J. Stat. Softw. 5 (2000).
"""

from __future__ import annotations

from . import _philox as _ref

__all__ = ["device_fill", "device_normals", "philox4x32_torch"]

_MASK = 0xFFFFFFFF
_M0, _M1 = int(_ref._M0), int(_ref._M1)
_W0, _W1 = int(_ref._W0), int(_ref._W1)
_ALT = int(_ref._ALT)
_TWO_M53 = _ref._TWO_M53
_ZR = float(_ref._ZR)
_ZR_INV = float(_ref._ZR_INV)

_TABLES: dict = {}


def _tables(device):
    """The ziggurat tables on ``device`` (k as int64: all < 2^53), cached per device."""
    import torch

    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = (
            torch.tensor(_ref._KI.astype("int64"), device=device),
            torch.tensor(_ref._WI, dtype=torch.float64, device=device),
            torch.tensor(_ref._FI, dtype=torch.float64, device=device),
        )
    return _TABLES[key]


def _mulhilo(a, m: int):
    """(high, low) 32-bit words of m * a for int64 ``a`` holding uint32 values and a 32-bit constant m."""
    p = a * (m & 0xFFFF)  # < 2^48
    q = a * (m >> 16)  # < 2^48; m a = q 2^16 + p
    hi = (q + (p >> 16)) >> 16
    lo = (((q & 0xFFFF) << 16) + p) & _MASK
    return hi, lo


def philox4x32_torch(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of int64 tensors holding uint32 counters; keys are ints or int64 tensors."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def _u01(hi, lo):
    """(float(w >> 11) + 0.5) 2^-53 of the 64-bit word w = hi 2^32 + lo: in (0, 1)."""
    return (((hi << 21) | (lo >> 11)).double() + 0.5) * _TWO_M53


def _fields(hi, lo):
    """Layer (8 bits), sign (1 bit) and 52-bit magnitude of the word hi 2^32 + lo."""
    return lo & 0xFF, (lo >> 8) & 1, ((hi & 0x1FFFFFFF) << 23) | (lo >> 9)


def _second(a, j, r, kl: int, kh: int, k0: int, k1: int):
    """Block ``a`` of the secondary stream of normals (j, r): words u = (x0, x1), v = (x2, x3)."""
    x0, x1, x2, x3 = philox4x32_torch(j, r, kl, kh, (k0 ^ _ALT) & _MASK, (k1 + a * _W0) & _MASK)
    return (x0, x1), (x2, x3)


def _slow(hi, lo, j, r, kl: int, kh: int, k0: int, k1: int):
    """The ziggurat after failed fast tests (:func:`integrators._philox._ziggurat_slow`), vectorised.

    Each pending draw is a small state machine: layer tests on its current word, or the
    tail loop; every round draws one secondary block per live draw.
    """
    import torch

    KI, WI, FI = _tables(hi.device)
    n = hi.numel()
    out = torch.zeros(n, dtype=torch.float64, device=hi.device)
    a = torch.zeros(n, dtype=torch.int64, device=hi.device)
    done = torch.zeros(n, dtype=torch.bool, device=hi.device)
    tail = torch.zeros(n, dtype=torch.bool, device=hi.device)
    tneg = torch.zeros(n, dtype=torch.bool, device=hi.device)
    while True:
        idx, sgn, rabs = _fields(hi, lo)
        x = rabs.double() * WI[idx]
        x = torch.where(sgn.bool(), -x, x)
        layer = ~done & ~tail
        fast = layer & (rabs < KI[idx])
        out = torch.where(fast, x, out)
        done = done | fast
        live = ~done
        if not bool(live.any()):
            return out
        a = torch.where(live, a + 1, a)
        (u0, u1), (v0, v1) = _second(a, j, r, kl, kh, k0, k1)
        enter = layer & live & (idx == 0)
        tneg = torch.where(enter, sgn.bool(), tneg)
        tail = tail | enter
        # the tail beyond r (Marsaglia 1964): exponential proposals
        xx = (-_ZR_INV) * torch.log(_u01(u0, u1))
        yy = -torch.log(_u01(v0, v1))
        t_ok = live & tail & (yy + yy > xx * xx)
        zt = _ZR + xx
        out = torch.where(t_ok, torch.where(tneg, -zt, zt), out)
        # the wedge of layer idx > 0
        wedge = live & ~tail
        fprev = FI[(idx - 1).clamp_min(0)]
        w_ok = wedge & (FI[idx] + (fprev - FI[idx]) * _u01(u0, u1) < torch.exp((-0.5 * x) * x))
        out = torch.where(w_ok, x, out)
        done = done | t_ok | w_ok
        again = wedge & ~w_ok  # a rejected wedge test continues with the word v
        hi = torch.where(again, v0, hi)
        lo = torch.where(again, v1, lo)


def device_normals(key: tuple[int, int], k: int, rows: int, P: int, device="cpu"):
    """Normals (k, r, j) for r < rows, j < P as a float64 tensor (rows, P) on ``device``."""
    import torch

    k0, k1 = int(key[0]), int(key[1])
    kl, kh = int(k) & _MASK, int(k) >> 32
    nblk = (P + 1) // 2
    p = torch.arange(nblk, dtype=torch.int64, device=device)[None, :].expand(rows, nblk)
    r = torch.arange(rows, dtype=torch.int64, device=device)[:, None].expand(rows, nblk)
    x0, x1, x2, x3 = philox4x32_torch(p, r, kl, kh, k0, k1)
    # word 2p = (x0, x1), word 2p + 1 = (x2, x3)
    hi = torch.stack((x0, x2), dim=-1).reshape(rows, 2 * nblk)[:, :P]
    lo = torch.stack((x1, x3), dim=-1).reshape(rows, 2 * nblk)[:, :P]
    KI, WI, _ = _tables(device)
    idx, sgn, rabs = _fields(hi, lo)
    z = rabs.double() * WI[idx]
    z = torch.where(sgn.bool(), -z, z)
    slow = rabs >= KI[idx]
    pr, pj = slow.nonzero(as_tuple=True)
    if pr.numel():
        z[pr, pj] = _slow(hi[pr, pj], lo[pr, pj], pj, pr, kl, kh, k0, k1)
    return z


def device_fill(key: tuple[int, int], k_first: int, count: int, scale: float, rows: int, P: int, device="cpu"):
    """scale * (sum of the normals of increments k_first .. k_first + count - 1), float64 (rows, P).

    The same numbers as :func:`integrators._philox.fill_normals`: each increment scaled,
    then added in order.
    """
    out = None
    for i in range(int(count)):
        z = device_normals(key, int(k_first) + i, rows, P, device).mul_(float(scale))
        out = z if out is None else out.add_(z)
    return out
