"""Signal-propagation maps: kernels, overlaps, limits (Poole et al. 2016, pre-LN), exponents, bad input."""

import numpy as np
import pytest
from scipy import integrate

from particles.signalprop import (
    SignalPropParams,
    angle_exponent,
    attention_moments,
    block_map,
    coefficients,
    collapse_fixed_point,
    dkernel,
    exponents,
    gradient_transfer,
    iterate_map,
    kernel,
    mean_mode_exponent,
    overlap_table,
    second_moment,
    simplex_fixed_point,
    slope_moment,
)
from particles.signalprop.gram import gram_map, iterate_gram
from particles.signalprop.kernels import PHI_FUNCTIONS
from integrators.validation import ParameterError


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("phi", ["erf", "tanh", "relu"])
@pytest.mark.parametrize("cov", [(2.0, 1.5, 0.9), (16.0, 9.0, -7.0), (0.3, 0.3, 0.3)])
def test_kernels_match_2d_quadrature(phi, cov):
    v1, v2, s12 = cov
    a, b = np.sqrt(v1), np.sqrt(v2)
    rho = s12 / (a * b)
    r = np.sqrt(max(1 - rho**2, 0.0))
    f, fp = PHI_FUNCTIONS[phi]

    def ref(g):
        def integrand(z2, z1):
            return g(a * z1) * g(b * (rho * z1 + r * z2)) * np.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * np.pi)

        return integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-11)[0]

    assert kernel(phi, v1, v2, s12) == pytest.approx(ref(f), abs=2e-8)
    if phi != "relu":  # relu' is a step: dblquad is inaccurate, the closed form is exact
        assert dkernel(phi, v1, v2, s12) == pytest.approx(ref(fp), abs=2e-8)


@pytest.mark.parametrize("v", [0.5, 16.0, 100.0])
def test_tanh_moments_wide_preactivations(v):
    """sigma_w >~ 4: tanh(sqrt(v) z) is nearly a step; the trapezoid rule must still be accurate."""
    kw = dict(points=[0.0], limit=500, epsabs=1e-13)
    ref2 = integrate.quad(lambda z: np.tanh(np.sqrt(v) * z) ** 2 * np.exp(-z * z / 2) / np.sqrt(2 * np.pi), -12, 12, **kw)[0]
    refd = integrate.quad(lambda z: np.cosh(np.sqrt(v) * z) ** -4 * np.exp(-z * z / 2) / np.sqrt(2 * np.pi), -12, 12, **kw)[0]
    assert second_moment("tanh", v) == pytest.approx(ref2, abs=1e-11)
    assert slope_moment("tanh", v) == pytest.approx(refd, abs=1e-10)


def test_erf_slope_moment_closed_form():
    v = np.array([0.1, 1.0, 7.0])
    assert np.allclose(slope_moment("erf", v), 4 / np.pi / np.sqrt(1 + 4 * v))
    assert np.allclose(dkernel("erf", v, v, v), slope_moment("erf", v))


# ---------------------------------------------------------------- overlaps
def test_overlaps_exact_values_within_stated_error():
    n = 16
    m = attention_moments(np.array([0.0, 1.0]), n, 1.3, samples=4000, seed=3)
    # rows independent at c = 0: x = sum_j E[A_ij]^2 = 1/n exactly
    assert abs(m.x[0] - 1 / n) < 4 * m.x_err[0]
    # collapse: uniform attention
    assert m.s[1] == pytest.approx(1 / n, abs=1e-14) and m.x[1] == pytest.approx(1 / n, abs=1e-14)
    assert m.t_d[1] == pytest.approx((n - 1) / n**2, abs=1e-14)


def test_overlaps_large_n_asymptotics():
    """n -> inf: s ~ e^{sigma^2 (1-c)} / n, x ~ e^{sigma^2 c (1-c)} / n (law of large numbers)."""
    n, sig = 128, 0.5
    m = attention_moments(np.array([0.0, 0.5]), n, sig, samples=400)
    c = m.c
    assert np.allclose(m.s * n, np.exp(sig**2 * (1 - c)), rtol=4e-3)
    assert np.allclose(m.x * n, np.exp(sig**2 * c * (1 - c)), rtol=4e-3)


def test_overlaps_near_collapse_quadratic():
    """s - x = (n - 1) sigma^2 (1 - c)^2 / n^2 + O((1 - c)^3): the source of cubic rank collapse."""
    n, sig = 16, 1.0
    c = np.array([0.99, 0.999])
    m = attention_moments(c, n, sig, samples=4000)
    ratio = (m.s - m.x) / (1 - c) ** 2
    assert np.allclose(ratio, (n - 1) * sig**2 / n**2, rtol=0.02)


