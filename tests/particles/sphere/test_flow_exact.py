"""The SA/USA flow against its exact reductions (MODELS.md section 1)."""

import numpy as np
import pytest

from integrators import solve
from particles import SelfAttention, equiangular, gram, orthogonal
from tests.exact import equiangular_g, g_beta0, pair_with_inner_product, two_particle_rho

TIMES = np.linspace(0.0, 3.0, 7)


def _offdiag(x):
    g = gram(x)
    n = g.shape[-1]
    return g[..., ~np.eye(n, dtype=bool)]


# USA speeds up by e^beta (its time scale is e^{-beta}), so at fixed dt = 0.01 RK4 meets
# 1e-6 up to beta ~ 3 (measured: 6e-8 at beta = 3, 1.5e-5 at beta = 4); SA is fine at any beta.
@pytest.mark.parametrize(
    "normalization, beta", [("sa", 0.5), ("sa", 4.0), ("sa", 9.0), ("usa", 0.5), ("usa", 3.0)]
)
def test_orthogonal_start_follows_scalar_ode(normalization, beta):
    n = d = 5
    sol = solve(SelfAttention(beta=beta, normalization=normalization), orthogonal(1, n, d), TIMES[-1], dt=0.01, method="rk4", save_at=TIMES)
    g_ref = equiangular_g(normalization, beta, n, 0.0, TIMES)
    pairs = _offdiag(sol.x[:, 0])  # (time, n(n-1))
    assert np.max(np.abs(pairs - g_ref[:, None])) < 1e-6


@pytest.mark.parametrize("normalization", ["sa", "usa"])
def test_equiangular_start_random_frame(normalization):
    n, d, beta, g0 = 4, 7, 2.0, 0.3
    x0 = equiangular(2, n, d, g0, seed=1)
    sol = solve(SelfAttention(beta=beta, normalization=normalization), x0, TIMES[-1], dt=0.01, method="rk4", save_at=TIMES)
    g_ref = equiangular_g(normalization, beta, n, g0, TIMES)
    assert np.max(np.abs(_offdiag(sol.x) - g_ref[:, None, None])) < 1e-6


@pytest.mark.parametrize("normalization", ["sa", "usa"])
def test_beta_zero_closed_form(normalization):
    n = d = 6
    sol = solve(SelfAttention(beta=0.0, normalization=normalization), orthogonal(1, n, d), TIMES[-1], dt=0.01, method="rk4", save_at=TIMES)
    assert np.max(np.abs(_offdiag(sol.x[:, 0]) - g_beta0(TIMES, n)[:, None])) < 1e-8


def test_regular_simplex_is_stationary():
    n = 5
    x0 = equiangular(1, n, n, -1.0 / (n - 1), seed=3)
    sol = solve(SelfAttention(beta=3.0), x0, 2.0, dt=0.05, method="rk4")
    assert np.max(np.abs(sol.final - x0)) < 1e-12


@pytest.mark.parametrize("normalization", ["sa", "usa"])
def test_two_particles(normalization):
    beta, rho0 = 3.0, -0.4
    x0 = pair_with_inner_product(rho0, d=4)
    sol = solve(SelfAttention(beta=beta, normalization=normalization), x0, 3.0, dt=0.01, method="rk4", save_at=TIMES)
    rho = sol.x[:, 0, 0] @ np.ones(1) if False else np.einsum("td,td->t", sol.x[:, 0, 0], sol.x[:, 0, 1])
    assert np.max(np.abs(rho - two_particle_rho(normalization, beta, rho0, TIMES))) < 1e-7


def test_usa_meta_is_time_rescaled_usa():
    """META's exp(beta(<.,.> - 1))/n is USA with time divided by e^beta."""
    beta = 1.5
    x0 = orthogonal(1, 4, 4)
    t_meta = 2.0
    a = solve(SelfAttention(beta=beta, normalization="usa-meta"), x0, t_meta, dt=0.01, method="rk4")
    b = solve(SelfAttention(beta=beta, normalization="usa"), x0, t_meta * np.exp(-beta), dt=0.001, method="rk4")
    assert np.max(np.abs(a.final - b.final)) < 1e-9


def test_dopri5_meets_tolerance():
    n = d = 5
    beta = 4.0
    sol = solve(SelfAttention(beta=beta), orthogonal(1, n, d), TIMES[-1], method="dopri5", rtol=1e-10, atol=1e-12, save_at=TIMES)
    g_ref = equiangular_g("sa", beta, n, 0.0, TIMES)
    assert np.max(np.abs(_offdiag(sol.x[:, 0]) - g_ref[:, None])) < 1e-8
    assert sol.stats["n_steps"] < 300  # adaptive: far fewer than the 300 fixed RK4 steps at dt = 0.01
