"""Matrix steppers: PSD preservation, strong order on the covariance problem, exit flags."""

import numpy as np
import pytest

from integrators import STEPPERS, solve
from particles.covariance import ShapedBlockSDE, ShapedMLPSDE
from particles.covariance.problems import strong_order_slope


def _min_eig(V):
    return np.linalg.eigvalsh(V).min(axis=-1)


def test_psd_step_keeps_psd_where_euler_maruyama_does_not():
    """Near-collinear tokens (rho0 = 0.999), dt = 0.05: EM leaves the PSD cone on some paths; the projected step never."""
    model = ShapedMLPSDE(0.0, -1.0)
    V0 = np.repeat(np.array([[1.0, 0.999], [0.999, 1.0]])[None], 2000, axis=0)
    em = solve(model, V0, 1.0, dt=0.05, method="euler-maruyama", seed=61, save_at=21)
    psd = solve(model, V0, 1.0, dt=0.05, method="psd-euler-maruyama", seed=61, save_at=21)
    assert np.min(_min_eig(em.x)) < -1e-6
    scale = np.max(np.abs(psd.x), axis=(-1, -2))
    assert np.all(_min_eig(psd.x) >= -1e-12 * scale)
    # away from the boundary the two steps coincide
    far = np.all(_min_eig(em.x) > 1e-8, axis=0)
    assert far.mean() > 0.5
    assert np.allclose(em.final[far], psd.final[far], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["euler-maruyama", "psd-euler-maruyama"])
def test_strong_order_on_the_covariance_problem(name):
    """Strong order on nested Brownian paths (particles.covariance.convergence_problem) matches the declaration."""
    stepper = STEPPERS[name]
    slope, errs = strong_order_slope(stepper)
    assert np.all(np.isfinite(errs)) and min(errs) > 0
    assert abs(slope - stepper.order) < 0.2, (slope, errs)


def test_exploding_paths_are_flagged_not_dropped():
    """The cubic attention drift blows some paths up: they are flagged, timed and masked; none vanish."""
    model = ShapedBlockSDE(gamma=1.0, tau0=0.5)
    V0 = np.repeat((2.0 * np.eye(3) + 0.5)[None], 200, axis=0)
    sol = solve(model, V0, 1.0, dt=0.01, method="psd-euler-maruyama", seed=62, exit_threshold=1e4)
    assert sol.x.shape[1] == 200 and sol.exited.shape == (200,)
    assert 0.0 < sol.exit_fraction < 1.0
    t_exit = sol.exit_time[sol.exited]
    assert np.all((t_exit > 0) & (t_exit <= 1.0 + 1e-12)) and np.all(np.isnan(sol.exit_time[~sol.exited]))
    assert np.all(np.isfinite(sol.final[~sol.exited]))
    # an exited path is stored as NaN from its exit time on, never frozen at its last value
    after = sol.t[:, None] >= sol.exit_time[None, :]  # (t, batch); NaN exit times compare False
    assert np.all(np.isnan(sol.x[after])) and np.all(np.isfinite(sol.x[~after]))
