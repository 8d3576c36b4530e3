"""Reference problems for tests of the matrix steppers (strong order on nested Brownian paths)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .models import ShapedBlockSDE

__all__ = ["ConvergenceProblem", "convergence_problem", "strong_order_slope"]


@dataclass(frozen=True)
class ConvergenceProblem:
    """An SDE on symmetric matrices for strong-order measurements.

    Measure: on a BrownianIncrements path of step ``fine_dt`` and shape
    ``model.noise_shape(V0.shape)``, integrate with the stepper at dt = fine_dt * f for
    ``factors`` (coarsened paths), compare with the same stepper at ``fine_dt``, error =
    mean over paths of the Frobenius norm at ``t_end``; the log-log slope estimates the
    strong order (1/2 for Euler-Maruyama and its PSD projection: the noise is
    multiplicative and non-commutative).
    """

    model: object
    V0: np.ndarray
    t_end: float
    fine_dt: float
    factors: tuple[int, ...]


def convergence_problem(batch: int = 200) -> ConvergenceProblem:
    """Shaped block SDE, m = 3, gamma = 0.35, tau0 = 1, from a well-conditioned V0 over T = 0.5.

    The attention drift is cubic and paths can blow up, but from this small V0 none of
    8e4 paths did (max |V_T| ~ 13), so errors measure the scheme, not blow-ups. V0 stays
    away from the boundary of the PSD cone, where the Cholesky factor in the diffusion is
    not Lipschitz and the classical strong-order theory does not apply.
    """
    V = 0.5 * np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 1.1]])
    model = ShapedBlockSDE(gamma=0.35, tau0=1.0, c_plus=0.0, c_minus=-1.0)
    return ConvergenceProblem(model, np.repeat(V[None], batch, axis=0), 0.5, 2.0**-10, (8, 16, 32, 64))


def strong_order_slope(stepper, seed: int = 123) -> tuple[float, list[float]]:
    """Measured strong order of ``stepper`` on :func:`convergence_problem` and the errors per dt.

    Plug into tests/test_convergence_orders.py as
    ``PROBLEMS["psd-euler-maruyama"] = particles.covariance.problems.strong_order_slope``.
    """
    from integrators import BrownianIncrements, solve

    p = convergence_problem()
    path = BrownianIncrements(tuple(p.model.noise_shape(p.V0.shape)), p.fine_dt, seed=seed)
    ref = solve(p.model, p.V0, p.t_end, dt=p.fine_dt, method=stepper, brownian=path)
    if ref.exited.any():
        raise RuntimeError("a reference path blew up: the problem is not measuring the scheme")
    errs = []
    for f in p.factors:
        x = solve(p.model, p.V0, p.t_end, dt=p.fine_dt * f, method=stepper, brownian=path.coarsen(f)).final
        errs.append(float(np.mean(np.linalg.norm(x - ref.final, axis=(-1, -2)))))
    slope = float(np.polyfit(np.log(np.array(p.factors) * p.fine_dt), np.log(errs), 1)[0])
    return slope, errs
