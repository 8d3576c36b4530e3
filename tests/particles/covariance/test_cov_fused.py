"""The fused covariance SDE steps (particles.covariance._fused) give the generic step's numbers.

The numba kernel draws each path's Brownian row in place from the counter-based stream and
the torch step stays on the device; both must reproduce ``stepper.step`` + retraction + exit
handling of the generic path on the same BrownianIncrements: the same states to round-off,
the same exited paths at the same times, for Euler-Maruyama and the PSD step, on fine and
coarsened paths.
"""

from __future__ import annotations

import numpy as np
import pytest

from integrators import STEPPERS, BrownianIncrements, solve
from integrators.backends import NumbaBackend, TorchBackend
from particles.covariance import ResidualLinearSDE, ShapedAttentionSDE, ShapedBlockSDE, ShapedMLPSDE

pytest.importorskip("torch")

MODELS = {
    "block": ShapedBlockSDE(0.5, 0.8, 0.3, -1.0, heads=2),
    "attention": ShapedAttentionSDE(0.7, 1.0),
    "lnr": ShapedMLPSDE(0.2, -0.7),
    "linear": ResidualLinearSDE(0.4),
}


def _v0(batch=96, m=4, seed=0):
    r = np.random.default_rng(seed)
    A = r.standard_normal((batch, m, m)) / np.sqrt(m)
    return A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(m)


def _pair(backend_fused, backend_plain, model, method, V0, T, dt, factor=1, threshold=None):
    fine = BrownianIncrements(tuple(model.noise_shape(V0.shape)), dt / factor, seed=21)
    path = fine.coarsen(factor) if factor > 1 else fine
    kw = dict(dt=dt, method=method, brownian=path, save_at=3, exit_threshold=threshold)
    return solve(model, V0, T, backend=backend_fused, **kw), solve(model, V0, T, backend=backend_plain, **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["euler-maruyama", "psd-euler-maruyama"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_fused_equals_generic(name, method, backend):
    model = MODELS[name]
    fused, plain = (NumbaBackend(), NumbaBackend(fused=False)) if backend == "numba" else (TorchBackend(), TorchBackend(fused=False))
    # paths that pass 1e4 are stopped: beyond, the cubic attention drift races to overflow and
    # amplifies round-off without bound
    a, b = _pair(fused, plain, model, method, _v0(), 0.4, 0.02, factor=3, threshold=1e4)
    assert a.x.shape == b.x.shape == (3, 96, 4, 4)
    assert np.array_equal(a.exited, b.exited)
    # Paths the PSD step drives onto the cone's boundary agree in law only: at a rank-deficient
    # state the factor (Cholesky or eigen root) is chosen on round-off. Compare the paths that
    # stay inside (smallest / largest eigenvalue > 1e-8 at every save) -- nearly all of them.
    w = np.linalg.eigvalsh(np.nan_to_num(b.x))  # exited paths are NaN from their exit on
    inside = ~b.exited & np.all(w[..., 0] > 1e-8 * w[..., -1], axis=0)
    assert inside.mean() > 0.8
    assert np.max(np.abs(a.x[:, inside] - b.x[:, inside])) <= 1e-12 * np.max(np.abs(b.x[:, inside]))
    assert np.array_equal(a.x, np.swapaxes(a.x, -1, -2), equal_nan=True)  # exactly symmetric


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_fused_exits_equal_generic_exits(backend):
    """Blow-ups (gamma = 1, small tau0): the same paths exit at the same times; both store them as NaN.

    Plain Euler-Maruyama: the PSD step drives some paths onto singular states, where the
    factor switches between Cholesky and the eigen root on round-off, so two roundings of
    the same path can take different (equally valid) noise maps there.
    """
    model = ShapedBlockSDE(gamma=1.0, tau0=0.5)
    V0 = np.repeat((2.0 * np.eye(3) + 0.5)[None], 200, axis=0)
    fused, plain = (NumbaBackend(), NumbaBackend(fused=False)) if backend == "numba" else (TorchBackend(), TorchBackend(fused=False))
    a, b = _pair(fused, plain, model, "euler-maruyama", V0, 1.0, 0.01, threshold=1e4)
    assert 0.05 < a.exit_fraction < 0.95
    assert np.array_equal(a.exited, b.exited)
    assert np.array_equal(a.exit_time[a.exited], b.exit_time[b.exited])
    assert np.all(np.isnan(a.final[a.exited])) and np.all(np.isnan(b.final[b.exited]))  # masked, never frozen
    ok = ~a.exited
    # near blow-up the cubic drift amplifies the torch step's different summation order
    assert np.max(np.abs(a.final[ok] - b.final[ok])) <= 1e-9 * np.max(np.abs(b.final[ok]))


def test_fused_step_is_offered_where_it_applies():
    model = MODELS["block"]
    noise = BrownianIncrements((8, 2, 4, 4), 0.01, seed=0)
    em, heun = STEPPERS["euler-maruyama"], STEPPERS["stratonovich-heun"]
    assert NumbaBackend().fused_sde_step(model, em, noise) is not None
    assert TorchBackend().fused_sde_step(model, em, noise) is not None
    assert NumbaBackend(fused=False).fused_sde_step(model, em, noise) is None
    assert NumbaBackend().fused_sde_step(model, heun, noise) is None
    assert NumbaBackend("float32").fused_sde_step(model, em, noise) is None  # float32 runs the generic kernels


def test_torch_float32_fused_step_tracks_float64():
    model = MODELS["block"]
    V0 = _v0(32)
    a = solve(model, V0, 0.2, dt=0.01, method="euler-maruyama", backend="torch", dtype="float32", seed=4)
    b = solve(model, V0, 0.2, dt=0.01, method="euler-maruyama", backend="torch", seed=4)
    assert a.final.dtype == np.float32
    assert np.max(np.abs(a.final - b.final)) < 1e-4 * np.max(np.abs(b.final))