def test_overlap_table_interpolates_within_error():
    tab = overlap_table(8, 1.0, samples=2048, points=33)
    c = np.array([-0.1, 0.37, 0.93])
    direct = attention_moments(c, 8, 1.0, samples=2048)
    got = tab(c)
    for name in ("s", "x", "t_d", "t_o"):
        assert np.allclose(getattr(got, name), getattr(direct, name), atol=1e-4)
    assert tab.max_error() < 1e-3 and tab is overlap_table(8, 1.0, samples=2048, points=33)


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("phi,sigma_w,sigma_b", [("erf", 1.7, 0.0), ("tanh", 1.3, 0.3), ("relu", 1.2, 0.4)])
def test_poole_limit_maps(phi, sigma_w, sigma_b):
    """alpha_A = 0, alpha_M = 1, no LN: preactivation (q_h, c_h) follow Poole et al. 2016 eqs. 3, 5."""
    P = SignalPropParams(alpha_A=0.0, alpha_M=1.0, layer_norm=False, phi=phi, sigma_w=sigma_w, sigma_b=sigma_b)
    tr = iterate_map(P, 0.8, 0.3, 6)
    qh = sigma_w**2 * tr.q + sigma_b**2
    ph = sigma_w**2 * tr.p + sigma_b**2
    f = PHI_FUNCTIONS[phi][0]
    for l in range(6):
        # Poole eq. 3: q^l = sigma_w^2 int phi(sqrt(q^{l-1}) z)^2 Dz + sigma_b^2, by 1-D quadrature
        s = np.sqrt(qh[l])
        ref_q = sigma_w**2 * integrate.quad(lambda z, s=s: f(s * z) ** 2 * np.exp(-z * z / 2), -12, 12)[0] / np.sqrt(2 * np.pi)
        assert qh[l + 1] == pytest.approx(ref_q + sigma_b**2, rel=1e-9)
        # Poole eq. 5 (c-map) through the exact bivariate kernel
        ref_p = sigma_w**2 * kernel(phi, qh[l], qh[l], ph[l]) + sigma_b**2
        assert ph[l + 1] == pytest.approx(ref_p, rel=1e-12)


@pytest.mark.parametrize("sigma_w", [1.0, 2.5, 4.0])
def test_poole_limit_chi1_erf(sigma_w):
    """erf, sigma_b = 0: e^{lambda_a} = chi_1 = (4/pi) sigma_w^2 / sqrt(1 + 4 q*) (Poole eq. 7)."""
    P = SignalPropParams(alpha_A=0.0, alpha_M=1.0, layer_norm=False, sigma_w=sigma_w, sigma_b=0.0)
    q, _ = collapse_fixed_point(P)
    qh = sigma_w**2 * q  # Poole's q* (preactivations)
    assert qh == pytest.approx(sigma_w**2 * second_moment("erf", qh), rel=1e-10)  # fixed point of eq. 3
    chi1 = 4 / np.pi * sigma_w**2 / np.sqrt(1 + 4 * qh)
    assert np.exp(angle_exponent(P)) == pytest.approx(chi1, rel=1e-10)
    # and the general (q, p) map's slope at c = 1 is chi_1
    eps = 1e-6
    tr = iterate_map(P, q, q * (1 - eps), 1)
    assert (1 - tr.c[1]) / eps == pytest.approx(chi1, rel=1e-4)


@pytest.mark.parametrize("phi", ["erf", "tanh", "relu"])
def test_pre_ln_formula(phi):
    """Pre-LN, alpha_A = 0: e^{lambda_a} = 1 - alpha_M^2 + alpha_M^2 chi_MLP / q_M at v = sigma_w^2 + sigma_b^2."""
    aM, sw, sb, s2 = 0.7, 2.2, 0.3, 1.1
    P = SignalPropParams(alpha_A=0.0, alpha_M=aM, phi=phi, sigma_w=sw, sigma_b=sb, sigma_2=s2)
    v = sw**2 + sb**2
    q_m = s2**2 * second_moment(phi, v)
    chi = s2**2 * sw**2 * slope_moment(phi, v)
    assert np.exp(angle_exponent(P)) == pytest.approx(1 - aM**2 + aM**2 * chi / q_m, rel=1e-12)
    # the map's own slope at collapse agrees (finite difference of the (q, p) map)
    q = float(collapse_fixed_point(P)[0])
    eps = 1e-7
    tr = iterate_map(P, q, q * (1 - eps), 1)
    assert (1 - tr.c[1]) / eps == pytest.approx(np.exp(angle_exponent(P)), rel=2e-3 if phi == "relu" else 1e-5)


