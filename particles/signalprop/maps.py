"""Deterministic large-width maps of the token Gram matrix, permutation-symmetric state (q, p).

C = X X^T / d with q = C_ii, p = C_ij (i != j), c = p / q. One block of the
reference model (see :mod:`.config`) maps (q, p) as follows [MODELS.md section 3, D]:

attention sublayer, with Ubar = (1, c) under layer norm and Ubar = (q, p) without,
logit scale sigma_eff = sigma_A Ubar_d and (s, x) = overlaps at (c, sigma_eff):

    q_A = sigma_V^2 [(Ubar_d - Ubar_o) s + Ubar_o],   p_A = sigma_V^2 [(Ubar_d - Ubar_o) x + Ubar_o]
    q_Y = beta_A^2 q + alpha_A^2 q_A,                  p_Y = beta_A^2 p + alpha_A^2 p_A

MLP sublayer, h ~ N(0, Sigma) with Sigma_ii = v, Sigma_ik = s12,
(v, s12) = (sigma_w^2 + sigma_b^2, sigma_w^2 c_Y + sigma_b^2) under layer norm and
(sigma_w^2 q_Y + sigma_b^2, sigma_w^2 p_Y + sigma_b^2) without:

    q_M = sigma_2^2 K(v, v, v),   p_M = sigma_2^2 K(v, v, s12)
    q' = beta_M^2 q_Y + alpha_M^2 q_M,   p' = beta_M^2 p_Y + alpha_M^2 p_M

Near collapse the attention rows differ only at O(1 - c) (the O(sqrt(1 - c)) part of
the logits is common to all rows), so s - x = (n - 1) sigma_A^2 (1 - c)^2 / n^2 + ... and
pure attention (alpha_A = 1, layer norm) maps 1 - c' = (n - 1) sigma_A^2 (1 - c)^3 / n^2:
zero slope at c = 1 and collapse of order 3 (doubly exponential) [D; checked on finite
networks, tests/test_sp_finite.py]. With the norm-preserving residual 1 - c shrinks by
1 - alpha_A^2 per block instead.

At finite n the attention matrix itself is random at O(1) and does not average out in
d: a finite network's c moves by an amount that shrinks with n (~ n^{-3/2} per pure
attention block) but not with d. This floor sits under the d^{-1/2} convergence to the
maps (measured; tests/test_sp_finite.py::test_attention_randomness_is_a_finite_n_floor).

The same functions take arrays of hyperparameters (:class:`MapCoefficients`),
so a whole phase diagram is iterated at once.

References
----------
MODELS.md section 3 ("Maps"); Cowsik et al., arXiv:2403.02579, section 3 (update
equations for (q, p)); Poole et al., "Exponential expressivity in deep neural
networks through transient chaos", NIPS 2016, eqs. 3-5 (the MLP part).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from integrators.validation import ParameterError, check_positive_int
from .config import SignalPropParams
from .kernels import kernel, second_moment
from .overlaps import AttentionMoments, OverlapTable, attention_moments, overlap_table

__all__ = [
    "DEFAULT_SAMPLES",
    "MapCoefficients",
    "MapTrajectory",
    "attention_map",
    "attention_moments_at",
    "block_map",
    "coefficients",
    "iterate_map",
    "mlp_inputs",
    "mlp_map",
]

#: Monte Carlo samples of the logit matrix behind every overlap table / direct estimate.
DEFAULT_SAMPLES = 8192


@dataclass(frozen=True)
class MapCoefficients:
    """Hyperparameters as broadcastable arrays (one entry per phase-diagram point).

    ``n``, ``sigma_A``, ``phi`` and ``layer_norm`` are shared by all points so that one
    overlap table serves the whole grid.
    """

    n: int
    sigma_A: float
    phi: str
    layer_norm: bool
    alpha_A: np.ndarray
    alpha_M: np.ndarray
    beta_A: np.ndarray
    beta_M: np.ndarray
    sigma_V: np.ndarray
    sigma_w: np.ndarray
    sigma_b: np.ndarray
    sigma_2: np.ndarray
    residual: str = "norm_preserving"

    @property
    def shape(self) -> tuple[int, ...]:
        arrays = [getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]
        return np.broadcast_shapes(*(a.shape for a in arrays))


_VARIABLE = ("alpha_A", "alpha_M", "sigma_V", "sigma_w", "sigma_b", "sigma_2")


def coefficients(params: SignalPropParams | MapCoefficients, **grid) -> MapCoefficients:
    """Array coefficients from ``params``; keyword arrays replace single hyperparameters.

    ``alpha`` sets alpha_A and alpha_M together. Allowed keys: alpha, alpha_A, alpha_M,
    sigma_V, sigma_w, sigma_b, sigma_2. Values are validated like the scalar parameters.
    """
    if isinstance(params, MapCoefficients):
        if grid:
            raise ParameterError(min(grid), "cannot override MapCoefficients; pass SignalPropParams")
        return params
    values = {k: np.asarray(getattr(params, k), dtype=np.float64) for k in _VARIABLE}
    for key, val in grid.items():
        arr = np.asarray(val, dtype=np.float64)
        if key not in _VARIABLE + ("alpha",):
            raise ParameterError(key, f"not a grid parameter; choose from {sorted(_VARIABLE + ('alpha',))}")
        if np.any(~np.isfinite(arr)):
            raise ParameterError(key, "contains NaN or infinite values")
        if key.startswith("alpha") and (np.any(arr < 0) or np.any(arr > 1)):
            raise ParameterError(key, "residual strengths must lie in [0, 1]")
        if key.startswith("sigma") and np.any(arr < 0):
            raise ParameterError(key, "standard deviations must be >= 0")
        if key == "alpha":
            values["alpha_A"] = values["alpha_M"] = arr
        else:
            values[key] = arr
    plain = params.residual == "plain"
    beta = {k: (np.ones_like(values[f"alpha_{k}"]) if plain else np.sqrt(1.0 - values[f"alpha_{k}"] ** 2)) for k in "AM"}
    return MapCoefficients(
        n=params.n,
        sigma_A=params.sigma_A,
        phi=params.phi,
        layer_norm=params.layer_norm,
        beta_A=beta["A"],
        beta_M=beta["M"],
        residual=params.residual,
        **values,
    )


def attention_moments_at(
    co: MapCoefficients, q, p, table: OverlapTable | None = None, samples: int = DEFAULT_SAMPLES
) -> tuple[AttentionMoments, np.ndarray, np.ndarray]:
    """Moments of the attention at state (q, p), and the attention-input Gram (Ubar_d, Ubar_o).

    Under layer norm the cached overlap table for (n, sigma_A) is used (built on first
    use); without layer norm the logit scale sigma_A q varies with the state and the
    moments are estimated directly with the same common random numbers.
    """
    q, p = np.asarray(q, dtype=np.float64), np.asarray(p, dtype=np.float64)
    c = np.clip(p / q, -1.0 / (co.n - 1), 1.0)
    if co.layer_norm:
        tab = table if table is not None else overlap_table(co.n, co.sigma_A, samples)
        return tab(c), np.ones_like(q), c
    return attention_moments(c, co.n, co.sigma_A * q, samples), q, p


def attention_map(co: MapCoefficients, q, p, table: OverlapTable | None = None, samples: int = DEFAULT_SAMPLES):
    """(q_Y, p_Y) after the attention sublayer (with its residual)."""
    if not np.any(co.alpha_A):  # no attention anywhere on the grid: skip the overlaps
        return co.beta_A**2 * q, co.beta_A**2 * p
    m, ud, uo = attention_moments_at(co, q, p, table, samples)
    q_att = co.sigma_V**2 * ((ud - uo) * m.s + uo)
    p_att = co.sigma_V**2 * ((ud - uo) * m.x + uo)
    return co.beta_A**2 * q + co.alpha_A**2 * q_att, co.beta_A**2 * p + co.alpha_A**2 * p_att


def mlp_inputs(co: MapCoefficients, q, p) -> tuple[np.ndarray, np.ndarray]:
    """Preactivation variance v and covariance s12 of the MLP at input state (q, p)."""
    if co.layer_norm:
        c = np.clip(p / q, -1.0, 1.0)
        return co.sigma_w**2 + co.sigma_b**2 + 0 * c, co.sigma_w**2 * c + co.sigma_b**2
    return co.sigma_w**2 * q + co.sigma_b**2, co.sigma_w**2 * p + co.sigma_b**2


def mlp_map(co: MapCoefficients, q, p):
    """(q', p') after the MLP sublayer (with its residual)."""
    v, s12 = mlp_inputs(co, q, p)
    q_mlp = co.sigma_2**2 * second_moment(co.phi, v)
    p_mlp = co.sigma_2**2 * kernel(co.phi, v, v, s12)
    return co.beta_M**2 * q + co.alpha_M**2 * q_mlp, co.beta_M**2 * p + co.alpha_M**2 * p_mlp


def block_map(co: MapCoefficients, q, p, table: OverlapTable | None = None, samples: int = DEFAULT_SAMPLES):
    """One block: returns (q_Y, p_Y, q', p')."""
    qy, py = attention_map(co, q, p, table, samples)
    qn, pn = mlp_map(co, qy, py)
    return qy, py, qn, pn


@dataclass(frozen=True)
class MapTrajectory:
    """(q, p) through depth: ``q[l], p[l]`` at the input of block l (l = 0..depth),
    ``q_att[l], p_att[l]`` after the attention sublayer of block l (l = 0..depth-1)."""

    q: np.ndarray
    p: np.ndarray
    q_att: np.ndarray
    p_att: np.ndarray

    @property
    def c(self) -> np.ndarray:
        return self.p / self.q

    @property
    def c_att(self) -> np.ndarray:
        return self.p_att / self.q_att


def iterate_map(
    params: SignalPropParams | MapCoefficients,
    q0,
    p0,
    depth: int,
    table: OverlapTable | None = None,
    samples: int = DEFAULT_SAMPLES,
) -> MapTrajectory:
    """Iterate the block map ``depth`` times from (q0, p0) (arrays broadcast with the coefficients)."""
    co = coefficients(params)
    depth = check_positive_int("depth", depth, minimum=0)
    q = np.broadcast_to(np.asarray(q0, dtype=np.float64), np.broadcast_shapes(np.shape(q0), np.shape(p0), co.shape))
    p = np.broadcast_to(np.asarray(p0, dtype=np.float64), q.shape)
    if np.any(q <= 0) or np.any(np.abs(p) > q * (1 + 1e-12)) or np.any(p < -q / (co.n - 1) * (1 + 1e-12)):
        raise ParameterError("p0", "need q0 > 0 and -q0/(n-1) <= p0 <= q0 (a valid Gram matrix)")
    qs, ps, qas, pas = [q.copy()], [p.copy()], [], []
    for _ in range(depth):
        qy, py, q, p = block_map(co, q, p, table, samples)
        qas.append(qy)
        pas.append(py)
        qs.append(q)
        ps.append(p)
    empty = np.empty((0,) + q.shape)
    return MapTrajectory(
        np.stack(qs), np.stack(ps), np.stack(qas) if qas else empty, np.stack(pas) if pas else empty
    )

