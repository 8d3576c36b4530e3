"""Flash-style Triton kernel for the SA / USA attention field, tangent projection as the epilogue.

For each system b and token i (summed over heads h, GLPR eqs. 2.3-2.4, 2.7, 3.3):

    A_i = sum_h (1/Z_{i,h}) sum_{j <= i if causal} exp(beta <q_{h,i}, k_{h,j}> - c) v_{h,j},
    f_i = P_{x_i}(A_i + base_i) = (A_i + base_i) - <x_i, A_i + base_i> x_i,

with Z the softmax row sum (SA, c = the running row maximum: online softmax), Z = n and
c = 0 (USA), Z = n and c = beta (usa-meta). One program owns a tile of BLOCK_M rows of
one system; it streams the keys and values in tiles of BLOCK_N rows (Triton stages them
through shared memory), so the n x n matrix never exists, and it adds the heads, the
feed-forward ``base`` and the projection before its single store. q = x Q_h^T,
k = x K_h^T, v = x V_h^T are formed by the caller (O(n d^2), cheap); with Q = K = V = I
the kernel reads x itself through zero head strides.

References
----------
Dao, Fu, Ermon, Rudra, Re, "FlashAttention", NeurIPS 2022 (online softmax in tiles).
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, eqs. (2.3)-(2.4), (2.7), (3.3).
"""

from __future__ import annotations

from integrators.validation import ParameterError

from particles._triton_build import build, check_tensor, device_scalars

__all__ = ["flash_attention_field", "model_field"]

_MODES = {"sa": 0, "usa": 1, "usa-meta": 2}