def test_collapse_exponents_match_map_and_transfer():
    """The closed forms (MODELS.md section 3) agree with the slope of the (q, p) map and the gradient transfer at c = 1."""
    P = SignalPropParams(alpha_A=0.6, alpha_M=0.7, sigma_w=2.0, sigma_b=0.2, sigma_V=1.3, phi="tanh")
    q, q1 = collapse_fixed_point(P)
    aA, aM = 0.6, 0.7
    assert q == pytest.approx(((1 - aM**2) * aA**2 * 1.3**2 + aM**2 * second_moment("tanh", 4.04)) / (1 - (1 - aM**2) * (1 - aA**2)))
    assert q1 == pytest.approx((1 - aA**2) * q + aA**2 * 1.3**2)
    eps = 1e-6
    tr = iterate_map(P, q, q * (1 - eps), 1)
    assert np.log((1 - tr.c[1]) / eps) == pytest.approx(angle_exponent(P), abs=1e-4)
    T = gradient_transfer(coefficients(P), q, q)
    assert T[0, 1] == pytest.approx(0, abs=1e-12) and T[1, 0] == pytest.approx(0, abs=1e-12)
    assert np.log(T[0, 0]) == pytest.approx(angle_exponent(P), abs=1e-12)
    assert np.log(T[1, 1]) == pytest.approx(mean_mode_exponent(P), abs=1e-12)


def test_hutchinson_slope_limits():
    from particles.signalprop import hutchinson_slope

    T = np.array([[0.5, 0.0], [0.0, 1.2]])
    assert hutchinson_slope(T, 16, 40, 80) == pytest.approx(np.log(1.2), abs=1e-9)
    # early window: the differential mode (weight n - 1) still dominates
    assert hutchinson_slope(T, 16, 0, 2) < 0


def test_lambda_g_exceeds_lambda_a_at_collapse():
    """e^{lambda_mean - lambda_a} = 1 + alpha_A^2 sigma_V^2 / ((1 - alpha_A^2) q*): they cannot vanish together with attention."""
    P = SignalPropParams(alpha_A=0.4, alpha_M=0.6, sigma_w=2.0)
    q, _ = collapse_fixed_point(P)
    e = exponents(P, state="collapse")
    assert e.lambda_g == pytest.approx(e.lambda_mean)
    assert np.exp(e.lambda_mean - e.lambda_a) == pytest.approx(1 + 0.16 / (0.84 * q))
    e0 = exponents(P.replace(alpha_A=0.0), state="collapse")
    assert e0.lambda_mean == pytest.approx(e0.lambda_a)


def test_rank_collapse_map_cubic_without_residual():
    """Pure attention (alpha_A = 1): 1 - c' = (n-1) sigma_A^2 (1-c)^3 / n^2 to leading order."""
    P = SignalPropParams(alpha_A=1.0, alpha_M=0.0, sigma_A=1.0)
    tr = iterate_map(P, 1.0, 1 - 1e-2, 2)
    assert (1 - tr.c[1]) == pytest.approx(15 / 256 * 1e-6, rel=0.03)
    P2 = SignalPropParams(alpha_A=0.6, alpha_M=0.0)
    tr2 = iterate_map(P2, 1.0, 1 - 1e-4, 1)  # q* = sigma_V^2 = 1
    assert (1 - tr2.c[1]) / 1e-4 == pytest.approx(1 - 0.36, rel=1e-4)


# ---------------------------------------------------------------- fixed points, general C
def test_simplex_fixed_point_chaotic_and_stable():
    P = SignalPropParams(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0)
    e = exponents(P)
    assert e.lambda_a > 0 and e.c_state < 0.5 and e.converged
    *_, qn, pn = block_map(coefficients(P), e.q_state, e.c_state * e.q_state)
    assert qn == pytest.approx(e.q_state, rel=1e-8) and pn / qn == pytest.approx(e.c_state, abs=1e-8)
    fp = simplex_fixed_point(P)
    assert fp.stable and not fp.collapsed
    ordered = exponents(P.replace(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0))
    assert ordered.lambda_a < 0 and ordered.c_state == 1.0


def test_gram_map_symmetric_reduction_and_simplex_attractor():
    """General-C map at a symmetric C equals the (q, p) formulas on the same samples; from a
    non-symmetric start it converges to a regular simplex at the symmetric map's c*."""
    P = SignalPropParams(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0, phi="tanh")
    n, q, c = P.n, 0.8, 0.3
    C = q * ((1 - c) * np.eye(n) + c * np.ones((n, n)))
    cy, _ = gram_map(P, C, samples=2048, seed=5)
    m = attention_moments(c, n, 1.0, samples=2048, seed=5)
    off = ~np.eye(n, dtype=bool)
    assert np.diag(cy).mean() == pytest.approx(0.91 * q + 0.09 * ((1 - c) * m.s + c), rel=1e-12)
    assert cy[off].mean() == pytest.approx(0.91 * q * c + 0.09 * ((1 - c) * m.x + c), rel=1e-12)
    rng = np.random.default_rng(0)
    g = rng.standard_normal((n, 3 * n)) * rng.uniform(0.5, 1.5, (n, 1))
    Cs = iterate_gram(P, g @ g.T / (3 * n), 120, samples=1024)
    cos = Cs[-1] / np.sqrt(np.outer(np.diag(Cs[-1]), np.diag(Cs[-1])))
    assert cos[off].std() < 2e-3 and np.diag(Cs[-1]).std() < 1e-3
    assert cos[off].mean() == pytest.approx(float(exponents(P).c_state), abs=3e-3)


