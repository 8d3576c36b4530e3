"""Covariance SDE models: the factorised diffusion, the drift formulas, backends, torchsde, bad input."""

import numpy as np
import pytest
from scipy import stats

from integrators import BrownianIncrements, solve
from particles.covariance import (
    CorrelationSDE,
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    ShapedAttentionSDE,
    ShapedBlockSDE,
    ShapedMLPSDE,
)
from particles.covariance import _algebra as alg
from integrators.validation import ParameterError

V3 = np.array([[1.0, 0.3, -0.1], [0.3, 0.8, 0.2], [-0.1, 0.2, 1.2]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _b_sa_loops(V, tau0):
    """b_SA written index by index from MODELS.md section 2 (independent of the vectorised code)."""
    m = V.shape[0]
    P = np.eye(m) - 1.0 / m
    C = P @ V @ P
    d = np.diag(C) - np.trace(C) / m
    out = np.zeros_like(V)
    for a in range(m):
        for b in range(m):
            out[a, b] = np.trace(C @ V) / m**2 * V[a, b] + (
                V[a, a] * sum(d[k] * V[k, b] for k in range(m)) + V[b, b] * sum(d[k] * V[k, a] for k in range(m))
            ) / (2 * m)
    return out / tau0**2


def test_drift_formulas_match_index_form():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    V = A @ A.T / 5 + 0.1 * np.eye(5)
    assert np.allclose(alg.b_sa(V[None], 0.7)[0], _b_sa_loops(V, 0.7), rtol=1e-12, atol=1e-14)
    s = np.sqrt(np.diag(V))
    rho = V / np.outer(s, s)
    nu = (1.3**2 / (2 * np.pi)) * (np.sqrt(np.clip(1 - rho**2, 0, 1)) - rho * np.arccos(np.clip(rho, -1, 1)))
    assert np.allclose(alg.b_relu(V[None], 0.3, -1.0)[0], nu * np.outer(s, s), rtol=1e-12, atol=1e-14)
    assert np.allclose(np.diag(alg.b_relu(V[None], 0.3, -1.0)[0]), 0.0, atol=1e-12)


@pytest.mark.parametrize(
    "model", [ShapedBlockSDE(0.6, 0.8, 0.2, -0.9, heads=2), ShapedAttentionSDE(0.9, 1.3), ResidualShapedMLPSDE(0.5)]
)
def test_factorised_diffusion_has_the_stated_covariance(model):
    """g(V) dW from the O(m^3) factorisation has covariance k_lin Sigma_lin + k_SA Sigma_SA (MC, 2e5 draws)."""
    N = 200_000
    rng = np.random.default_rng(1)
    V = np.repeat(V3[None], N, axis=0)
    dw = rng.standard_normal(model.noise_shape(V.shape))
    inc = model.diffusion(0.0, V, dw)
    emp = np.einsum("nab,ncd->abcd", inc, inc) / N
    exact = model.covariance_tensor(V3)
    # entrywise standard error of a product mean: sqrt((S_abab S_cdcd + S_abcd^2) / N)
    d = np.einsum("abab->ab", exact)
    se = np.sqrt((d[:, :, None, None] * d[None, None] + exact**2) / N)
    assert np.max(np.abs(emp - exact) / se) < 5.0


def test_rank_one_states_are_fixed_by_attention_terms():
    v = 1.7 * np.ones((1, 4, 4))
    assert np.max(np.abs(alg.b_sa(v, 1.0))) < 1e-14
    assert np.max(np.abs(alg.b_relu(v, 0.0, -1.0))) < 1e-12
    dw = np.random.default_rng(2).standard_normal((1, 4, 4))
    L = alg.psd_factor(v)
    assert np.max(np.abs(alg.sa_noise(L, v, dw, 1.0, 1.0))) < 1e-13


@pytest.mark.parametrize("method", ["euler-maruyama", "psd-euler-maruyama"])
def test_rank_one_stays_rank_one(method):
    """V0 = v 1 1^T: every backend keeps V = V^{11} 1 1^T to 1e-12 (relative)."""
    model = ShapedBlockSDE(0.6, 1.0)
    v0 = np.ones((3, 5, 5)) * np.array([0.5, 1.0, 2.0])[:, None, None]
    for backend in ("numpy", "numba", "torch"):
        V = solve(model, v0, 1.0, dt=0.01, method=method, backend=backend, seed=3).final
        assert np.max(np.abs(V - V[:, :1, :1])) <= 1e-12 * np.max(np.abs(V)), backend


@pytest.mark.parametrize("model", [ShapedBlockSDE(0.5, 1.0, 0.3, -1.0, heads=2), ShapedMLPSDE(0.2, -0.7)])
def test_backends_agree_on_the_same_path(model):
    """numpy, numba and torch Euler-Maruyama give the same paths to round-off."""
    V0 = np.repeat(0.5 * V3[None], 64, axis=0)
    sols = {be: solve(model, V0, 0.3, dt=0.01, method="euler-maruyama", backend=be, seed=5) for be in ("numpy", "numba", "torch")}
    ref = sols["numpy"].final
    for be in ("numba", "torch"):
        assert not sols[be].exited.any()
        assert np.max(np.abs(sols[be].final - ref)) < 1e-11 * np.max(np.abs(ref))


def test_torchsde_adapter_on_the_same_path():
    """torchsde's Euler on the BrownianIncrements path equals solve()'s Euler-Maruyama to round-off."""
    from integrators.torchsde_adapter import sdeint_model

    model = ShapedBlockSDE(0.5, 1.0)
    V0 = np.repeat(0.5 * V3[None], 32, axis=0)
    path = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.01, 9)
    ref = solve(model, V0, 0.2, dt=0.01, method="euler-maruyama", brownian=path, save_at=[0.0, 0.1, 0.2]).x
    out = sdeint_model(model, V0, [0.0, 0.1, 0.2], dt=0.01, brownian=path)
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) < 1e-12


