"""Finite random transformers against the large-width theory (MODELS.md section 3 acceptance checks)."""

import numpy as np
import pytest
import torch

from particles.signalprop import (
    SignalPropParams,
    collapse_fixed_point,
    exponents,
    iterate_map,
)
from particles.signalprop.finite import RandomTransformer, _Draws
from particles.signalprop.measure import (
    measure_angle_exponent,
    measure_gradient_exponent,
    measure_gradient_modes,
)
from particles.signalprop.states import probes, simplex_tokens, uneven_tokens
from integrators.validation import ParameterError


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CI machine has 2 cores; BLAS threads only add noise
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- implementation checks
@pytest.mark.parametrize("phi", ["erf", "tanh", "relu"])
@pytest.mark.parametrize("layer_norm", [True, False])
def test_manual_tangents_equal_autodiff_jvp(phi, layer_norm):
    """The hand-written forward-mode tangents equal torch.func.jvp through the same weights."""
    P = SignalPropParams(n=4, alpha_A=0.6, alpha_M=0.7, sigma_w=1.5, sigma_b=0.3, phi=phi, layer_norm=layer_norm)
    net = RandomTransformer(P, d=24, d_mlp=40, sampling="explicit")
    x = uneven_tokens(2, 4, 24, 1.0, seed=1)
    dx = probes(2, 3, 4, 24, "isotropic", seed=2)
    gen = torch.Generator().manual_seed(3)
    draws = _Draws(gen, "explicit", record=True)
    *_, x1, dx1 = net.block(x, dx, draws)

    def f(xx):
        return net.block(xx, None, _Draws(None, "explicit", replay=draws.recorded))[2]

    assert torch.allclose(f(x), x1, atol=1e-12)
    for k in range(3):
        _, jv = torch.func.jvp(f, (x,), (dx[:, k],))
        assert torch.allclose(jv, dx1[:, k], atol=1e-10, rtol=1e-9)


def test_projected_and_explicit_weights_agree_in_law():
    """One block's (q', p') over 200 independent networks: same mean and spread for both samplers."""
    P = SignalPropParams(n=6, alpha_A=0.7, alpha_M=0.7, sigma_w=2.0, phi="tanh")
    x0 = uneven_tokens(200, 6, 32, 1.0, seed=4).contiguous()
    stats = {}
    for sampling in ("explicit", "projected"):
        run = RandomTransformer(P, 32, sampling=sampling).run(x0, 1, seed=11)
        stats[sampling] = np.stack([run.q[1], run.p[1]])
    e, p = stats["explicit"], stats["projected"]
    se = np.sqrt(e.var(axis=1) / 200 + p.var(axis=1) / 200)
    assert np.all(np.abs(e.mean(axis=1) - p.mean(axis=1)) < 4 * se)
    assert np.allclose(e.std(axis=1), p.std(axis=1), rtol=0.25)


# ---------------------------------------------------------------- rank collapse
@pytest.mark.parametrize("alpha_A", [0.5, 0.8])
def test_attention_only_residual_shrinks_one_minus_c_by_one_minus_alpha_sq(alpha_A):
    d, n = 1024, 16
    P = SignalPropParams(n=n, alpha_A=alpha_A, alpha_M=0.0)
    run = RandomTransformer(P, d).run(simplex_tokens(4, n, d, 1.0, 1 - 1e-4, seed=0), 10, seed=1)
    factor = np.exp(np.mean(np.diff(np.log(run.one_minus_c), axis=0)))
    assert factor == pytest.approx(1 - alpha_A**2, rel=0.05)


def test_attention_only_without_residual_collapses_doubly_exponentially():
    """alpha_A = 1: 1 - c' ~ K (1 - c)^3 (order 3 > 1: doubly exponential); K = (n-1) sigma_A^2 / n^2."""
    d, n = 1024, 16
    P = SignalPropParams(n=n, alpha_A=1.0, alpha_M=0.0)
    starts = np.array([0.1, 0.03, 0.01])
    after = []
    for k, omc in enumerate(starts):
        run = RandomTransformer(P, d).run(simplex_tokens(8, n, d, 1.0, 1 - omc, seed=k), 1, seed=10 + k)
        after.append(np.exp(np.mean(np.log(run.one_minus_c[1]))))
    order = np.polyfit(np.log(starts), np.log(after), 1)[0]
    assert order == pytest.approx(3.0, abs=0.2)
    assert after[-1] == pytest.approx((n - 1) / n**2 * starts[-1] ** 3, rel=0.25)
    # the large-width map gives the same law
    tr = iterate_map(P, 1.0, 1 - 0.01, 1)
    assert (1 - tr.c[1]) == pytest.approx((n - 1) / n**2 * 1e-6, rel=0.02)


