"""Fused Triton Euler + renormalise for ensembles of short sequences (n <= 256), Q = K = V = I.

One program per system b runs

    x <- retract(x + dt * heads * P_x(A(x))),   A(x)_i = sum_j W_ij x_j   (GLPR eqs. 2.3, 3.3)

for ``steps`` steps (retract = x / |x| and P_x on the sphere; neither when not projected),
with W the softmax (SA, online over key tiles), exp(beta <x_i, x_j>)/n (USA) or
exp(beta(<x_i, x_j> - 1))/n (usa-meta), causal or not. Each step reads the system once
(its key tiles stay in L1/L2: n d <= 256 x 256 words) and writes it once; between steps
of one launch the state ping-pongs between two slots of a scratch buffer and a CTA
barrier orders the writes of one step before the reads of the next, so several steps
cost one launch. The numbers are those of the generic Euler step followed by the
retraction, to round-off (tests/test_triton_euler.py).

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, eqs. (2.3)-(2.4), (3.3);
the authors' batched Euler + normalise step (studies.benchmarks.flow_baselines.AuthorsEuler).
"""

from __future__ import annotations

from integrators.validation import ParameterError

from particles._triton_build import check_tensor, device_scalars, load_kernels

__all__ = ["MAX_N", "TritonEulerStep", "eligible", "euler_steps"]

#: longest sequence the per-system kernel takes (longer ones use the flash field)
MAX_N = 256
_MAX_D = 256
_MODES = {"sa": 0, "usa": 1, "usa-meta": 2}


def eligible(model, x) -> bool:
    """The kernel's case: identity Q, K, V, no feed-forward term, n <= MAX_N, d <= 256."""
    return (
        model.Q is None and model.K is None and model.V is None and model.ffn is None
        and x.ndim == 3 and x.shape[1] <= MAX_N and x.shape[2] <= _MAX_D
    )  # fmt: skip


def _pow2(v: int, lo: int = 16) -> int:
    p = lo
    while p < v:
        p *= 2
    return p


def euler_steps(model, x, dt: float, steps: int = 1, buf=None, block_m: int | None = None, block_n: int | None = None):
    """``steps`` fused Euler + renormalise steps of ``model`` from ``x`` (B, n, d); returns the new state.

    ``buf`` is an optional (2, B, n, d) scratch tensor (reused across calls); the result is a
    view of one of its slots. CUDA tensors run compiled, CPU tensors under the interpreter.
    """
    import torch

    interpret = check_tensor(x)
    if not eligible(model, x):
        raise ParameterError("model", f"the fused Triton Euler step takes Q = K = V = I, no ffn, n <= {MAX_N}, "
                                      f"d <= {_MAX_D}; got x of shape {tuple(x.shape)}")  # fmt: skip
    if int(steps) < 1:
        raise ParameterError("steps", f"must be >= 1, got {steps}")
    B, n, d = x.shape
    x = x.contiguous()
    if buf is None or buf.shape != (2, B, n, d) or buf.dtype != x.dtype or buf.device != x.device:
        buf = torch.empty((2, B, n, d), dtype=x.dtype, device=x.device)
    big = x.element_size() * n * d > 64 * 1024
    bm = block_m or min(_pow2(n), 32 if big else 64)
    bn = block_n or min(_pow2(n), 32 if big else 64)
    mode = _MODES[model.normalization]
    kern = load_kernels("_triton_euler_kernels.py", interpret, beside=__file__).euler_kernel
    beta = float(model.beta)
    params = device_scalars((float(dt), beta, beta if mode == 2 else 0.0, 1.0 / n, float(model.n_heads)), x)
    kern[(B,)](
        x, buf, n, int(steps), params, buf.stride(0), D=d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2(d), MODE=mode,
        CAUSAL=bool(model.causal), PROJECT=bool(model.projected),
        **({} if interpret else {"num_warps": 4 if n * d <= 4096 else 8, "num_stages": 1}),
    )  # fmt: skip
    return buf[(int(steps) - 1) % 2]


class TritonEulerStep:
    """The fused step ``solve`` takes on CUDA: ``step(t, x, dt) -> retract(x + dt f(x))``, one launch;
    ``segment(t, x, dt, m)``: ``m`` steps in one launch.

    Two scratch slots are kept and the result of a step is one of them; a step given back
    that result reads it and writes the other slot, so a run allocates its state once.
    """

    def __init__(self, model) -> None:
        self.model = model
        self._buf = [None, None]  # two (2, B, n, d) scratches: a result in one never meets the other's writes
        self._turn = 0

    def __call__(self, t: float, x, dt: float):
        return self.segment(t, x, dt, 1)

    def segment(self, t: float, x, dt: float, m: int):
        """The state after ``m`` steps, in one launch (the state stays on chip between steps)."""
        self._turn ^= 1
        out = euler_steps(self.model, x, dt, m, self._buf[self._turn])
        self._buf[self._turn] = out._base if out._base is not None else out
        return out
