"""The fused (PSD-)Euler-Maruyama step of the covariance SDEs as one Triton kernel (m <= 16).

``solve`` reaches it through ``model.fused_sde_step`` on the torch backend on CUDA
(:func:`particles.covariance._fused.fused_sde_step`); CPU tensors run the same kernel
under Triton's interpreter, which is how it is tested without a GPU.

One launch per step does what the torch step does in some forty kernels: draw the
Brownian matrices of every path in place (the numbers of the CPU stream,
:mod:`integrators._philox`), drift, factor, noise, update, symmetrisation, the exit test
(see :mod:`particles.covariance._triton_sde_kernels`). The exited flags live on the
device; where ``solve`` hands them over as a device tensor the step returns its
``newly_exited`` there too (a host read only to ask whether any path needs the eigen
rule), where it hands over numpy flags the one host read is the (batch,) status byte.
Paths whose factor or PSD projection needs an eigendecomposition (status 2: a state on
or next to the cone's boundary) are redone by the torch step with the increment the kernel wrote, so every
path follows the rule of :func:`particles.covariance._algebra.psd_factor` and
:func:`integrators.matrix_steppers.psd_project`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_M", "TritonEMStep", "eligible"]

#: largest m the kernel takes (its tiles are M x M, M the power of two >= m)
MAX_M = 16
#: terms of the arcsine series (on [0, 1/2] the next term is below 1e-19)
_NAS = 30


def _asin_series(n: int) -> list[float]:
    """Coefficients (2k)! / (4^k (k!)^2 (2k + 1)) of asin z = sum_k c_k z^(2k+1), highest k first."""
    c, t = [], 1.0
    for k in range(n):
        c.append(t / (2 * k + 1))
        t *= (2 * k + 1) / (2 * k + 2)
    return c[::-1]


def eligible(V) -> bool:
    """The kernel's case: float64 (batch, m, m) with m <= MAX_M, and triton importable."""
    from particles._triton_build import triton_available

    return V.ndim == 3 and V.shape[-1] <= MAX_M and str(V.dtype) == "torch.float64" and triton_available()


def _pow2(v: int) -> int:
    p = 2
    while p < v:
        p *= 2
    return p


class TritonEMStep:
    """``step(t, V, h, k, exited, threshold) -> (V_new, newly_exited)`` with one kernel launch.

    ``redo(V, dW, h, frozen, limit) -> (Y, new)`` is the torch step for the paths the kernel
    hands back (status 2).
    """

    def __init__(self, model, noise, psd: bool, redo) -> None:
        self.model, self.noise, self.psd, self.redo = model, noise, bool(psd), redo
        self._tables: dict = {}
        self._params: dict = {}
        self._exited = None  # device flags, kept in step with solve's host array
        self._n_exited = 0

    def _consts(self, device):
        import torch

        from integrators import _philox as ph

        key = str(device)
        if key not in self._tables:
            self._tables[key] = (
                torch.tensor(ph._KI.astype(np.int64), device=device),
                torch.tensor(ph._WI, dtype=torch.float64, device=device),
                torch.tensor(ph._FI, dtype=torch.float64, device=device),
                torch.tensor(_asin_series(_NAS), dtype=torch.float64, device=device),
            )
        return self._tables[key]

    def _device_exited(self, exited: np.ndarray, device):
        import torch

        n = int(exited.sum())
        if self._exited is None or self._exited.shape[0] != exited.shape[0] or n != self._n_exited:
            self._exited = torch.as_tensor(exited.astype(np.int8), device=device)
            self._n_exited = n
        return self._exited

    def __call__(self, t, V, h, k, exited, threshold):
        import torch

        from integrators import _philox as ph
        from particles._triton_build import check_tensor, load_kernels

        interpret = check_tensor(V, "V")
        kern = load_kernels("_triton_sde_kernels.py", interpret, beside=__file__).em_kernel
        model, noise = self.model, self.noise
        c = model.coefficients
        V = V.contiguous()
        B, m, _ = V.shape
        n_noise = int(np.prod(noise.shape[1:])) // (m * m)
        KI, WI, FI, AS = self._consts(V.device)
        out = torch.empty_like(V)
        dw = torch.empty((B, n_noise, m, m), dtype=torch.float64, device=V.device)
        status = torch.empty(B, dtype=torch.int8, device=V.device)
        # ``exited``: solve's host flags (numpy; ``newly_exited`` goes back as numpy) or, where
        # solve keeps the flags on the device, a bool tensor there (``newly_exited`` stays too)
        on_host = isinstance(exited, np.ndarray)
        frozen = self._device_exited(exited, V.device) if on_host else exited.to(V.device).contiguous()
        limit = math.inf if threshold is None else float(threshold)
        M = _pow2(m)
        pkey = (float(h), limit, m, str(V.device))
        if pkey not in self._params:  # one host -> device copy per step size, not per step
            self._params[pkey] = torch.tensor(
                [math.sqrt(noise.dt), float(h), float(c.a_sa), float(c.a_relu), 1.0 / (model.tau0 * model.tau0),
                 (model.c_plus - model.c_minus) ** 2 / (2.0 * math.pi), math.sqrt(c.k_lin / 2.0),
                 math.sqrt(c.k_sa) / (model.tau0 * m), limit, float(ph._ZR), float(ph._ZR_INV),
                 8.0 * m * 2.220446049250313e-16],
                dtype=torch.float64,
            ).to(V.device)  # fmt: skip
        params = self._params[pkey]
        kern[(B,)](
            V, out, dw, frozen, status, KI, WI, FI, AS, params,
            m, int(k) * noise.factor, noise.factor, int(noise.key[0]), int(noise.key[1]),
            NOISE=n_noise, PSD=self.psd, M=M, NAS=_NAS, num_warps=1 if M <= 8 else 2,
        )  # fmt: skip
        self.last_dw = dw  # the increment this step drew (the redo uses it; the tests read it)
        lim = min(limit, torch.finfo(V.dtype).max)
        if not on_host:
            redo_t = status == 2
            if bool(redo_t.any()):  # one scalar read per step: are there eigen-rule paths?
                idx = redo_t.nonzero().squeeze(1)
                Y, new_r = self.redo(V[idx], dw[idx], float(h), frozen[idx].bool(), lim)
                out[idx] = Y
                status[idx] = new_r.to(torch.int8)
            return out, status == 1
        st = status.cpu().numpy()  # the one host read of the step
        redo = np.flatnonzero(st == 2)
        if redo.size:
            idx = torch.as_tensor(redo, device=V.device)
            Y, new_r = self.redo(V[idx], dw[idx], float(h), frozen[idx].bool(), lim)
            out[idx] = Y
            st[redo[new_r.cpu().numpy()]] = 1
        new = st == 1
        if new.any():
            frozen[torch.as_tensor(np.flatnonzero(new), device=V.device)] = 1
            self._n_exited += int(new.sum())
        return out, new
