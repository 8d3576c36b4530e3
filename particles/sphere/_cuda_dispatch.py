"""Which kernel evaluates the attention flow on CUDA (the torch backend asks here).

* SA field, float32 / float16 / bfloat16: ``scaled_dot_product_attention`` (its fused
  flash or memory-efficient kernels; scale = beta, ``is_causal`` for the causal mask),
  heads summed, the feed-forward term added and P_x applied after it.
* float64 (SDPA has no fused float64 kernel) and the USA / usa-meta weights (no softmax
  normalisation, which SDPA cannot express): the flash-style Triton kernel
  (:mod:`particles.sphere._triton_attention`), when triton is installed.
* Euler on short sequences (n <= 256, Q = K = V = I): the fused Triton Euler + renormalise
  kernel (:mod:`particles.sphere._triton_euler`); otherwise the model's own fused torch
  step, or retract(x + dt f) with the field above for long sequences.

Anything else, or no triton: the model's reference torch path. Same mathematics in
every branch (tests/test_gpu_paths.py checks them against the numpy backend).
"""

from __future__ import annotations

__all__ = ["cuda_drift", "cuda_fused_step", "field_path"]

_SDPA_DTYPES = ("float32", "float16", "bfloat16")


def _is_attention(model) -> bool:
    # Duck-typed on what the kernels read: SelfAttention calls in here, so importing it would be a cycle.
    return all(hasattr(model, a) for a in ("normalization", "beta", "projected", "causal", "n_heads"))


def field_path(model, x) -> str:
    """'sdpa', 'triton' or 'torch': the kernel :func:`cuda_drift` uses for ``model`` at state ``x``."""
    from particles._triton_build import triton_available

    dt = str(x.dtype).removeprefix("torch.")
    if model.normalization == "sa" and dt in _SDPA_DTYPES:
        return "sdpa"
    if triton_available() and dt in ("float32", "float64") and max(x.shape[-1], model._dim or 0) <= 256:
        return "triton"
    return "torch"


def _sdpa_field(model, t: float, x):
    import torch
    import torch.nn.functional as F

    Q, K, V = model._matrices(t, x)
    H = model.n_heads

    def heads(M):
        if M is None:
            return x.unsqueeze(1)
        return torch.einsum("bnd,hkd->bhnk", x, M)

    q, k, v = heads(Q), heads(K), heads(V)
    if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1]:
        B = x.shape[0]
        q, k, v = (a.expand(B, H, *a.shape[2:]) for a in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=bool(model.causal), scale=float(model.beta))
    out = out.sum(1) * (H if out.shape[1] == 1 else 1)
    if model.ffn is not None:
        out = out + model.ffn(t, x)
    if model.projected:
        out = out - torch.linalg.vecdot(x, out, dim=-1).unsqueeze(-1) * x
    return out


def cuda_drift(model):
    """``f(t, x)`` for a :class:`particles.SelfAttention` on CUDA tensors, or None for other models."""
    if not _is_attention(model):
        return None

    def f(t, x):
        path = field_path(model, x)
        if path == "sdpa":
            return _sdpa_field(model, t, x)
        if path == "triton":
            from ._triton_attention import model_field

            return model_field(model, t, x)
        return model.drift(t, x)

    return f


class CudaEulerStep:
    """Euler + renormalise on CUDA: the Triton kernel where it applies, else the fallbacks above."""

    def __init__(self, model, fallback) -> None:
        from ._triton_euler import TritonEulerStep

        self.model, self.fallback = model, fallback
        self.triton = TritonEulerStep(model)
        self.field = cuda_drift(model)

    def __call__(self, t: float, x, dt: float):
        return self.segment(t, x, dt, 1)

    def segment(self, t: float, x, dt: float, m: int):
        """``m`` steps (``solve`` calls this between saves): one Triton launch where the kernel
        applies, else the fused torch step, else the field step by step."""
        from particles._triton_build import triton_available
        from ._triton_euler import eligible

        if x.dtype.is_floating_point and x.element_size() in (4, 8) and triton_available() and eligible(self.model, x):
            return self.triton.segment(t, x, dt, m)
        if self.fallback is not None and x.shape[1] <= self.fallback.MAX_DENSE_N:
            return self.fallback.segment(t, x, dt, m)
        for j in range(m):
            x = self.model.space.retract(x + dt * self.field(t + j * dt, x))
        return x


def cuda_fused_step(model, stepper_name: str, backend):
    """The fused step ``solve`` takes on CUDA for the attention flow's Euler, or None (generic stepper)."""
    if not _is_attention(model) or stepper_name != "euler":
        return None
    from particles.sphere._fused import TorchEulerStep, _eligible

    fallback = TorchEulerStep(model) if _eligible(model, "euler") else None
    return CudaEulerStep(model, fallback)
