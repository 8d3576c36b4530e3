"""Fused Euler-Maruyama steps for the covariance SDEs (``solve`` asks for them through the backend).

The generic path draws the (batch, 2, m, m) Brownian increment, evaluates the drift and
the factorised diffusion in two passes, adds them, symmetrises and checks exits through
numpy. On the numba backend one compiled pass per path does all of it, drawing the path's
Brownian row in place from the same counter-based stream as
:class:`integrators.BrownianIncrements`. On the torch backend the step stays on the
device: the increment is drawn into one reused buffer (on a GPU, on the device by
:mod:`integrators._philox_torch`, the same numbers), the non-symmetric parts of drift
(:func:`_algebra.b_sa_parts`, the lower triangle of b_ReLU) and noise are summed first and symmetrised
once (so the new state is exactly symmetric), on the CPU the batch runs in chunks that
stay in cache, and the exit check is one reduction. On CUDA (m <= 16, float64, Triton
installed) the whole step is one Triton kernel that draws the increments itself
(:mod:`particles.covariance._triton_sde`). Both give the generic step's numbers up to
rounding (tests/test_cov_fused.py).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fused_sde_step"]

_PSD = {"euler-maruyama": False, "psd-euler-maruyama": True}
_CPU_CHUNK = 2048  # paths per torch pass on the CPU


def _draws_on_device(device) -> bool:
    """Draw the increments where the state lives (no host -> device copy per step), except on
    the CPU, where the Numba stream is faster than torch integer ops; both give the same numbers."""
    return device.type != "cpu"


def fused_sde_step(model, stepper_name: str, backend, noise):
    """``step(t, V, h, k, exited, threshold) -> (V_new, newly_exited)`` or None where not offered.

    ``exited`` and ``newly_exited`` are (batch,) bool arrays of the backend (torch
    tensors on V's device, numpy arrays for numba).

    Offered for (psd-)Euler-Maruyama with a :class:`integrators.BrownianIncrements` path
    (any coarsening factor), on the numba backend in float64 and on the torch backend.
    """
    from integrators.brownian import BrownianIncrements

    if stepper_name not in _PSD or type(noise) is not BrownianIncrements:
        return None
    if backend.name == "torch":
        return _torch_step(model, backend, noise, _PSD[stepper_name])
    if backend.name != "numba" or backend.dtype != "float64":
        return None
    from . import _numba_kernels as nk

    coef = model.coefficients
    key, factor, sqdt, psd = noise.key, noise.factor, math.sqrt(noise.dt), _PSD[stepper_name]

    def step(t, V, h, k, exited, threshold):
        return nk.em_step(np.ascontiguousarray(V), exited, k * factor, factor, key, sqdt, h, coef, model.tau0,
                          model.c_plus, model.c_minus, threshold, psd)  # fmt: skip

    return step


def _torch_step(model, backend, noise, psd: bool, use_triton: bool | None = None):
    """The torch step; on CUDA (``use_triton=None``: when eligible) one Triton kernel per step
    (:mod:`particles.covariance._triton_sde`), which ``use_triton=True`` also runs on CPU
    tensors, under Triton's interpreter (the tests)."""
    import torch

    from integrators.matrix_steppers import psd_project

    from . import _algebra as alg

    c = model.coefficients
    buf = {}

    def factor(V):
        """alg.psd_factor's Cholesky branch in five ops; any doubtful matrix takes the full rule."""
        L, info = torch.linalg.cholesky_ex(V)
        floor = (8 * V.shape[-1] * torch.finfo(V.dtype).eps) * V.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)
        ok = (info == 0) & (L.diagonal(dim1=-2, dim2=-1).square().amin(dim=-1) > floor)  # NaN: not ok
        return L if bool(ok.all()) else alg.psd_factor(V)

    def increment(V, dW, h):
        """V + h drift + g dW as s V + (X + X^T): the non-symmetric parts of the drift
        (b_SA's cross term, b_ReLU's lower triangle) ride in X, so one symmetrisation serves
        all and the result is exactly symmetric."""
        m = V.shape[-1]
        X = alg.noise_increment(factor(V), V, dW, c.k_lin, c.k_sa, model.tau0, symmetric=False)
        scale = None
        if c.a_sa:
            coef, K = alg.b_sa_parts(V, model.tau0)
            X.add_(K, alpha=h * c.a_sa)
            scale = 1.0 + (h * c.a_sa) * coef
        if c.a_relu:  # the m(m-1)/2 pairs i > j, added below the diagonal: the symmetrisation mirrors them
            i, j = alg._strict_lower(m, V)
            low = alg.b_relu_pairs(V, i, j, model.c_plus, model.c_minus)
            X.view(V.shape[0], m * m).index_add_(1, i * m + j, low, alpha=h * c.a_relu)
        Y = V.clone() if scale is None else V * scale[:, None, None]
        return Y.add_(X + X.mT)

    def one(V, dW, h, frozen, limit):
        Y = increment(V, dW, h)
        if psd:
            Y = psd_project(Y)
        ok = Y.abs().amax(dim=(-2, -1)) <= limit  # NaN compares False: flagged with inf and overflow
        new = ~ok & ~frozen
        # always the select, never "if keep.any()": that test would read the flags back every step
        return torch.where((new | frozen)[:, None, None], V, Y), new

    fused = {}

    def step(t, V, h, k, exited, threshold):
        if use_triton or (use_triton is None and V.device.type == "cuda"):
            from ._triton_sde import TritonEMStep, eligible

            if eligible(V):
                if "triton" not in fused:
                    fused["triton"] = TritonEMStep(model, noise, psd, one)
                return fused["triton"](t, V, h, k, exited, threshold)
        B = V.shape[0]
        P = int(np.prod(noise.shape[1:]))
        if _draws_on_device(V.device):
            from integrators._philox_torch import device_fill

            w = device_fill(noise.key, k * noise.factor, noise.factor, math.sqrt(noise.dt), B, P, V.device)
            dW = w.reshape(noise.shape).to(dtype=V.dtype)
        else:
            if "w" not in buf:
                buf["w"] = np.empty((B, P))
                buf["wt"] = torch.from_numpy(buf["w"])  # shares memory with the numpy buffer
            # drawn in parallel before the torch ops (measured: drawing on a background thread
            # while they run makes the step 1.3x slower on 2 cores: torch keeps both busy)
            noise.fill(k, buf["w"])
            dW = buf["wt"].reshape(noise.shape).to(device=V.device, dtype=V.dtype, non_blocking=True)
        limit = min(math.inf if threshold is None else float(threshold), torch.finfo(V.dtype).max)
        frozen = torch.as_tensor(exited, device=V.device)  # a device tensor from solve: no copy
        # on the CPU, chunks whose temporaries stay in cache (measured: 1.3-1.5x faster than one pass)
        size = _CPU_CHUNK if V.device.type == "cpu" else B
        parts = [one(V[a : a + size], dW[a : a + size], h, frozen[a : a + size], limit) for a in range(0, B, size)]
        Y = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        new = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        return Y, new  # stays on the device: solve reads the exit flags only at saves

    step.kernels = fused  # the Triton step once built (tests read its last increment)
    return step