def test_simplex_stable_against_all_perturbations():
    """Chaotic phase: the simplex is stable in all n(n+1)/2 directions of the general-C map, and
    the symmetric (q, p) Jacobian's eigenvalues are among the general map's."""
    from particles.signalprop.gram import gram_jacobian_eigenvalues

    P = SignalPropParams(n=8, alpha_A=0.3, alpha_M=0.8, sigma_w=2.0)
    fp = simplex_fixed_point(P)
    q, c = float(fp.q), float(fp.c)
    ev = np.abs(gram_jacobian_eigenvalues(P, q * ((1 - c) * np.eye(8) + c * np.ones((8, 8))), samples=1024))
    assert ev.size == 36 and ev.max() < 1.0
    for lam in np.abs(fp.jacobian_eigenvalues):
        assert np.min(np.abs(ev - lam)) < 0.01


def test_plain_residual_grows_q_linearly():
    """beta = 1 with layer norm: q' = q + alpha_A^2 sigma_V^2 + alpha_M^2 q_M exactly at collapse."""
    P = SignalPropParams(alpha_A=0.5, alpha_M=0.6, residual="plain", sigma_w=1.3)
    tr = iterate_map(P, 1.0, 1.0, 5)
    q_m = second_moment("erf", 1.3**2)
    assert np.allclose(np.diff(tr.q), 0.25 + 0.36 * q_m, rtol=1e-12)


def test_gram_map_without_layer_norm_matches_symmetric_map():
    """No layer norm: the logit scale is sigma_A q; the general map at a symmetric C reproduces it."""
    P = SignalPropParams(alpha_A=0.6, alpha_M=0.0, layer_norm=False, sigma_V=0.8)
    n, q, c = P.n, 1.7, 0.4
    C = q * ((1 - c) * np.eye(n) + c * np.ones((n, n)))
    cy, _ = gram_map(P, C, samples=1024, seed=0)
    m = attention_moments(c, n, 1.0 * q, samples=1024, seed=0)
    off = ~np.eye(n, dtype=bool)
    q_att = 0.64 * ((q - c * q) * m.s + c * q)
    p_att = 0.64 * ((q - c * q) * m.x + c * q)
    assert np.diag(cy).mean() == pytest.approx(0.64 * q + 0.36 * q_att, rel=1e-12)
    assert cy[off].mean() == pytest.approx(0.64 * c * q + 0.36 * p_att, rel=1e-12)
    tr = iterate_map(P, q, c * q, 1, samples=1024)
    assert tr.q[1] == pytest.approx(0.64 * q + 0.36 * q_att, rel=1e-12)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(alpha_A=1.2), "alpha_A"),
        (dict(alpha_M=-0.1), "alpha_M"),
        (dict(sigma_w=-1.0), "sigma_w"),
        (dict(sigma_b=-0.5), "sigma_b"),
        (dict(sigma_V=float("nan")), "sigma_V"),
        (dict(phi="gelu"), "phi"),
        (dict(n=1), "n"),
        (dict(residual="post"), "residual"),
    ],
)
def test_bad_parameters_named(kw, name):
    with pytest.raises(ParameterError, match=name):
        SignalPropParams(**kw)


def test_bad_map_inputs():
    P = SignalPropParams()
    with pytest.raises(ParameterError, match="alpha"):
        coefficients(P, alpha=np.array([0.5, 1.5]))
    with pytest.raises(ParameterError, match="sigma_w"):
        coefficients(P, sigma_w=np.array([-1.0]))
    with pytest.raises(ParameterError, match="p0"):
        iterate_map(P, 1.0, 2.0, 3)
    with pytest.raises(ParameterError, match="c"):
        attention_moments(1.5, 16, 1.0)
    with pytest.raises(ParameterError, match="residual"):
        collapse_fixed_point(P.replace(residual="plain"))
    with pytest.raises(ParameterError, match="state"):
        exponents(P, state="simplex")
    with pytest.raises(ParameterError, match="phi"):
        kernel("gelu", 1.0, 1.0, 0.5)
