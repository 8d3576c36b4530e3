"""The flow without layer norm (EMERGE; GLPR section 9.1): polytopes and hyperplanes.

x_i' = sum_j P_ij(t) V x_j in R^d, P = softmax_j(beta <Q x_i, K x_j>)
(``SelfAttention(projected=False)``), and the rescaled tokens z_i = e^{-tV} x_i.

* V = I, Q^T K positive definite (EMERGE Thm 3.1 as we read it): every z_i
  converges, to 0 or to a point of the boundary of a convex polytope K; for
  generic starts the limits are the vertices of K ("leaders").
  z_i' = sum_j P_ij (z_j - z_i) points into the hull, so conv{z_i(t)} shrinks.
* V with a simple, positive top eigenvalue lambda_1 that dominates the spectrum
  (and <Q phi_1, K phi_1> > 0, here Q = K = I; EMERGE section 4): the
  projections a_i = <psi, z_i> on the top left eigenvector converge to at most
  three values -- the z_i collapse onto at most three parallel hyperplanes.
  a_i' = lambda_1 sum_j P_ij (a_j - a_i), so max_i a_i never grows and min_i a_i
  never shrinks.

The hypotheses above are met with room to spare (Q^T K symmetric positive
definite, |lambda_k| < lambda_1), so the tests hold under any reading of the
theorems' assumptions. The statements themselves are confirmed by the paper's
abstract/summary (arXiv:2305.05465: "in the V = I_d case tokens approach the
vertices of a shrinking convex polytope, and with a simple positive leading
eigenvalue tokens align with up to three hyperplanes"); the theorem numbers are
from v6 and could not be checked against the full text here.
"""

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from integrators import solve
from particles import SelfAttention, random_rotation
from particles.sphere.theory import rescale_tokens, top_value_direction

T_END = 14.0
TIMES = np.linspace(0.0, T_END, 29)


def _run(model, x0):
    # the field grows like e^{2t} in the logits: an adaptive step follows the fast
    # transients of the softmax early on and takes long steps once it saturates
    return solve(model, x0, T_END, dt=0.01, method="dopri5", rtol=1e-10, atol=1e-10, save_at=TIMES)


def _distinct(points: np.ndarray, tol: float) -> np.ndarray:
    """Greedy representatives of ``points`` (m, k) at mutual distance > tol."""
    reps: list[np.ndarray] = []
    for p in points:
        if all(np.linalg.norm(p - r) > tol for r in reps):
            reps.append(p)
    return np.array(reps)


@pytest.mark.parametrize("anisotropic", [False, True])
@pytest.mark.parametrize("d", [2, 3])
def test_identity_value_limits_are_polytope_vertices(d, anisotropic):
    rng = np.random.default_rng(100 + d)
    batch, n = 6, 24
    R = random_rotation(d, seed=d)
    A = R @ np.diag(np.linspace(0.7, 1.4, d)) @ R.T  # Q^T K = A, positive definite
    model = SelfAttention(beta=1.0, K=A if anisotropic else None, projected=False)
    x0 = rng.standard_normal((batch, n, d))
    sol = _run(model, x0)
    z = rescale_tokens(sol.x, sol.t)  # (time, batch, n, d)

    # converged: z_i - limit ~ e^{-t}
    assert np.max(np.abs(z[-1] - z[-3])) < 1e-4
    full_polytopes = 0
    for b in range(batch):
        # the hull of the z_i only shrinks: every later z_i lies in every earlier hull
        for k in range(len(TIMES) - 1):
            eq = ConvexHull(z[k, b]).equations  # A z + c <= 0 inside
            assert np.max(z[k + 1, b] @ eq[:, :-1].T + eq[:, -1]) < 1e-9
        limits = _distinct(z[-1, b], tol=1e-3)
        assert 2 <= len(limits) < n  # several leaders, and clustering happened
        nonzero = limits[np.linalg.norm(limits, axis=-1) > 1e-3]  # Thm 3.1 also allows the origin
        if len(nonzero) > d:  # (d or fewer points in general position are all vertices)
            full_polytopes += 1
            # every limit point is a vertex of the polytope they span
            assert len(ConvexHull(nonzero).vertices) == len(nonzero)
    assert full_polytopes >= 2  # the check above was not vacuous


@pytest.mark.parametrize("symmetric", [True, False])
def test_top_eigenvalue_gives_at_most_three_hyperplanes(symmetric):
    d, batch, n = 3, 4, 20
    rng = np.random.default_rng(7 if symmetric else 8)
    S = random_rotation(d, seed=2) if symmetric else np.eye(d) + 0.4 * rng.standard_normal((d, d))
    V = S @ np.diag([1.0, -0.5, 0.3]) @ np.linalg.inv(S)
    lam, psi = top_value_direction(V)
    assert lam == pytest.approx(1.0)
    model = SelfAttention(beta=1.0, V=V, projected=False)
    x0 = rng.standard_normal((batch, n, d))
    sol = _run(model, x0)
    z = rescale_tokens(sol.x, sol.t, V)
    # a_i = <psi, e^{-tV} x_i> = e^{-lambda_1 t} <psi, x_i> exactly; this avoids
    # the rounding of expm(-tV) (norm e^{0.5 t}) times |x| ~ e^t
    a = np.exp(-lam * sol.t)[:, None, None] * (sol.x @ psi)  # (time, batch, n)

    # the range of the projections never grows (tolerance: integration error)
    assert np.all(np.diff(a.max(-1), axis=0) < 1e-8)
    assert np.all(np.diff(a.min(-1), axis=0) > -1e-8)
    # the projections converge (rate e^{-lambda_1 t}) ...
    scale = np.ptp(a[0], axis=-1).max()
    assert np.max(np.abs(a[-1] - a[-3])) < 1e-3 * scale
    for b in range(batch):
        levels = _distinct(a[-1, b][:, None], tol=1e-3 * scale)
        # ... onto at most three hyperplanes {<psi, z> = c}, and not onto one
        assert 2 <= len(levels) <= 3
        # while the z_i themselves stay apart inside the hyperplanes (the -0.5
        # eigendirection spreads them): hyperplanes, not points
        assert len(_distinct(z[-1, b], tol=1e-3 * scale)) > len(levels)


def test_top_value_direction_rejects_non_simple_spectrum():
    from particles import ParameterError

    with pytest.raises(ParameterError, match="V"):
        top_value_direction(np.eye(3))
    with pytest.raises(ParameterError, match="V"):
        top_value_direction(np.diag([-1.0, -2.0]))
