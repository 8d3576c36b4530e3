"""Large-width map of the second moment of input perturbations (Jacobian-vector products).

A perturbation dX (n x d) pushed through the blocks has token Gram G = E[dX dX^T] / d.
For isotropic Hutchinson probes G_0 = I and E||J_L||_F^2 = d tr(G_L), so the depth
growth of tr(G) is the gradient exponent. By permutation symmetry G stays of the form
g_perp (I - P) + g_par P, P = 1 1^T / n: the token-differential mode g_perp
(n - 1 directions) and the token-mean mode g_par, tr(G) = (n - 1) g_perp + g_par.

Derivation [D, checked against finite networks in tests/test_sp_finite.py]: at large d
the perturbation is uncorrelated with the state (X dX^T / d -> 0), the logits S and
their perturbation dS are independent Gaussians, and with Ghat the Gram of the
perturbed attention input (G / q under layer norm, G without), Ubar its Gram
(Ubar = (1, c) or (q, p)), and J_i = diag(A_i) - A_i A_i^T:

    Cov(dS_ij, dS_kl) = sigma_A^2 (Ghat_ik Ubar_jl + Ubar_ik Ghat_jl)
    D_A = sigma_V^2 E[A Ghat A^T + dA Ubar dA^T],   E[dA_i . dA_k] = sigma_A^2 tr(J_i Cov_ik J_k)
    G_Y = beta_A^2 G + alpha_A^2 D_A
    G'  = beta_M^2 G_Y + alpha_M^2 sigma_2^2 sigma_w^2 K'(v, s12) o Ghat_Y      (Hadamard)

with K' = E[phi'(h_i) phi'(h_k)] at the MLP input covariance. At the collapsed state
(c = 1) attention is uniform, kills the differential mode and passes the mean mode
with weight sigma_V^2 / q, giving (layer norm, norm-preserving residual)

    e^{lambda_mean} = [(1 - alpha_A^2) + alpha_A^2 sigma_V^2 / q*] [(1 - alpha_M^2) + alpha_M^2 chi_MLP / q1*]
    e^{lambda_diff} = (1 - alpha_A^2) [(1 - alpha_M^2) + alpha_M^2 chi_MLP / q1*] = e^{lambda_a}

(MODELS.md section 3, "Exponents at collapse"). Away from collapse (the simplex) the
two modes mix and the growth rate is the log spectral radius of the 2 x 2 transfer matrix.

References
----------
MODELS.md section 3; Cowsik et al., arXiv:2403.02579, section 3.4 (propagation of
gradients, E||J||_F^2 growth); Poole et al. 2016 / Schoenholz et al. 2017 (chi_1).
"""

from __future__ import annotations

import numpy as np

from .kernels import dkernel, slope_moment
from .maps import (
    DEFAULT_SAMPLES,
    MapCoefficients,
    attention_map,
    attention_moments_at,
    mlp_inputs,
)
from .overlaps import OverlapTable

__all__ = ["entries_to_modes", "gradient_step", "gradient_transfer", "hutchinson_slope", "modes_to_entries"]


def modes_to_entries(n: int, g_perp, g_par):
    """(diagonal, off-diagonal) entries of g_perp (I - P) + g_par P."""
    return g_perp * (1.0 - 1.0 / n) + g_par / n, (g_par - g_perp) / n


def entries_to_modes(n: int, g_d, g_o):
    """(g_perp, g_par) of the symmetric matrix with diagonal g_d and off-diagonal g_o."""
    return g_d - g_o, g_d + (n - 1) * g_o


