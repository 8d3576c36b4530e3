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
* torch: batched GEMMs on cache-sized chunks of systems (on the CPU, chunks in
  parallel with one thread each), using the Gram matrix G = X X^T for every
  coefficient: <x_i, A(x)_i> = sum_j W_ij G_ij is the projection coefficient
  and |A(x)_i|^2 = (W G W^T)_ii gives the new norm without touching X, so the
  projected Euler step and the renormalisation are one n x n matrix M per
  system and the update is one ``bmm``: x_new = M x.

Both return an array they own, so a run allocates the state once (numba: later
calls given that array back update it in place, each system reading all its
rows before writing) or twice (torch: two arrays, each step writing the one it
was not given) instead of once per step -- first-touch page faults of a 67 MB
array cost as much as several steps. ``solve`` copies what it saves and does not use a
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


class _StatePool:
    """State arrays of finished runs, handed to the next run of the same shape.

    A fused step owns its state arrays for one ``solve``; allocating them afresh costs a
    first-touch page fault per page, which on the ensemble (67 MB) is as much as several
    steps (measured here: 0.12 s for the first step, 0.017 s for the next), paid by every
    solve while a caller's own loop allocates once. A step takes its arrays from here and
    gives them back when it is collected; at most ``MAX_BYTES`` wait, the newest kept.
    Only arrays of at least ``MIN_BYTES`` are pooled (small ones are cheap to fault in).
    """

    MIN_BYTES = 1 << 20
    MAX_BYTES = 1 << 29

    def __init__(self) -> None:
        import threading

        self._free: list = []  # (key, array), oldest first
        self._lock = threading.Lock()

    @staticmethod
    def _key(a) -> tuple:
        return (type(a), tuple(a.shape), str(a.dtype), str(getattr(a, "device", "cpu")))

    @staticmethod
    def _nbytes(a) -> int:
        return int(a.nbytes) if hasattr(a, "nbytes") else a.numel() * a.element_size()

    def take(self, like, make):
        """A pooled array shaped like ``like`` (contents undefined), or ``make()``."""
        key = self._key(like)
        with self._lock:
            for i, (k, a) in enumerate(self._free):
                if k == key:
                    del self._free[i]
                    return a
        return make()

    def give(self, a) -> None:
        n = self._nbytes(a)
        if n < self.MIN_BYTES or n > self.MAX_BYTES:
            return
        with self._lock:
            self._free.append((self._key(a), a))
            while sum(self._nbytes(b) for _, b in self._free) > self.MAX_BYTES:
                self._free.pop(0)


_STATES = _StatePool()


def _owned(step, like, make):
    """An array for ``step`` to own (from the pool), returned to the pool when ``step`` is collected."""
    import weakref

    a = _STATES.take(like, make)
    step.__dict__.setdefault("_to_pool", {})[id(a)] = weakref.finalize(step, _STATES.give, a)
    return a


def _disown(step, a) -> None:
    """``a`` no longer goes back to the pool when ``step`` is collected (the caller keeps it)."""
    fin = step.__dict__.get("_to_pool", {}).pop(id(a), None)
    if fin is not None:
        fin.detach()


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
    """Euler + retraction in one compiled pass per system (numpy arrays).

    ``segment(t, x, dt, m)`` takes ``m`` steps with each system stepped ``m`` times while
    it sits in cache (:class:`integrators.segments.Segments` calls it between saves);
    ``release(a)`` gives the state array to ``solve`` at the end of a run (no copy).
    """

    def __init__(self, model) -> None:
        self.model = model
        self._own = None

    def __call__(self, t: float, x: np.ndarray, dt: float) -> np.ndarray:
        return self.segment(t, x, dt, 1)

    def release(self, a) -> bool:
        """Hand ``a`` over to the caller if it is this step's state array: the step stops
        updating it in place and it no longer goes back to the pool. False if not ours."""
        if a is None or a is not self._own:
            return False
        _disown(self, a)
        self._own = None
        return True

    def segment(self, t: float, x: np.ndarray, dt: float, m: int) -> np.ndarray:
        from particles.sphere._numba_kernels import SMALL_N, euler_step_numba

        model = self.model
        if x.shape[1] > SMALL_N:
            # long sequences: the flash kernel's drift, then the same update
            for j in range(m):
                x = model.space.retract(x + dt * model.numba_drift(t + j * dt, x))
            return x
        if x is not self._own:
            x = np.ascontiguousarray(x)
            if self._own is None or self._own.shape != x.shape or self._own.dtype != x.dtype:
                self._own = _owned(self, x, lambda: np.empty_like(x))
        return euler_step_numba(
            x, dt, model.beta, model.mode, model.causal, model.n_heads, model.projected, self._own, steps=m
        )


