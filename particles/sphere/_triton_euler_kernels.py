"""Triton source of the fused Euler + renormalise kernel (see :mod:`particles.sphere._triton_euler`).

Imports triton at its top: loaded only through ``_triton_build.load_kernels``, never at package import.
"""

import triton
import triton.language as tl


@triton.jit
def _one_step(SRC, DST, n, dt, beta, shift, inv_n, head_scale,
              D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              MODE: tl.constexpr, CAUSAL: tl.constexpr, PROJECT: tl.constexpr):  # fmt: skip
    cd = tl.arange(0, BLOCK_D)
    dmask = cd < D
    dtp = SRC.dtype.element_ty
    for i0 in range(0, n, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        rmask = rows < n
        xi = tl.load(SRC + rows[:, None] * D + cd[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=dtp)
        l_i = tl.zeros((BLOCK_M,), dtype=dtp)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=dtp)
        hi = n
        if CAUSAL:
            hi = tl.minimum(n, i0 + BLOCK_M)
        for j0 in range(0, hi, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            cmask = cols < n
            xj = tl.load(SRC + cols[:, None] * D + cd[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            s = tl.dot(xi, tl.trans(xj), input_precision="ieee") * beta
            valid = cmask[None, :] & (rows[:, None] >= 0)
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
            if MODE == 0:
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(dtp), xj, input_precision="ieee")
                m_i = m_new
            else:
                acc += tl.dot(tl.exp(s - shift).to(dtp), xj, input_precision="ieee")
        if MODE == 0:
            a = acc / l_i[:, None]
        else:
            a = acc * inv_n
        a = a * head_scale
        if PROJECT:
            a = a - tl.sum(xi * a, 1)[:, None] * xi
            y = xi + dt * a
            y = y / tl.sqrt(tl.sum(y * y, 1))[:, None]
        else:
            y = xi + dt * a
        tl.store(DST + rows[:, None] * D + cd[None, :], y, mask=rmask[:, None] & dmask[None, :])

@triton.jit
def euler_kernel(X, BUF, n, steps, P, slot,
                 D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 MODE: tl.constexpr, CAUSAL: tl.constexpr, PROJECT: tl.constexpr):  # fmt: skip
    # the real parameters come from a tensor in the state's dtype: Triton passes Python floats as
    # float32, which would cost float64 runs seven digits of dt and beta
    dt = tl.load(P + 0)
    beta = tl.load(P + 1)
    shift = tl.load(P + 2)
    inv_n = tl.load(P + 3)
    head_scale = tl.load(P + 4)
    b = tl.program_id(0).to(tl.int64)
    per = n * D
    # step 0 reads the caller's state; step s > 0 reads slot (s - 1) % 2 and writes slot s % 2
    _one_step(X + b * per, BUF + b * per, n, dt, beta, shift, inv_n, head_scale,
              D, BLOCK_M, BLOCK_N, BLOCK_D, MODE, CAUSAL, PROJECT)  # fmt: skip
    for s in range(1, steps):
        tl.debug_barrier()  # the previous step's stores are visible to every thread of this program
        src = BUF + ((s - 1) % 2) * slot + b * per
        dst = BUF + (s % 2) * slot + b * per
        _one_step(src, dst, n, dt, beta, shift, inv_n, head_scale,
                  D, BLOCK_M, BLOCK_N, BLOCK_D, MODE, CAUSAL, PROJECT)  # fmt: skip
