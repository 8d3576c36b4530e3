"""LNR's shaped MLP SDE: geometric Brownian diagonal, the m = 2 correlation SDE, and the linear closed forms."""

import math

import numpy as np
import pytest
from scipy import stats

from integrators import solve
from particles.covariance import (
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    ShapedMLPSDE,
    correlation_sde,
)

R0 = 0.3
V2 = np.array([[1.0, R0], [R0, 1.0]])


def _rho(V):
    return V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1])


@pytest.fixture(scope="module")
def lnr_run():
    """LNR SDE, m = 2, T = 1: 2e4 Euler-Maruyama paths at dt = 2e-3."""
    model = ShapedMLPSDE(c_plus=0.0, c_minus=-1.0)
    sol = solve(model, np.repeat(V2[None], 20000, axis=0), 1.0, dt=2e-3, method="euler-maruyama", backend="numpy", seed=21)
    assert not sol.exited.any()
    return model, sol.final


def test_diagonal_is_geometric_brownian_motion(lnr_run):
    """dV^{aa} = sqrt(2) V^{aa} dB: E V^{aa}_T = V^{aa}_0 and Var log V^{aa}_T = 2T, within 3 standard errors."""
    _, V = lnr_run
    N, T = len(V), 1.0
    for a in range(2):
        v = V[:, a, a]
        assert abs(v.mean() - 1.0) < 3 * v.std() / math.sqrt(N)
        lv = np.log(v)
        # standard error of a sample variance: sqrt(Var[(x - mu)^2] / N)
        se = np.std((lv - lv.mean()) ** 2) / math.sqrt(N)
        assert abs(lv.var(ddof=1) - 2 * T) < 3 * se
        assert abs(lv.mean() + T) < 3 * lv.std() / math.sqrt(N)  # Ito: E log V = -T


def test_correlation_sde_has_the_law_of_the_matrix_sde(lnr_run):
    """rho_T from the artanh correlation SDE and from the 2 x 2 matrix SDE: KS p > 0.01 at 2e4 samples."""
    model, V = lnr_run
    corr = correlation_sde(model)
    x = solve(corr, np.full((20000, 1), math.atanh(R0)), 1.0, dt=2e-3, method="euler-maruyama", backend="numpy", seed=22)
    assert stats.ks_2samp(np.tanh(x.final[:, 0]), _rho(V)).pvalue > 0.01


def test_residual_mlp_correlation_sde():
    """The same reduction with a residual (drift gamma^2 nu, diffusion 2 gamma^2): KS p > 0.01 at 1e4 samples."""
    model = ResidualShapedMLPSDE(gamma=0.7, c_plus=0.5, c_minus=-1.5)
    V = solve(model, np.repeat(V2[None], 10000, axis=0), 0.5, dt=2e-3, method="euler-maruyama", backend="numpy", seed=23).final
    x = solve(correlation_sde(model), np.full((10000, 1), math.atanh(R0)), 0.5, dt=2e-3, method="euler-maruyama",
              backend="numpy", seed=24).final  # fmt: skip
    assert stats.ks_2samp(np.tanh(x[:, 0]), _rho(V)).pvalue > 0.01


@pytest.mark.parametrize("model, k", [(ShapedMLPSDE(0.4, 0.4), 1.0), (ResidualLinearSDE(0.6), 0.36 * (2 - 0.36))])
def test_linear_sde_second_moments(model, k):
    """MODELS.md check 2 (c_+ = c_-, no attention): E[(V^{12})^2], E[V^{11} V^{22}], E[(V^{11})^2] within 3 SE."""
    T, N = 0.25, 40000
    V = solve(model, np.repeat(V2[None], N, axis=0), T, dt=5e-3, method="euler-maruyama", backend="numpy", seed=25).final
    up, down = math.exp(2 * k * T), math.exp(-k * T)
    A, B = (2 * R0**2 + 1) / 3, (R0**2 - 1) / 3
    exact = {"V12^2": A * up + B * down, "V11 V22": A * up - 2 * B * down, "V11^2": up}
    emp = {"V12^2": V[:, 0, 1] ** 2, "V11 V22": V[:, 0, 0] * V[:, 1, 1], "V11^2": V[:, 0, 0] ** 2}
    for key, x in emp.items():
        assert abs(x.mean() - exact[key]) < 3 * x.std() / math.sqrt(N), (key, x.mean(), exact[key])
