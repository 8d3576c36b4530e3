"""The ensemble fast paths (issue 11, point 8) compute the general kernels' numbers.

* the Numba Euler kernel (:mod:`particles.sphere._numba_euler`) against the general
  per-system kernel with its Euler epilogue, every normalisation, mask, head count,
  projected or not, n a multiple of the 4 x 4 blocks or not, in place or not;
* several steps per call (each system stepped while in cache) against as many
  one-step calls, out of place and in place;
* the torch CPU step with its chunks spread over threads against the numpy reference
  (the test makes the chunks small so that several run at once; segments of 1, 3, 7
  and 9 steps between saves, so the ping-pong arrays end on either one), and the
  caller's torch thread count is restored.
"""

from __future__ import annotations

import numpy as np
import pytest

from integrators import solve
from particles import SelfAttention, uniform_sphere


def _general_euler(x, dt, beta, mode, causal, heads, projected):
    from particles.sphere import _numba_kernels as K

    out = np.empty_like(x)
    q = x[None]
    flags = (mode, causal, float(heads), True, projected)
    K._run_small(x, q, q, q, K._no_base(x), False, beta, *flags, True, dt, projected, out)
    return out


@pytest.mark.parametrize("n", [16, 13])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_numba_euler_kernel_equals_general_kernel(n, mode):
    from particles.sphere._numba_kernels import euler_step_numba

    x = uniform_sphere(9, n, 24, seed=5)
    for causal in (False, True):
        for heads in (1, 3):
            for projected in (True, False):
                ref = _general_euler(x, 0.1, 2.5, mode, causal, heads, projected)
                out = euler_step_numba(x, 0.1, 2.5, mode, causal, heads, projected, np.empty_like(x))
                assert np.max(np.abs(out - ref)) < 1e-14
                y = x.copy()
                assert euler_step_numba(y, 0.1, 2.5, mode, causal, heads, projected, y) is y
                assert np.max(np.abs(y - ref)) < 1e-14
                if projected:
                    assert np.max(np.abs(np.linalg.norm(y, axis=-1) - 1.0)) < 1e-14


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_numba_euler_kernel_several_steps_equal_single_steps(mode):
    from particles.sphere._numba_kernels import euler_step_numba

    x = uniform_sphere(7, 13, 10, seed=mode)
    for causal, projected in ((False, True), (True, True), (False, False)):
        ref = x.copy()
        for _ in range(5):
            ref = euler_step_numba(ref, 0.02, 1.0, mode, causal, 2, projected, np.empty_like(ref))
        assert np.all(np.isfinite(ref)) and np.max(np.abs(ref - x)) > 1e-3
        out = euler_step_numba(x, 0.02, 1.0, mode, causal, 2, projected, np.empty_like(x), steps=5)
        assert np.max(np.abs(out - ref)) < 1e-13
        y = x.copy()
        assert euler_step_numba(y, 0.02, 1.0, mode, causal, 2, projected, y, steps=5) is y
        assert np.max(np.abs(y - ref)) < 1e-13


def test_numba_euler_kernel_keeps_float32():
    from particles.sphere._numba_kernels import euler_step_numba

    x = uniform_sphere(4, 12, 8, seed=1)
    ref = _general_euler(x, 0.1, 1.0, 0, False, 1, True)
    out = euler_step_numba(x.astype(np.float32), 0.1, 1.0, 0, False, 1, True, np.empty(x.shape, np.float32))
    assert out.dtype == np.float32 and np.max(np.abs(out - ref)) < 1e-6


@pytest.mark.parametrize(
    "model",
    [SelfAttention(beta=3.0), SelfAttention(beta=1.0, normalization="usa", causal=True), SelfAttention(beta=0.5, projected=False)],
    ids=["sa", "usa-causal", "unprojected"],
)
def test_torch_threaded_chunks_equal_numpy(monkeypatch, model):
    torch = pytest.importorskip("torch")
    from particles.sphere._fused import TorchEulerStep

    x0 = uniform_sphere(11, 12, 6, seed=3)
    monkeypatch.setattr(TorchEulerStep, "CHUNK_BYTES", 2 * 12 * 6 * 8)  # two systems a chunk: six chunks
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kw = {"dt": 0.05, "method": "euler", "save_at": [0.0, 0.05, 0.2, 0.55, 1.0]}
        got = solve(model, x0, 1.0, backend="torch", **kw).x
        assert torch.get_num_threads() == 2  # restored after every step
    finally:
        torch.set_num_threads(before)
    ref = solve(model, x0, 1.0, **kw).x
    assert np.max(np.abs(got - ref)) < 1e-12


def test_state_arrays_are_recycled_between_runs_never_shared():
    import gc

    from particles.sphere._fused import _STATES, NumbaEulerStep, _StatePool

    model = SelfAttention(beta=1.0)
    x = uniform_sphere(64, 32, 64, seed=2)  # 1 MiB: pooled
    assert x.nbytes >= _StatePool.MIN_BYTES
    a = NumbaEulerStep(model)
    ptr = a(0.0, x, 0.1).ctypes.data
    b = NumbaEulerStep(model)  # while a lives, b gets an array of its own
    assert b(0.0, x, 0.1).ctypes.data != ptr
    del a
    gc.collect()
    c = NumbaEulerStep(model)  # a's array, given back, serves the next run
    y = c(0.0, x, 0.1)
    assert y.ctypes.data == ptr
    ref = solve(model, x, 0.1, dt=0.1, method="euler").x[-1]
    assert np.max(np.abs(y - ref)) < 1e-12  # whatever the recycled array held before
    del b, c, y
    gc.collect()
    assert sum(_StatePool._nbytes(v) for _, v in _STATES._free) <= _StatePool.MAX_BYTES


def test_last_frame_without_saved_states_is_the_last_save_and_stays_put(monkeypatch):
    """save_states=False: the fused step updates its state in place and the frame of the last
    save is not copied at every save; it must still be the state at the last save when steps
    follow it, and must not change when a later run takes a state array from the pool."""
    from particles.sphere._fused import _StatePool

    monkeypatch.setattr(_StatePool, "MIN_BYTES", 0)  # pool these small states too
    model = SelfAttention(beta=2.0)
    x0 = uniform_sphere(4, 10, 5, seed=8)
    kw = {"dt": 0.05, "method": "euler"}
    # last save at t = 0.5, steps go on to t_end = 1.0
    got = solve(model, x0, 1.0, backend="numba", save_at=[0.0, 0.25, 0.5], save_states=False, **kw)
    ref = solve(model, x0, 0.5, backend="numpy", save_at=[0.0, 0.5], **kw).x[-1]
    np.testing.assert_allclose(got.final, ref, rtol=0, atol=1e-13)
    # the last save at t_end: the step's own array is handed over, not given back to the pool
    a = solve(model, x0, 1.0, backend="numba", save_states=False, **kw)
    kept = a.final.copy()
    import gc

    gc.collect()  # the first run's step is gone: a pooled state array would be free now
    b = solve(model, uniform_sphere(4, 10, 5, seed=9), 1.0, backend="numba", save_states=False, **kw)
    assert b.final is not a.final
    np.testing.assert_array_equal(a.final, kept)
    np.testing.assert_allclose(kept, solve(model, x0, 1.0, backend="numpy", **kw).final, rtol=0, atol=1e-13)