# ---------------------------------------------------------------- maps vs finite networks
TRAJECTORY_SETTINGS = [
    dict(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0),  # ordered
    dict(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0, phi="tanh"),  # chaotic
]


@pytest.mark.parametrize("kw", TRAJECTORY_SETTINGS)
def test_finite_networks_follow_maps_and_converge_like_inverse_sqrt_d(kw):
    """n = 16, 20 blocks: the seed-mean c trajectory at d = 1024 is within 0.02 of the map, and the
    RMS deviation over (256, 1024, 4096) falls with a log-log slope near -1/2."""
    P = SignalPropParams(n=16, **kw)
    depth = 20
    tr = iterate_map(P, 1.0, 0.5, depth)
    rms = {}
    for d, seeds in ((256, 8), (1024, 16), (4096, 6)):
        run = RandomTransformer(P, d).run(simplex_tokens(seeds, 16, d, 1.0, 0.5, seed=d), depth, seed=d + 1)
        dev = run.c - tr.c[:, None]
        rms[d] = np.sqrt(np.mean(dev**2))
        if d == 1024:
            assert np.max(np.abs(dev.mean(axis=1))) < 0.02
            assert np.max(np.abs(run.q.mean(axis=1) / tr.q - 1)) < 0.05
    slope = np.polyfit(np.log(list(rms)), np.log(list(rms.values())), 1)[0]
    assert -0.85 < slope < -0.35, rms


def test_attention_randomness_is_a_finite_n_floor():
    """Measured, not assumed: the softmax matrix has O(1) randomness that does not average out in d,
    so one pure-attention block moves c by a d-independent amount that shrinks with n
    (~ n^{-3/2}). This is the floor under the d^{-1/2} law in the chaotic phase at n = 16."""
    std = {}
    for n in (16, 64):
        P = SignalPropParams(n=n, alpha_A=1.0, alpha_M=0.0)
        for d in (512, 4096):
            run = RandomTransformer(P, d).run(simplex_tokens(48, n, d, 1.0, 0.4, seed=d + n), 1, seed=d + n + 1)
            std[n, d] = run.c[1].std()
    assert std[16, 4096] / std[16, 512] > 0.7  # not the d^{-1/2} ratio 0.35
    assert std[64, 4096] / std[16, 4096] < 0.25  # shrinks with n


# five settings spanning ordered and chaotic phases and the three nonlinearities
EXPONENT_SETTINGS = [
    dict(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, phi="erf"),  # ordered
    dict(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0, phi="erf"),  # chaotic
    dict(alpha_A=0.5, alpha_M=0.6, sigma_w=3.0, phi="tanh"),  # ordered
    dict(alpha_A=0.2, alpha_M=0.9, sigma_w=2.5, phi="tanh"),  # chaotic
    dict(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_b=0.5, phi="relu"),  # ordered
    dict(alpha_A=0.4, alpha_M=0.6, sigma_w=1.5, sigma_V=0.9, phi="tanh", layer_norm=False),  # no layer norm
]


@pytest.mark.parametrize("kw", EXPONENT_SETTINGS)
def test_measured_exponents_agree_with_theory(kw):
    P = SignalPropParams(n=16, **kw)
    th = exponents(P, state="collapse")
    lam_a = measure_angle_exponent(P, d=1024, depth=16, batch=3, seed=1)
    lam_mean, lam_diff = measure_gradient_modes(P, d=1024, depth=16, batch=3, seed=2)
    assert lam_a.value == pytest.approx(float(th.lambda_a), abs=0.03)
    assert lam_mean.value == pytest.approx(float(th.lambda_mean), abs=0.03)
    assert lam_diff.value == pytest.approx(float(th.lambda_diff), abs=0.03)


def test_settings_span_both_phases():
    signs = [np.sign(float(exponents(SignalPropParams(**kw), state="collapse").lambda_a)) for kw in EXPONENT_SETTINGS]
    assert signs == [-1, 1, -1, 1, -1, -1]


