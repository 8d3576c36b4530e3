"""Triton kernel of the fused (PSD-)Euler-Maruyama step of the covariance SDEs (m <= 16).

Loaded by :mod:`particles.covariance._triton_sde` (lazily, once compiled for CUDA and once
under ``TRITON_INTERPRET=1`` for CPU tensors); it imports triton at its top, so nothing
imports it on a machine without Triton.

One program per path b. It draws the path's Brownian matrices in place -- Philox4x32-10
on uint32 words and the 256-layer ziggurat, normal j of row b of increment k exactly as
:func:`integrators._philox.row_normals` makes it, rejected draws included (the wedge and
tail tests as a masked loop over the pending entries) -- and runs
:func:`particles.covariance._numba_kernels._em_kernel`'s step on an M x M tile
(M = the power of two >= m; entries outside m x m are zero): drift b_SA and b_ReLU,
Cholesky factor L, noise s_lin sym(L dW1 L^T) + s_sa sym(E P V), Euler update,
symmetrisation, the non-finite / threshold test and, for the PSD step, the Cholesky
test of the result. The step writes a status per path: 0 accepted, 1 newly exited (the
old state kept), 2 undecided here -- the factor or the PSD projection needs an
eigendecomposition -- for the host to redo with the increment the kernel wrote to ``dw``.

References
----------
Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC11.
Marsaglia, Tsang, "The ziggurat method for generating random variables", J. Stat. Softw. 5 (2000).
Noci et al. (2023), Li, Nica, Roy (2022): the SDE coefficients, see particles.covariance.models.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["em_kernel"]

_M0 = 0xD2511F53
_M1 = 0xCD9E8D57
_W0 = 0x9E3779B9
_W1 = 0xBB67AE85
_ALT = 0x5851F42D
_TWO_M53 = 2.0**-53


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of uint32 tensors (counters and keys may be scalars or tiles)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        n0 = hi1 ^ c1 ^ k0
        n2 = hi0 ^ c3 ^ k1
        c0 = n0
        c1 = lo1
        c2 = n2
        c3 = lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _u01(hi, lo):
    """(float(w >> 11) + 0.5) 2^-53 for the 64-bit word w = hi 2^32 + lo."""
    w = (hi.to(tl.int64) << 21) | (lo >> 11).to(tl.int64)
    return (w.to(tl.float64) + 0.5) * 1.1102230246251565e-16  # 2^-53: exact in float32 too


@triton.jit
def _normals(j, r, kl, kh, k0, k1, KI_ptr, WI_ptr, FI_ptr, ZR, ZR_INV):
    """Normal j (a tile of uint32 indices) of row r of the increment (kl, kh) under the key (k0, k1)."""
    zero = j * 0
    x0, x1, x2, x3 = _philox(j >> 1, zero + r, zero + kl, zero + kh, zero + k0, zero + k1)
    odd = (j & 1) == 1
    hi = tl.where(odd, x2, x0)
    lo = tl.where(odd, x3, x1)
    idx = (lo & 0xFF).to(tl.int32)
    sgn = ((lo >> 8) & 1) == 1
    rabs = ((hi & 0x1FFFFFFF).to(tl.int64) << 23) | (lo >> 9).to(tl.int64)
    ki = tl.load(KI_ptr + idx)
    x = rabs.to(tl.float64) * tl.load(WI_ptr + idx)
    out = tl.where(sgn, -x, x)
    done = rabs < ki
    # the rejected draws (1.2%): wedge and tail tests on the secondary stream, as a state
    # machine per entry (integrators._philox_torch._slow, entry by entry)
    a = zero
    tail = zero != zero
    tneg = tail
    ka = zero + (k0 ^ 0x5851F42D)
    pending = tl.sum(tl.sum((~done).to(tl.int32), axis=1), axis=0)
    while pending > 0:
        idx = (lo & 0xFF).to(tl.int32)
        sgn = ((lo >> 8) & 1) == 1
        rabs = ((hi & 0x1FFFFFFF).to(tl.int64) << 23) | (lo >> 9).to(tl.int64)
        x = rabs.to(tl.float64) * tl.load(WI_ptr + idx)
        x = tl.where(sgn, -x, x)
        layer = ~done & ~tail
        fast = layer & (rabs < tl.load(KI_ptr + idx))
        out = tl.where(fast, x, out)
        done = done | fast
        live = ~done
        a = tl.where(live, a + 1, a)
        u0, u1, v0, v1 = _philox(j, zero + r, zero + kl, zero + kh, ka, k1 + a * 0x9E3779B9)
        enter = layer & live & (idx == 0)
        tneg = tl.where(enter, sgn, tneg)
        tail = tail | enter
        xx = (-ZR_INV) * tl.log(_u01(u0, u1))
        yy = -tl.log(_u01(v0, v1))
        t_ok = live & tail & (yy + yy > xx * xx)
        zt = ZR + xx
        out = tl.where(t_ok, tl.where(tneg, -zt, zt), out)
        wedge = live & ~tail
        fi = tl.load(FI_ptr + idx)
        fprev = tl.load(FI_ptr + tl.maximum(idx - 1, 0))
        w_ok = wedge & (fi + (fprev - fi) * _u01(u0, u1) < tl.exp((-0.5 * x) * x))
        out = tl.where(w_ok, x, out)
        done = done | t_ok | w_ok
        again = wedge & ~w_ok
        hi = tl.where(again, v0, hi)
        lo = tl.where(again, v1, lo)
        pending = tl.sum(tl.sum((~done).to(tl.int32), axis=1), axis=0)
    return out


@triton.jit
def _mm(A, B):
    """A B for M x M tiles."""
    return tl.sum(A[:, :, None] * B[None, :, :], axis=1)


@triton.jit
def _acos(x, AS_ptr, NAS: tl.constexpr):
    """arccos on [-1, 1] from the arcsine series on [0, 1/2] (coefficients at AS_ptr, highest first).

    acos x = pi/2 - asin x for |x| <= 1/2; 2 asin(sqrt((1 - x)/2)) above; pi - that of -x below.
    """
    ax = tl.abs(x)
    big = ax > 0.5
    z = tl.where(big, tl.sqrt((1.0 - ax) * 0.5), ax)
    z2 = z * z
    p = z * 0.0 + tl.load(AS_ptr)
    for n in range(1, NAS):
        p = p * z2 + tl.load(AS_ptr + n)
    s = z * p  # asin z
    # float64 constants: a bare literal would be a float32
    half_pi = tl.full([], 1.5707963267948966, tl.float64)
    pi = tl.full([], 3.141592653589793, tl.float64)
    pos = tl.where(big, 2.0 * s, half_pi - s)  # acos |x|
    return tl.where(x < 0.0, pi - pos, pos)


@triton.jit
def _cholesky(V, rows, cols, m, rel_floor, M: tl.constexpr):
    """Lower Cholesky factor of the M x M tile V (its m x m block); ok = every pivot^2 > rel_floor max |V_ii|."""
    diag = tl.sum(tl.where(rows == cols, V, 0.0), axis=1)
    floor = tl.max(tl.abs(diag), axis=0) * rel_floor
    L = V * 0.0
    ok = floor == floor
    for j in tl.static_range(M):
        if j < m:
            Lj = tl.sum(tl.where(rows == j, L, 0.0), axis=0)  # row j of L (its columns < j are set)
            col = tl.sum(tl.where(cols == j, V, 0.0), axis=1) - tl.sum(L * Lj[None, :], axis=1)
            s = tl.sum(tl.where(tl.arange(0, M) == j, col, 0.0), axis=0)
            ok = ok & (s > floor) & (s == s) & (s < float("inf"))
            ljj = tl.sqrt(tl.where(s > 0.0, s, 1.0))  # a failed pivot: any finite value (ok is False)
            # the pivot itself is sqrt(s) (not s / sqrt(s)): the Numba factor's numbers
            c = tl.where(tl.arange(0, M) == j, ljj, tl.where(tl.arange(0, M) > j, col / ljj, 0.0))
            L = tl.where(cols == j, c[:, None], L)
    return L, ok


@triton.jit(do_not_specialize=["m", "k_first", "count", "key0", "key1"])
def em_kernel(V_ptr, out_ptr, dw_ptr, exited_ptr, status_ptr, KI_ptr, WI_ptr, FI_ptr, AS_ptr, P_ptr,
              m, k_first, count, key0, key1,
              NOISE: tl.constexpr, PSD: tl.constexpr, M: tl.constexpr, NAS: tl.constexpr):  # fmt: skip
    """One (PSD-)Euler-Maruyama step of path b = program_id(0); see the module docstring.

    The float64 scalars come through P_ptr (Triton would pass Python floats as float32):
    sqdt, dt, a_sa, a_relu, 1/tau0^2, c_nu, s_lin, s_sa, threshold, r_zig, 1/r_zig, 8 m eps.
    """
    sqdt = tl.load(P_ptr)
    dt = tl.load(P_ptr + 1)
    a_sa = tl.load(P_ptr + 2)
    a_relu = tl.load(P_ptr + 3)
    inv_t2 = tl.load(P_ptr + 4)
    cnu = tl.load(P_ptr + 5)
    s_lin = tl.load(P_ptr + 6)
    s_sa = tl.load(P_ptr + 7)
    threshold = tl.load(P_ptr + 8)
    ZR = tl.load(P_ptr + 9)
    ZR_INV = tl.load(P_ptr + 10)
    rel_floor = tl.load(P_ptr + 11)
    b = tl.program_id(0)
    i1 = tl.arange(0, M)
    rows = i1[:, None]
    cols = i1[None, :]
    inside = (rows < m) & (cols < m)
    mm = m * m
    base = b.to(tl.int64) * mm
    v = tl.load(V_ptr + base + rows * m + cols, mask=inside, other=0.0)
    frozen = tl.load(exited_ptr + b) != 0

    # the Brownian matrices: normal j = a m^2 + i m + jj of row b, summed over the ``count``
    # fine increments k_first .. k_first + count - 1 in order (as fill_normals)
    r = b.to(tl.uint32)
    jj = (rows * m + cols).to(tl.uint32)
    w1 = v * 0.0
    w2 = v * 0.0
    for i in range(count):
        k = k_first.to(tl.int64) + i
        kl = (k & 0xFFFFFFFF).to(tl.uint32)
        kh = (k >> 32).to(tl.uint32)
        k0 = key0.to(tl.uint32)
        k1 = key1.to(tl.uint32)
        z = sqdt * _normals(jj, r, kl, kh, k0, k1, KI_ptr, WI_ptr, FI_ptr, ZR, ZR_INV)
        w1 = tl.where(i == 0, z, w1 + z)
        if NOISE == 2:
            z2 = sqdt * _normals(jj + mm, r, kl, kh, k0, k1, KI_ptr, WI_ptr, FI_ptr, ZR, ZR_INV)
            w2 = tl.where(i == 0, z2, w2 + z2)
    w1 = tl.where(inside, w1, 0.0)
    w2 = tl.where(inside, w2, 0.0)
    dwb = b.to(tl.int64) * (NOISE * mm)
    tl.store(dw_ptr + dwb + rows * m + cols, w1, mask=inside)
    if NOISE == 2:
        tl.store(dw_ptr + dwb + mm + rows * m + cols, w2, mask=inside)

    # drift: a_sa b_SA(v) + a_relu b_ReLU(v) (_numba_kernels._drift_path)
    fm = m * 1.0
    diag = tl.sum(tl.where(rows == cols, v, 0.0), axis=1)  # v_ii as a row-indexed vector
    diag_c = tl.sum(tl.where(rows == cols, v, 0.0), axis=0)  # the same, column-indexed
    D = v * 0.0
    if a_sa != 0.0:
        row = tl.sum(v, axis=1) / fm
        row_c = tl.sum(v, axis=0) / fm  # column means = row means (v symmetric)
        tot = tl.sum(row, axis=0) / fm
        cmat = tl.where(inside, v - row[:, None] - row_c[None, :] + tot, 0.0)
        tr_cv = tl.sum(tl.sum(cmat * v, axis=1), axis=0)
        dc = tl.where(i1 < m, diag - 2.0 * row + tot, 0.0)
        trc = tl.sum(dc, axis=0)
        dc_c = tl.where(i1 < m, diag_c - 2.0 * row_c + tot, 0.0)
        vd = tl.sum(v * (dc_c[None, :] - trc / fm), axis=1)  # vd_i = sum_k v_ik (dc_k - trc/m)
        vd_c = tl.sum(v * (dc[:, None] - trc / fm), axis=0)
        f1 = a_sa * inv_t2 * tr_cv / (fm * fm)
        f2 = a_sa * inv_t2 / (2.0 * fm)
        D = tl.where(inside, f1 * v + f2 * (diag[:, None] * vd_c[None, :] + diag_c[None, :] * vd[:, None]), 0.0)
    if a_relu != 0.0:
        ss = tl.sqrt(tl.maximum(diag, 0.0))[:, None] * tl.sqrt(tl.maximum(diag_c, 0.0))[None, :]
        rr = tl.minimum(1.0, tl.maximum(-1.0, v / tl.where(ss > 0.0, ss, 1.0)))
        nu = (tl.sqrt(tl.minimum(tl.maximum(1.0 - rr * rr, 0.0), 1.0)) - rr * _acos(rr, AS_ptr, NAS)) * ss
        D = D + tl.where(inside & (rows != cols) & (ss > 0.0), a_relu * cnu * nu, 0.0)

    # noise: s_lin (N + N^T), N = L dW1 L^T; s_sa (F + F^T), F = E P V, E = L dW2 L^T (_diffusion_path)
    L, chol_ok = _cholesky(v, rows, cols, m, rel_floor, M)
    Lt = tl.trans(L)
    N = _mm(_mm(L, w1), Lt)
    G = s_lin * (N + tl.trans(N))
    if NOISE == 2:
        E = _mm(_mm(L, w2), Lt)
        E = tl.where(inside, E - (tl.sum(E, axis=1) / fm)[:, None], 0.0)
        F = _mm(E, v)
        G = G + s_sa * (F + tl.trans(F))
    D = v + dt * D + G  # the order of euler_maruyama_step
    o = tl.where(inside, 0.5 * (D + tl.trans(D)), 0.0)
    finite = tl.sum(tl.sum(tl.where(o == o, 0, 1) + tl.where(tl.abs(o) < float("inf"), 0, 1), axis=1), axis=0) == 0
    psd_ok = finite
    if PSD:
        _, psd_ok = _cholesky(o, rows, cols, m, 0.0, M)
    big = tl.max(tl.max(tl.abs(o), axis=1), axis=0) > threshold
    # status: 2 = the host redoes the step (a factor or a projection that needs eigh),
    # 1 = newly exited (keeps v), 0 = accepted; a frozen path is copied
    status = tl.where(~chol_ok, 2, tl.where(~finite | big, 1, tl.where(psd_ok, 0, 2)))
    status = tl.where(frozen, 0, status)
    keep = frozen | (status == 1)
    tl.store(out_ptr + base + rows * m + cols, tl.where(keep, v, o), mask=inside)
    tl.store(status_ptr + b, status.to(tl.int8))
