"""The four candidates for Cowsik's lambda_g: closed forms on the maps, finite networks within their errors."""

import numpy as np
import pytest
import torch

from integrators.validation import ParameterError
from particles.signalprop import SignalPropParams, block_map, coefficients, collapse_fixed_point, exponents
from particles.signalprop.candidates import CANDIDATES, gradient_candidates, readout_exponent
from particles.signalprop.finite import RandomTransformer
from particles.signalprop.gradients import gradient_step
from particles.signalprop.measure import measure_gradient_modes
from particles.signalprop.readout import measure_readout_exponent, readout_gradients
from particles.signalprop.states import probes, simplex_tokens

ORDERED = dict(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_b=0.5)
CHAOTIC = dict(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _erf_closed_forms(aA, aM, sV, sw, sb):
    """lambda_a and lambda_mean of MODELS.md section 3 with the erf kernels written out (pre-LN)."""
    v = sw**2 + sb**2
    q_m = (2 / np.pi) * np.arcsin(2 * v / (1 + 2 * v))
    chi = sw**2 * (4 / np.pi) / np.sqrt(1 + 4 * v)
    q = ((1 - aM**2) * aA**2 * sV**2 + aM**2 * q_m) / (1 - (1 - aM**2) * (1 - aA**2))
    q1 = (1 - aA**2) * q + aA**2 * sV**2
    mlp = (1 - aM**2) + aM**2 * chi / q1
    return np.log((1 - aA**2) * mlp), np.log(((1 - aA**2) + aA**2 * sV**2 / q) * mlp)


@pytest.mark.parametrize("kw", [ORDERED, CHAOTIC, dict(alpha_A=0.7, alpha_M=0.4, sigma_w=3.0, sigma_V=1.4)])
def test_collapse_candidates_are_the_closed_forms(kw):
    """(i) is e^{lambda_mean} and (ii) is e^{lambda_a} at the collapsed point, written out for erf."""
    P = SignalPropParams(n=8, **kw)
    gc = gradient_candidates(P, depth=4)
    lam_a, lam_mean = _erf_closed_forms(P.alpha_A, P.alpha_M, P.sigma_V, P.sigma_w, P.sigma_b)
    assert float(gc.lambda_a) == pytest.approx(lam_a, abs=1e-12)
    assert float(gc.token_diff) == pytest.approx(lam_a, abs=1e-12)
    assert float(gc.token_mean) == pytest.approx(lam_mean, abs=1e-12)
    assert float(gc.token_mean) > float(gc.lambda_a)  # attention present: the zero lines of (i) and lambda_a differ


def test_attractor_candidate_is_the_growth_at_the_fixed_point():
    """(iii): collapse in the ordered phase; in the chaotic phase the growth rate of tr G under the
    gradient map iterated at the simplex c* (itself a fixed point of the block map)."""
    ordered = gradient_candidates(SignalPropParams(n=8, **ORDERED))
    assert float(ordered.c_star) == 1.0 and float(ordered.attractor) == pytest.approx(float(ordered.token_mean))
    P = SignalPropParams(n=8, **CHAOTIC)
    gc = gradient_candidates(P)
    co = coefficients(P)
    c = float(gc.c_star)
    q = float(exponents(P).q_state)
    assert c < 0.9
    *_, qn, pn = block_map(co, q, c * q)
    assert (float(qn), float(pn)) == pytest.approx((q, c * q), rel=1e-8)
    g_d, g_o, logs = 1.0, 0.0, []
    for _ in range(300):
        *_, g_d, g_o = gradient_step(co, q, c * q, g_d, g_o)
        logs.append(np.log(g_d * 8))  # tr G up to a constant
    rate = (logs[-1] - logs[-101]) / 100
    assert rate == pytest.approx(float(gc.attractor), abs=1e-6)
    assert abs(float(gc.attractor) - float(gc.token_mean)) > 0.005  # the simplex is not the collapsed point


@pytest.mark.parametrize("kw", [ORDERED, CHAOTIC])
@pytest.mark.parametrize("depth", [1, 5, 16])
def test_readout_from_collapse_mixes_the_two_modes(kw, depth):
    """(iv) started at collapse: e^{L lambda_L} = (1/n) e^{L lambda_mean} + (1 - 1/n) e^{L lambda_a}."""
    n = 12
    P = SignalPropParams(n=n, **kw)
    q = float(collapse_fixed_point(P)[0])
    gc = gradient_candidates(P)
    expect = np.log(np.exp(depth * gc.token_mean) / n + (1 - 1 / n) * np.exp(depth * gc.lambda_a)) / depth
    assert float(readout_exponent(P, depth=depth, c0=1.0, q0=q)) == pytest.approx(float(expect), abs=1e-10)


def test_readout_tends_to_the_attractor_with_depth():
    """(iv) is a finite-depth quantity: its gap to (iii) shrinks like 1/L."""
    P = SignalPropParams(n=8, **CHAOTIC)
    att = float(gradient_candidates(P).attractor)
    gaps = [abs(float(readout_exponent(P, depth=L)) - att) for L in (50, 200)]
    assert gaps[1] < gaps[0] / 2.5 and gaps[1] < 0.01


def test_readout_gradient_is_the_adjoint_of_the_tangent():
    """<R, J v> from the forward tangents equals <J^T R, v> from autograd, through the same explicit weights."""
    P = SignalPropParams(n=5, alpha_A=0.6, alpha_M=0.7, sigma_w=1.5, sigma_b=0.3, phi="tanh")
    net = RandomTransformer(P, d=16, d_mlp=24, sampling="explicit")
    x0 = simplex_tokens(2, 5, 16, 1.0, 0.2, seed=1)
    v = probes(2, 3, 5, 16, "isotropic", seed=2)
    r = probes(2, 3, 5, 16, "isotropic", seed=3)
    fwd = net.run(x0, 4, seed=7, tangents=v)
    x_l, jtr = readout_gradients(net, x0, 4, r, seed=7)
    assert torch.allclose(x_l, fwd.x, atol=1e-12)
    lhs = (r * fwd.dx).sum((-1, -2))
    rhs = torch.einsum("bknd,bknd->bk", jtr, v)
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-12)
    with pytest.raises(ParameterError, match="net"):
        readout_gradients(RandomTransformer(P, d=16), x0, 4, r, seed=7)


@pytest.mark.parametrize("kw", [ORDERED, CHAOTIC])
def test_finite_networks_agree_with_the_maps_within_their_errors(kw):
    """(i), (ii) by mode probes at collapse and (iv) by readouts: within 3 standard errors of the maps."""
    P = SignalPropParams(n=8, **kw)
    gc = gradient_candidates(P, depth=8)
    mean, diff = measure_gradient_modes(P, d=512, depth=8, batch=6, n_probes=2, seed=11)
    rr = measure_readout_exponent(P, d=256, depth=8, batch=6, n_readouts=2, seed=12)
    for meas, theory in ((mean, gc.token_mean), (diff, gc.token_diff), (rr, gc.readout)):
        assert abs(meas.value - float(theory)) < 3 * meas.stderr + 0.01, (meas, float(theory))
        assert meas.stderr < 0.05


def test_candidate_names():
    gc = gradient_candidates(SignalPropParams(n=4), depth=2)
    assert [gc.candidate(k).shape for k in CANDIDATES] == [()] * 4
    with pytest.raises(ParameterError, match="name"):
        gc.candidate("lambda_x")
    with pytest.raises(ParameterError, match="depth"):
        readout_exponent(SignalPropParams(n=4), depth=0)
