"""The reference implementations the flow benchmark compares against.

* :func:`numpy_dense_drift` -- the straightforward NumPy SA drift: the dense
  n x n matrix exp(beta X X^T) (row maximum subtracted), a matmul, the row
  sums, the projection.
* :class:`AuthorsEuler` -- the authors' batched torch step of the phase-diagram
  code (github.com/borjanG/2023-transformers-rotf, ``phase-diagrams.py``,
  ``simu_xform.step_1`` with Q = K = V = I and softmax): preallocated buffers,
  ``SM = softmax(beta M M^T)``, ``M2 = eta SM M + M``, ``M = normalize(M2)``.
  It steps along the *unprojected* attention term and renormalises; ours steps
  along the projected field (GLPR eq. 2.3) and renormalises. The two agree to
  first order in dt (the normal component only rescales the row), and ours
  does strictly more arithmetic (the projection).
* :func:`time_best` -- best-of-k wall time; on a shared machine the minimum
  is the least noisy estimate of the cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

__all__ = ["AuthorsEuler", "gemm_rate", "numpy_dense_drift", "time_best"]


def time_best(fn: Callable[[], object], repeat: int, min_time: float = 0.0) -> float:
    """Best wall time of ``fn()`` over ``repeat`` calls (after one warm-up call).

    Keeps calling, up to 10 x ``repeat``, until ``min_time`` seconds were spent.
    """
    fn()
    best = float("inf")
    spent = 0.0
    calls = 0
    while calls < repeat or (spent < min_time and calls < 10 * repeat):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        calls += 1
    return best


def gemm_rate(size: int, repeat: int) -> dict[str, float]:
    """float64 GEMM rate (GFLOP/s) of NumPy's and torch's BLAS on size x size matrices."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    flops = 2.0 * size**3
    t_np = time_best(lambda: a @ b, repeat)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    t_th = time_best(lambda: at @ bt, repeat)
    return {"numpy_gflops": flops / t_np / 1e9, "torch_gflops": flops / t_th / 1e9}


def numpy_dense_drift(x: np.ndarray, beta: float) -> np.ndarray:
    """SA drift of one system (n, d) the dense way: O(n^2) memory."""
    s = beta * (x @ x.T)
    s -= s.max(axis=1, keepdims=True)
    w = np.exp(s)
    y = (w @ x) / w.sum(axis=1, keepdims=True)
    return y - np.sum(x * y, axis=1, keepdims=True) * x


class AuthorsEuler:
    """The authors' in-place batched Euler + normalise step (see module docstring)."""

    def __init__(self, x0, beta: float, dt: float) -> None:
        import torch

        self.torch = torch
        self.M = x0.clone()
        B, n, _ = x0.shape
        self.M2 = torch.empty_like(self.M)
        self.SM = torch.empty(B, n, n, dtype=x0.dtype, device=x0.device)
        self.beta = float(beta)
        self.eta = float(dt)

    def step(self) -> None:
        torch = self.torch
        self.M2.copy_(self.M)
        torch.matmul(self.M2, self.M.transpose(1, 2), out=self.SM)
        self.SM *= self.beta
        self.SM = torch.nn.functional.softmax(self.SM, dim=2)
        torch.matmul(self.SM, self.M, out=self.M2)
        self.M2 *= self.eta
        self.M2 += self.M
        torch.nn.functional.normalize(self.M2, dim=2, out=self.M)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