def test_lambda_g_at_simplex_attractor():
    """Chaotic phase: E||J||_F^2 grows at the rate of the 2 x 2 transfer matrix at the simplex."""
    P = SignalPropParams(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0)
    th = exponents(P)
    assert th.c_state < 0.5
    meas = measure_gradient_exponent(P, d=1024, depth=16, batch=2, n_probes=4, burn_in=30, seed=3)
    assert meas.value == pytest.approx(float(th.lambda_g), abs=0.03)
    assert abs(float(th.lambda_g) - float(exponents(P, state="collapse").lambda_g)) > 0.005


def test_chaotic_phase_converges_to_regular_simplex():
    """From unequal norms and uneven cosines: cosine spread and norm spread fall to O(d^{-1/2})."""
    P = SignalPropParams(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0, phi="tanh")
    c_star = float(exponents(P).c_state)
    spread, norms = {}, {}
    off = ~np.eye(16, dtype=bool)
    for d in (256, 1024):
        run = RandomTransformer(P, d).run(uneven_tokens(4, 16, d, 1.0, seed=d), 40, seed=d + 1, record_gram=True)
        g0, g = run.gram[0], run.gram[-1]
        dg0, dg = np.einsum("bii->bi", g0), np.einsum("bii->bi", g)
        cos = g / np.sqrt(dg[:, :, None] * dg[:, None, :])
        cos0 = g0 / np.sqrt(dg0[:, :, None] * dg0[:, None, :])
        assert cos0[:, off].std(axis=1).mean() > 0.2 and (dg0.std(1) / dg0.mean(1)).mean() > 0.3  # non-symmetric start
        spread[d] = cos[:, off].std(axis=1).mean()
        norms[d] = (dg.std(1) / dg.mean(1)).mean()
        assert abs(cos[:, off].mean() - c_star) < 3 / np.sqrt(d)
        assert spread[d] * np.sqrt(d) < 3.0 and norms[d] * np.sqrt(d) < 3.0
    assert spread[256] / spread[1024] == pytest.approx(2.0, rel=0.35)
    assert norms[256] / norms[1024] == pytest.approx(2.0, rel=0.35)


# ---------------------------------------------------------------- bad input
def test_bad_network_input():
    P = SignalPropParams(n=4)
    with pytest.raises(ParameterError, match="d"):
        RandomTransformer(P, d=1)
    with pytest.raises(ParameterError, match="sampling"):
        RandomTransformer(P, d=8, sampling="lazy")
    net = RandomTransformer(P, d=8)
    with pytest.raises(ParameterError, match="x0"):
        net.run(np.zeros((1, 5, 8)), 2, seed=0)
    with pytest.raises(ParameterError, match="x0"):
        net.run(np.full((1, 4, 8), np.nan), 2, seed=0)
    with pytest.raises(ParameterError, match="tangents"):
        net.run(np.ones((1, 4, 8)), 2, seed=0, tangents=np.ones((2, 1, 4, 8)))
    with pytest.raises(ParameterError, match="n"):
        simplex_tokens(1, 1, 8, 1.0, 0.0)
    with pytest.raises(ParameterError, match="mode"):
        probes(1, 1, 4, 8, "radial")
    assert float(collapse_fixed_point(P)[0]) > 0


@pytest.mark.gpu
def test_finite_network_runs_on_cuda_and_matches_theory():
    P = SignalPropParams(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0)
    q = float(collapse_fixed_point(P)[0])
    net = RandomTransformer(P, 1024, device="cuda")
    run = net.run(simplex_tokens(4, 16, 1024, q, 1 - 1e-7, seed=0), 12, seed=1)
    assert run.x.device.type == "cuda"
    slope = np.mean(np.diff(np.log(run.one_minus_c), axis=0))
    assert slope == pytest.approx(float(exponents(P, state="collapse").lambda_a), abs=0.03)


def test_finite_depth_hutchinson_slope_mixes_modes():
    """Ordered phase, modes close: the Hutchinson slope fitted over blocks 8..16 is the theory's
    finite-depth prediction (both modes weigh in), not the asymptotic lambda_g."""
    from particles.signalprop import coefficients, gradient_transfer, hutchinson_slope

    P = SignalPropParams(alpha_A=0.33, alpha_M=0.33, sigma_w=0.6, sigma_b=0.5)
    th = exponents(P)
    window = float(hutchinson_slope(gradient_transfer(coefficients(P), th.q_state, th.q_state), 16, 8, 16))
    meas = measure_gradient_exponent(P, d=512, depth=16, batch=2, burn_in=40, seed=5)
    assert abs(window - float(th.lambda_g)) > 0.06  # the window is far from the asymptote here
    assert meas.value == pytest.approx(window, abs=0.03)
