"""Fused Euler steps of the identity-parameter attention flow (the ensemble workload).

``solve`` asks its backend for a fused one-step map (``Backend.fused_step``),
which asks the model (:meth:`SelfAttention.fused_step`), which lands here. A
fused step computes exactly what the generic path computes,

    x_new = retract(x + dt * P_x(A(x))),    A(x)_i = sum_j W_ij x_j,

(no projection / retraction when the model is not projected), but in one pass
per system instead of a drift call, an Euler update and a retraction that each
sweep the whole (batch, n, d) array through memory. Offered for method
"euler" with Q = K = V = I and no feed-forward term; anything else gets None
and ``solve`` uses the generic stepper.

* numba: :func:`particles.sphere._numba_kernels.euler_step_numba`, one system at a
  time in cache, parallel over systems.
* torch: batched GEMMs on cache-sized chunks of systems, using the Gram matrix
  G = X X^T three times: its diagonal is the softmax shift on the sphere (no
  max pass), <x_i, A(x)_i> = sum_j W_ij G_ij is the projection coefficient
  without touching X, and folding that into the diagonal of W makes the
  Euler update one ``baddbmm``: x + dt (W - diag(c)) x.

Both return an array they own: the first call writes into a new one, later
calls given that array back update it in place (each system reads only its
own rows, all of them before writing), so a run allocates the state once
instead of once per step -- first-touch page faults of a 67 MB array cost as
much as several steps. ``solve`` copies what it saves and does not use a
fused step when it must keep the previous state (``exit_threshold``).

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, eqs. (2.3)-(2.4), (3.3);
the authors' phase-diagram code (github.com/borjanG/2023-transformers-rotf,
phase-diagrams.py, ``step_1``) is the batched Euler + renormalise baseline.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NumbaEulerStep", "TorchEulerStep", "fused_step"]


def _eligible(model, stepper_name: str) -> bool:
    return stepper_name == "euler" and model.Q is None and model.K is None and model.V is None and model.ffn is None


def fused_step(model, stepper_name: str, backend):
    """The fused step of ``model`` for ``stepper_name`` on ``backend``, or None."""
    if not _eligible(model, stepper_name):
        return None
    if backend.name == "numba":
        return NumbaEulerStep(model)
    if backend.name == "torch":
        return TorchEulerStep(model)
    return None


class NumbaEulerStep:
    """Euler + retraction in one compiled pass per system (numpy arrays)."""

    def __init__(self, model) -> None:
        self.model = model
        self._own = None

    def __call__(self, t: float, x: np.ndarray, dt: float) -> np.ndarray:
        from particles.sphere._numba_kernels import SMALL_N, euler_step_numba

        m = self.model
        if x.shape[1] > SMALL_N:
            # long sequences: the flash kernel's drift, then the same update
            return m.space.retract(x + dt * m.numba_drift(t, x))
        if x is not self._own:
            x = np.ascontiguousarray(x)
            self._own = np.empty_like(x)
        return euler_step_numba(x, dt, m.beta, m.mode, m.causal, m.n_heads, m.projected, self._own)


class TorchEulerStep:
    """Euler + renormalisation with batched GEMMs on chunks of systems that fit in cache."""

    #: bytes of state per chunk on the CPU (a few times L2, well inside L3); CUDA takes the whole batch
    CHUNK_BYTES = 1 << 22
    #: above this many tokens per system the n x n logits of one system no longer fit a cache-sized chunk
    MAX_DENSE_N = 1024

    def __init__(self, model) -> None:
        self.model = model
        self._own = None

    def __call__(self, t: float, x, dt: float):
        import torch

        B, n, d = x.shape
        if n > self.MAX_DENSE_N:
            # The fused chunk forms n x n logits; for long sequences use the model's
            # row-streamed drift instead (O(block * n) memory), same mathematics.
            from .geometry import sphere_retract

            return sphere_retract(x + dt * self.model.drift(t, x))
        if x is not self._own:
            self._own = torch.empty_like(x, memory_format=torch.contiguous_format)
        out = self._own
        step = B if x.device.type != "cpu" else max(1, self.CHUNK_BYTES // (n * d * x.element_size()))
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device)) if self.model.causal else None
        for s in range(0, B, step):
            self._chunk(x[s : s + step], out[s : s + step], float(dt), mask)
        return out

    def _chunk(self, x, out, dt: float, mask) -> None:
        """out = retract(x + dt f(x)) for a chunk of systems; ``out`` may be ``x`` (read fully first)."""
        import torch

        m = self.model
        G = torch.bmm(x, x.transpose(1, 2))
        if m.mode == 0:
            if m.projected:
                # On the sphere G_ii = |x_i|^2 is the row maximum (Cauchy-Schwarz, up to
                # rounding), so it is the stable-softmax shift without a max pass.
                W = torch.sub(G, G.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)).mul_(m.beta)
                if mask is not None:
                    W.masked_fill_(~mask, float("-inf"))
                W.exp_()
                W.div_(W.sum(-1, keepdim=True))
            else:
                S = G * m.beta
                if mask is not None:
                    S.masked_fill_(~mask, float("-inf"))
                W = torch.softmax(S, dim=-1)
            scale = float(m.n_heads)
        else:
            W = G.mul(m.beta).sub_(m.beta if m.mode == 2 else 0.0).exp_()
            if mask is not None:
                W.masked_fill_(~mask, 0.0)
            scale = m.n_heads / x.shape[1]
        if m.projected:
            # <x_i, sum_j W_ij x_j> = sum_j W_ij G_ij, moved onto the diagonal of W
            W.diagonal(dim1=-2, dim2=-1).sub_(torch.linalg.vecdot(W, G, dim=-1))
        y = torch.baddbmm(x, W, x, alpha=dt * scale)  # x + dt * scale * (W - diag c) x
        if m.projected:
            torch.div(y, torch.linalg.vector_norm(y, dim=-1, keepdim=True), out=out)
        else:
            out.copy_(y)