def _make():
    import triton
    import triton.language as tl

    @triton.jit
    def attention_field_kernel(
        X, Qp, Kp, Vp, BASE, OUT,
        n, H, P,
        sxb, sxn, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sbb, sbn, sob, son,
        DK: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_D: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr,
        PROJECT: tl.constexpr, HAS_BASE: tl.constexpr,
    ):  # fmt: skip
        # real parameters from a tensor in the state's dtype (Triton passes Python floats as float32)
        beta = tl.load(P + 0)
        shift = tl.load(P + 1)
        inv_n = tl.load(P + 2)
        head_scale = tl.load(P + 3)
        pid_m = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < n
        ck = tl.arange(0, BLOCK_DK)
        cd = tl.arange(0, BLOCK_D)
        dt = X.dtype.element_ty
        total = tl.zeros((BLOCK_M, BLOCK_D), dtype=dt)
        hi = n
        if CAUSAL:
            hi = tl.minimum(n, (pid_m + 1) * BLOCK_M)  # tiles above the diagonal are all masked
        for h in range(H):
            q = tl.load(Qp + b * sqb + h * sqh + rows[:, None] * sqn + ck[None, :],
                        mask=rmask[:, None] & (ck[None, :] < DK), other=0.0)  # fmt: skip
            m_i = tl.full((BLOCK_M,), float("-inf"), dtype=dt)
            l_i = tl.zeros((BLOCK_M,), dtype=dt)
            acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=dt)
            for j0 in range(0, hi, BLOCK_N):
                cols = j0 + tl.arange(0, BLOCK_N)
                cmask = cols < n
                kt = tl.load(Kp + b * skb + h * skh + cols[None, :] * skn + ck[:, None],
                             mask=cmask[None, :] & (ck[:, None] < DK), other=0.0)  # fmt: skip
                v = tl.load(Vp + b * svb + h * svh + cols[:, None] * svn + cd[None, :],
                            mask=cmask[:, None] & (cd[None, :] < D), other=0.0)  # fmt: skip
                s = tl.dot(q, kt, input_precision="ieee") * beta
                valid = cmask[None, :] & (rows[:, None] >= 0)
                if CAUSAL:
                    valid = valid & (cols[None, :] <= rows[:, None])
                s = tl.where(valid, s, float("-inf"))
                if MODE == 0:
                    # online softmax; column 0 is valid in the first tile, so m_new is finite
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.exp(m_i - m_new)
                    p = tl.exp(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    acc = acc * alpha[:, None] + tl.dot(p.to(dt), v, input_precision="ieee")
                    m_i = m_new
                else:
                    p = tl.exp(s - shift)
                    acc += tl.dot(p.to(dt), v, input_precision="ieee")
            if MODE == 0:
                total += acc / l_i[:, None]
            else:
                total += acc * inv_n
        total = total * head_scale
        omask = rmask[:, None] & (cd[None, :] < D)
        if HAS_BASE:
            total += tl.load(BASE + b * sbb + rows[:, None] * sbn + cd[None, :], mask=omask, other=0.0)
        if PROJECT:
            x = tl.load(X + b * sxb + rows[:, None] * sxn + cd[None, :], mask=omask, other=0.0)
            total = total - tl.sum(x * total, 1)[:, None] * x
        tl.store(OUT + b * sob + rows[:, None] * son + cd[None, :], total, mask=omask)

    return attention_field_kernel


def _pow2(v: int, lo: int = 16) -> int:
    p = lo
    while p < v:
        p *= 2
    return p


def _blocks(n: int, d: int, dk: int, itemsize: int) -> tuple[int, int]:
    """Tile sizes: rows per program and keys per tile (registers and shared memory bound them)."""
    big = max(d, dk)
    if itemsize == 8:
        bm, bn = (64, 32) if big <= 64 else (32, 32)
    else:
        bm, bn = (128, 64) if big <= 64 else (64, 32)
    cap = _pow2(n)
    return min(bm, cap), min(bn, cap)


def flash_attention_field(
    x, q, k, v, *, beta: float, normalization: str = "sa", causal: bool = False, project: bool = True,
    base=None, head_scale: float = 1.0, block_m: int | None = None, block_n: int | None = None,
):  # fmt: skip
    """The attention field of tokens ``x`` (B, n, d) from per-head q, k (B, H, n, dk) and v (B, H, n, d).

    Returns a new (B, n, d) tensor: ``head_scale * sum_h A_h (+ base)``, projected on the
    tangent space at x when ``project``. q, k, v may be broadcast views (zero strides) of x.
    CUDA tensors run the compiled kernel, CPU tensors Triton's interpreter.
    """
    import torch

    interpret = check_tensor(x)
    if normalization not in _MODES:
        raise ParameterError("normalization", f"unknown normalization {normalization!r}; choose one of {list(_MODES)}")
    if x.ndim != 3 or q.ndim != 4 or k.shape != q.shape or v.ndim != 4:
        raise ParameterError("x", f"need x (B, n, d), q and k (B, H, n, dk), v (B, H, n, d); got {tuple(x.shape)}, "
                                  f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")  # fmt: skip
    B, n, d = x.shape
    H, dk = q.shape[1], q.shape[3]
    if v.shape[-1] != d or max(d, dk) > 256:
        raise ParameterError("x", f"the kernel takes d, d_k <= 256 and values in R^d; got d={d}, d_k={dk}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != x.dtype or t.device != x.device or t.stride(-1) != 1:
            raise ParameterError(name, "must share x's dtype and device and have a contiguous last axis")
    if base is not None:
        base = base.contiguous()
    out = torch.empty((B, n, d), dtype=x.dtype, device=x.device)
    x = x if x.stride(-1) == 1 else x.contiguous()
    bm, bn = _blocks(n, d, dk, x.element_size())
    bm, bn = block_m or bm, block_n or bn
    kern = build("attention_field", _make, interpret)
    mode = _MODES[normalization]
    b_ = out if base is None else base
    grid = (-(-n // bm), B)
    params = device_scalars((float(beta), float(beta) if mode == 2 else 0.0, 1.0 / n, float(head_scale)), x)
    kern[grid](
        x, q, k, v, b_, out, n, H, params,
        x.stride(0), x.stride(1), q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), b_.stride(0), b_.stride(1), out.stride(0), out.stride(1),
        DK=dk, D=d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=_pow2(dk), BLOCK_D=_pow2(d), MODE=mode,
        CAUSAL=bool(causal), PROJECT=bool(project), HAS_BASE=base is not None,
        **({} if interpret else {"num_warps": 4 if bm <= 64 else 8, "num_stages": 2}),
    )  # fmt: skip
    return out


def model_field(model, t: float, x, **blocks):
    """``model.drift(t, x)`` of a :class:`particles.SelfAttention` through the kernel (x: (B, n, d) tensor)."""
    import torch

    Q, K, V = model._matrices(t, x)
    H = model.n_heads
    if Q is None and K is None and V is None:
        # identical identity heads: one pass, times the number of heads
        xe = x.unsqueeze(1)
        q = k = v = xe
        scale = float(H)
    else:

        def heads(M):
            if M is None:
                return x.unsqueeze(1).expand(x.shape[0], H, *x.shape[1:])
            return torch.einsum("bnd,hkd->bhnk", x, M).contiguous()

        q, k, v = heads(Q), heads(K), heads(V)
        scale = 1.0
    base = None if model.ffn is None else model.ffn(t, x)
    return flash_attention_field(
        x, q, k, v, beta=float(model.beta), normalization=model.normalization, causal=bool(model.causal),
        project=bool(model.projected), base=base, head_scale=scale, **blocks,
    )  # fmt: skip