def test_numba_torch_torchsde_agree_in_law():
    """Independent noise: the three give the same law of rho^{12}_T and V^{11}_T (two-sample KS)."""
    from integrators.torchsde_adapter import sdeint_model

    model = ShapedBlockSDE(1 / np.sqrt(8), 1.0)
    V0 = np.repeat(np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]])[None], 3000, axis=0)
    a = solve(model, V0, 0.5, dt=0.02, method="euler-maruyama", backend="numba", seed=11)
    b = solve(model, V0, 0.5, dt=0.02, method="euler-maruyama", backend="torch", seed=12)
    c = sdeint_model(model, V0, [0.0, 0.5], dt=0.02, seed=13)[-1]
    samples = []
    for V in (a.final[~a.exited], b.final[~b.exited], c[np.all(np.isfinite(c), axis=(1, 2))]):
        samples.append((V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1]), V[:, 0, 0]))
    assert a.exit_fraction < 0.01 and b.exit_fraction < 0.01
    for i, j in ((0, 1), (0, 2), (1, 2)):
        for k in range(2):
            assert stats.ks_2samp(samples[i][k], samples[j][k]).pvalue > 1e-3


def test_correlation_sde_backends_agree():
    model = CorrelationSDE(0.3, -1.0, 1.0, 1.0)
    x = np.linspace(-4, 6, 41)[:, None]
    import torch

    assert np.allclose(model.numba_drift(0.0, x), model.drift(0.0, x), rtol=1e-12, atol=1e-14)
    assert np.allclose(model.drift(0.0, torch.as_tensor(x)).numpy(), model.drift(0.0, x), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "V0, name",
    [
        (np.array([[1.0, 0.5], [0.2, 1.0]]), "V0"),  # not symmetric
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "V0"),  # not PSD
        (np.array([[1.0]]), "m"),  # one token
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "V0"),
        (np.ones((2, 3)), "V0"),
    ],
)
def test_bad_initial_covariance(V0, name):
    with pytest.raises(ParameterError) as e:
        solve(ShapedBlockSDE(0.5), V0, 1.0, dt=0.1, method="euler-maruyama", seed=0)
    assert e.value.parameter == name


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: ShapedBlockSDE(gamma=0.0), "gamma"),
        (lambda: ShapedBlockSDE(gamma=1.2), "gamma"),
        (lambda: ShapedAttentionSDE(gamma=-0.1), "gamma"),
        (lambda: ShapedAttentionSDE(gamma=0.5, tau0=0.0), "tau0"),
        (lambda: ShapedBlockSDE(gamma=0.5, tau0=-1.0), "tau0"),
        (lambda: ShapedBlockSDE(gamma=0.5, heads=0), "heads"),
        (lambda: ResidualLinearSDE(gamma=float("nan")), "gamma"),
        (lambda: ShapedMLPSDE(c_plus=float("inf")), "c_plus"),
    ],
)
def test_bad_parameters(make, name):
    with pytest.raises(ParameterError) as e:
        make()
    assert e.value.parameter == name


def test_gamma_one_is_allowed():
    assert ShapedBlockSDE(gamma=1.0).coefficients.k_lin == pytest.approx(3.0)


def test_psd_stepper_rejects_other_spaces():
    from particles import NoisyAttention, SelfAttention, uniform_sphere

    model = NoisyAttention(SelfAttention(beta=1.0), kappa=2.0).with_calculus("ito")
    with pytest.raises(ParameterError) as e:
        solve(model, uniform_sphere(1, 3, 3, seed=0), 0.1, dt=0.05, method="psd-euler-maruyama", seed=0)
    assert e.value.parameter == "method"