_POOL: dict[int, object] = {}


def _chunk_pool(threads: int):
    """One process-wide pool of ``threads`` workers for the CPU torch step's chunks."""
    from concurrent.futures import ThreadPoolExecutor

    if threads not in _POOL:
        _POOL[threads] = ThreadPoolExecutor(threads, thread_name_prefix="attnflow-euler")
    return _POOL[threads]


class TorchEulerStep:
    """Euler + renormalisation with batched GEMMs on chunks of systems that fit in cache.

    It owns two state arrays and writes each step into the one it was not given (the
    product y = M x cannot write over its own operand, and a copy back would cost half
    a GEMM), so a run allocates the state twice, not once per step.
    """

    #: bytes of state per chunk on the CPU (a few times L2, well inside L3); CUDA takes the whole batch
    CHUNK_BYTES = 1 << 22
    #: above this many tokens per system the n x n logits of one system no longer fit a cache-sized chunk
    MAX_DENSE_N = 1024

    def __init__(self, model) -> None:
        self.model = model
        self._own: list = []
        self._scratch: dict = {}

    def _target(self, x):
        """The owned array the step writes into: the other one when given one of them back."""
        import torch

        def make():
            return torch.empty_like(x, memory_format=torch.contiguous_format)

        if not any(x is a for a in self._own):
            if not (self._own and _StatePool._key(self._own[0]) == _StatePool._key(x)):
                self._own = [_owned(self, x, make)]
        elif len(self._own) == 1:
            self._own.append(_owned(self, x, make))
        return self._own[1] if x is self._own[0] else self._own[0]

    def _workspace(self, like, rows: int) -> dict:
        """Per-thread n x n scratch for ``rows`` systems (first-touching fresh buffers every
        chunk costs as much as the elementwise ops on them)."""
        import threading

        import torch

        n = like.shape[1]
        key = (threading.get_ident(), rows, n, like.dtype, like.device)
        ws = self._scratch.get(key)
        if ws is None:
            ws = {k: torch.empty(rows, n, n, dtype=like.dtype, device=like.device) for k in ("G", "W", "WG")}
            self._scratch[key] = ws
        return ws

    def __call__(self, t: float, x, dt: float):
        return self.segment(t, x, dt, 1)

    def segment(self, t: float, x, dt: float, m: int):
        """The state after ``m`` steps; on the CPU each cache-sized chunk of systems takes
        all ``m`` steps before the next chunk starts (the chunk stays in cache)."""
        import torch

        B, n, d = x.shape
        if n > self.MAX_DENSE_N:
            # The fused chunk forms n x n logits; for long sequences use the model's
            # row-streamed drift instead (O(block * n) memory), same mathematics.
            from .geometry import sphere_retract

            for j in range(m):
                x = sphere_retract(x + dt * self.model.drift(t + j * dt, x))
            return x
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device)) if self.model.causal else None
        if x.device.type != "cpu":
            for _ in range(m):
                out = self._target(x)
                self._chunk(x, out, float(dt), mask, None)
                x = out
            return x
        # step k writes bufs[k % 2]; the second is x itself when x is ours (a chunk's rows
        # of x are read only by that chunk's first step), else our other array
        first = self._target(x)
        bufs = (first, None if m == 1 else x if any(x is a for a in self._own) else self._target(first))
        step = max(1, self.CHUNK_BYTES // (n * d * x.element_size()))
        starts = range(0, B, step)

        def run(s):
            src, ws = x[s : s + step], self._workspace(x, step)
            for k in range(m):
                dst = bufs[k % 2][s : s + step]
                self._chunk(src, dst, float(dt), mask, ws)
                src = dst

        threads = torch.get_num_threads()
        if threads == 1 or len(starts) == 1:
            for s in starts:
                run(s)
            return bufs[(m - 1) % 2]
        # Chunks in parallel, each chunk's ops on one thread: torch's own intra-op threads
        # would meet at a barrier after every op (a dozen per chunk), and on a loaded
        # machine each barrier waits out a time slice of a preempted thread (measured:
        # 7 ms per 1 MB op instead of 0.1 ms); threads that take whole chunks as they
        # finish never wait for each other inside a step.
        pool = _chunk_pool(threads)
        torch.set_num_threads(1)
        try:
            list(pool.map(run, starts))
        finally:
            torch.set_num_threads(threads)
        return bufs[(m - 1) % 2]

    def _chunk(self, x, out, dt: float, mask, ws) -> None:
        """out = retract(x + dt f(x)) for a chunk of systems (``out`` does not overlap ``x``).

        With E the unnormalised weights, f_i = scale / z_i (SA) or scale / n (USA) and
        A_i = f_i sum_j E_ij x_j, c_i = <x_i, A_i> = f_i (E G)_ii (G symmetric) and
        a_i = 1 - dt c_i, the projected Euler step is y_i = a_i x_i + dt A_i, with
        |y_i|^2 = a_i^2 G_ii + 2 dt a_i c_i + dt^2 |A_i|^2 and |A_i|^2 = f_i^2 (E G E^T)_ii:
        every coefficient comes from n x n matrices, so the step and the renormalisation
        are y = M x with M = diag(r) (dt diag(f) E + diag(a)), r = 1 / |y_i|; the (n x d)
        state is read twice (G and M x) and written once.
        """
        import torch

        m = self.model
        c = x.shape[0]

        def buf(name):
            return None if ws is None else ws[name][:c]

        G = torch.bmm(x, x.transpose(1, 2), out=buf("G"))
        d = G.diagonal(dim1=-2, dim2=-1)
        W = buf("W")
        if m.mode == 0:
            if m.projected:
                # On the sphere G_ii = |x_i|^2 is the row maximum (Cauchy-Schwarz, up to
                # rounding), so it is the stable-softmax shift without a max pass.
                W = torch.sub(G, d.unsqueeze(-1), out=W).mul_(m.beta)
            else:
                W = torch.mul(G, m.beta, out=W)
            if mask is not None:
                W.masked_fill_(~mask, float("-inf"))
            if not m.projected:
                W.sub_(W.amax(dim=-1, keepdim=True))
            W.exp_()
            f = W.sum(-1).reciprocal_().mul_(float(m.n_heads))
        else:
            W = torch.mul(G, m.beta, out=W).sub_(m.beta if m.mode == 2 else 0.0).exp_()
            if mask is not None:
                W.masked_fill_(~mask, 0.0)
            f = torch.full(d.shape, m.n_heads / x.shape[1], dtype=x.dtype, device=x.device)
        if not m.projected:
            W.mul_(f.mul_(dt).unsqueeze(-1)).diagonal(dim1=-2, dim2=-1).add_(1.0)
        else:
            WG = torch.bmm(W, G, out=buf("WG"))
            cc = WG.diagonal(dim1=-2, dim2=-1).mul(f)  # <x_i, A_i>
            aa = WG.mul_(W).sum(-1).mul_(f).mul_(f)  # |A_i|^2
            a = torch.mul(cc, -dt).add_(1.0)
            # r^-2 = a^2 G_ii + 2 dt a c + dt^2 |A|^2
            r = torch.addcmul(aa.mul_(dt * dt), a, cc, value=2.0 * dt).addcmul_(a * a, d).rsqrt_()
            W.mul_(f.mul_(r).mul_(dt).unsqueeze(-1)).diagonal(dim1=-2, dim2=-1).add_(a.mul_(r))
        torch.bmm(W, x, out=out)
