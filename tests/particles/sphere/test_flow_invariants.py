"""Invariants and asymptotics of the attention flow (MODELS.md section 1)."""

import numpy as np
import pytest

from integrators import solve
from integrators.tableaus import DOPRI5, EULER, HEUN, MIDPOINT, RK4
from particles import (
    SelfAttention,
    consensus_gap,
    energy,
    hemisphere,
    random_rotation,
    uniform_sphere,
)


@pytest.mark.parametrize("normalization", ["sa", "usa"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_energy_monotone(normalization, sign):
    d = 3
    model = SelfAttention(beta=2.0, V=sign * np.eye(d), normalization=normalization)
    sol = solve(model, uniform_sphere(4, 12, d, seed=2), 4.0, dt=0.01, method="rk4", save_at=81, observables=["energy"])
    dE = np.diff(sol.observables["energy"], axis=0)
    assert np.all(sign * dE >= -1e-13)
    assert np.all(np.abs(dE).sum(axis=0) > 1e-3)  # it actually moves


@pytest.mark.parametrize("normalization", ["sa", "usa"])
def test_energy_rate_identity(normalization):
    """USA: dE/dt = (1/n) sum |xdot_i|^2; SA: dE/dt = (1/n^2) sum Z_i |xdot_i|^2 (central differences)."""
    beta, n, d = 1.5, 9, 4
    model = SelfAttention(beta=beta, normalization=normalization)
    x0 = uniform_sphere(3, n, d, seed=8)
    t1, h = 0.7, 1e-3
    sol = solve(model, x0, t1 + h, dt=2.5e-4, method="rk4", save_at=[t1 - h, t1, t1 + h], observables=["energy"])
    E = sol.observables["energy"]
    rate_fd = (E[2] - E[0]) / (2 * h)
    x = sol.x[1]
    v = model.drift(t1, x)
    speed2 = np.sum(v * v, axis=-1)  # (batch, n)
    if normalization == "usa":
        rate = speed2.sum(-1) / n
    else:
        Z = np.exp(beta * x @ np.swapaxes(x, -1, -2)).sum(-1)
        rate = (Z * speed2).sum(-1) / n**2
    assert np.max(np.abs(rate_fd - rate) / np.abs(rate)) < 1e-4


def _cap(batch, n, d, radius, seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((batch, n, d))
    x[..., 0] = 1.0
    x[..., 1:] = radius * rng.standard_normal((batch, n, d - 1))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("normalization, beta, rate", [("sa", 1.0, 2.0), ("sa", 3.0, 2.0), ("usa", 1.0, 2 * np.e), ("usa", 0.5, 2 * np.exp(0.5))])
def test_consensus_decay_rate(normalization, beta, rate):
    """1 - min <x_i, x_j> decays like e^{-2t} (SA) and e^{-2 e^beta t} (USA) near consensus."""
    model = SelfAttention(beta=beta, normalization=normalization)
    T = 4.0 / rate
    ts = np.linspace(0.5 * T, T, 6)
    sol = solve(model, _cap(2, 6, 4, 1e-3, seed=1), T, dt=T / 800, method="rk4", save_at=ts, observables=["consensus_gap"])
    gap = sol.observables["consensus_gap"]
    slopes = np.polyfit(ts, np.log(gap), 1)[0]
    assert np.all(np.abs(-slopes / rate - 1) < 0.01)


def test_causal_token_one_fixed_and_all_converge_to_it():
    model = SelfAttention(beta=1.0, causal=True)
    x0 = uniform_sphere(3, 6, 3, seed=4)
    sol = solve(model, x0, 60.0, dt=0.02, method="rk4", save_at=[20.0, 40.0, 60.0])
    assert np.max(np.abs(sol.x[:, :, 0] - x0[None, :, 0])) < 1e-14
    dist = np.linalg.norm(sol.x - x0[None, :, :1], axis=-1).max(axis=(1, 2))
    assert dist[-1] < 1e-7 and dist[2] < 0.1 * dist[1] < 0.01 * dist[0]  # exponential approach


def test_hemisphere_min_projection_nondecreasing_and_collapse():
    d = 3
    w = np.eye(d)[0]
    x0 = hemisphere(3, 10, d, seed=9, w=w)
    sol = solve(SelfAttention(beta=2.0), x0, 20.0, dt=0.02, method="rk4", save_at=101)
    m = (sol.x @ w).min(axis=-1)  # (time, batch)
    assert np.all(np.diff(m, axis=0) >= -1e-12)
    assert np.max(consensus_gap(sol.final)) < 1e-8


def test_equivariance_and_unit_norms():
    model = SelfAttention(beta=2.5)
    x0 = uniform_sphere(1, 7, 5, seed=3)
    R = random_rotation(5, seed=4)
    perm = np.random.default_rng(5).permutation(7)
    a = solve(model, x0, 2.0, dt=0.01, method="rk4").final
    b = solve(model, x0 @ R.T, 2.0, dt=0.01, method="rk4").final
    c = solve(model, x0[:, perm], 2.0, dt=0.01, method="rk4").final
    assert np.max(np.abs(a @ R.T - b)) < 1e-12
    assert np.max(np.abs(a[:, perm] - c)) < 1e-12
    assert np.max(np.abs(np.linalg.norm(a, axis=-1) - 1)) < 1e-14


def test_energy_of_single_cluster():
    x = np.tile(np.eye(3)[:1], (1, 5, 1))
    assert np.allclose(energy(x, beta=2.0), np.exp(2.0) / 4.0)


@pytest.mark.parametrize("tab", [EULER, HEUN, MIDPOINT, RK4, DOPRI5])
def test_tableau_identities(tab):
    assert np.allclose(tab.a.sum(axis=1), tab.c)
    assert np.isclose(tab.b.sum(), 1.0)
    if tab.order >= 2:
        assert np.isclose(tab.b @ tab.c, 0.5)
    if tab.order >= 3:
        assert np.isclose(tab.b @ tab.c**2, 1 / 3)
        assert np.isclose(tab.b @ tab.a @ tab.c, 1 / 6)
    if tab.order >= 4:
        assert np.isclose(tab.b @ tab.c**3, 1 / 4)
        assert np.isclose(tab.b @ (tab.c * (tab.a @ tab.c)), 1 / 8)
        assert np.isclose(tab.b @ tab.a @ tab.c**2, 1 / 12)
        assert np.isclose(tab.b @ tab.a @ tab.a @ tab.c, 1 / 24)
    if tab.b_err is not None:
        assert np.isclose(tab.b_err.sum(), 1.0)
        assert np.isclose(tab.b_err @ tab.c**3, 1 / 4)