def gradient_step(
    co: MapCoefficients, q, p, g_d, g_o, table: OverlapTable | None = None, samples: int = DEFAULT_SAMPLES
):
    """One block of the perturbation map at forward state (q, p).

    Returns (gY_d, gY_o, g_d', g_o'): perturbation Gram entries after the attention
    sublayer and after the whole block.
    """
    q, p = np.asarray(q, dtype=np.float64), np.asarray(p, dtype=np.float64)
    scale = 1.0 / q if co.layer_norm else 1.0
    gh_d, gh_o = g_d * scale, g_o * scale
    if np.any(co.alpha_A):
        m, ud, uo = attention_moments_at(co, q, p, table, samples)
        a, b = gh_d - gh_o, gh_o
        sa2 = co.sigma_A**2
        # E[A Ghat A^T] + E[dA Ubar dA^T]; dA 1 = 0 so dA Ubar dA^T = (Ubar_d - Ubar_o) dA dA^T
        gap = ud - uo
        att_d = a * m.s + b + gap * sa2 * (a * m.t_d * (2.0 * ud - uo) + b * gap * m.t_d)
        att_o = a * m.x + b + gap * sa2 * (a * m.t_o * uo + b * gap * m.t_o)
    else:
        att_d = att_o = 0.0
    gy_d = co.beta_A**2 * g_d + co.alpha_A**2 * co.sigma_V**2 * att_d
    gy_o = co.beta_A**2 * g_o + co.alpha_A**2 * co.sigma_V**2 * att_o
    qy, py = attention_map(co, q, p, table, samples)
    v, s12 = mlp_inputs(co, qy, py)
    scale_y = 1.0 / qy if co.layer_norm else 1.0
    chi = co.sigma_2**2 * co.sigma_w**2
    k_d = slope_moment(co.phi, v)
    k_o = dkernel(co.phi, v, v, s12)
    g_d_new = co.beta_M**2 * gy_d + co.alpha_M**2 * chi * k_d * gy_d * scale_y
    g_o_new = co.beta_M**2 * gy_o + co.alpha_M**2 * chi * k_o * gy_o * scale_y
    return gy_d, gy_o, g_d_new, g_o_new


def gradient_transfer(
    co: MapCoefficients, q, p, table: OverlapTable | None = None, samples: int = DEFAULT_SAMPLES
) -> np.ndarray:
    """Per-block transfer matrix T (..., 2, 2) acting on (g_perp, g_par) at forward state (q, p).

    T[..., i, j]: mode i out per unit of mode j in (0 = differential, 1 = mean).
    Note: the forward state is not advanced; evaluate at a fixed point.
    """
    n = co.n
    cols = []
    for g_perp, g_par in ((1.0, 0.0), (0.0, 1.0)):
        g_d, g_o = modes_to_entries(n, g_perp, g_par)
        *_, gd_new, go_new = gradient_step(co, q, p, g_d, g_o, table, samples)
        cols.append(np.stack(entries_to_modes(n, gd_new, go_new), axis=-1))
    return np.stack(cols, axis=-1)


def hutchinson_slope(T: np.ndarray, n: int, start: int, stop: int) -> np.ndarray:
    """Finite-depth prediction of a measured lambda_g: the least-squares slope of log tr(G_l),
    l = start..stop, for isotropic probes (g_perp = g_par = 1 at l = 0) under the transfer T (..., 2, 2).

    At finite depth both modes contribute, tr(G_l) = (n - 1) g_perp,l + g_par,l, so a slope
    fitted over a window differs from the asymptotic log spectral radius when the two
    mode rates are close or the window is short; this is the quantity to compare with
    :func:`particles.signalprop.measure.measure_gradient_exponent` fitted over the same blocks.
    """
    T = np.asarray(T, dtype=np.float64)
    g = np.ones(T.shape[:-1])
    logs = []
    for l in range(stop + 1):
        if l >= start:
            logs.append(np.log((n - 1) * g[..., 0] + g[..., 1]))
        g = np.einsum("...ij,...j->...i", T, g)
    ls = np.arange(start, stop + 1, dtype=np.float64)
    ls -= ls.mean()
    return np.tensordot(ls, np.stack(logs), axes=(0, 0)) / np.sum(ls**2)
