"""Every registered stepper's measured convergence order against its declared order.

ODE steppers: classical order on the sphere (SA flow with a random value matrix,
retraction after each step), error at T against a dopri5 reference at rtol 1e-14.
SDE steppers: strong order on the noisy flow on the sphere, on nested Brownian
paths (the coarse increments are sums of the fine ones), error against the
finest path of the Stratonovich Heun scheme.
Steppers on other state spaces register a problem in ``PROBLEMS`` below.
"""

import dataclasses

import numpy as np
import pytest

from integrators import STEPPERS, BrownianIncrements, solve
from particles import SelfAttention, uniform_sphere
from particles.covariance.problems import strong_order_slope as cov_strong_order_slope

TOL = 0.2  # allowed |measured slope - declared order|


def _ode_problem():
    rng = np.random.default_rng(7)
    d = 3
    V = np.eye(d) + 0.5 * rng.standard_normal((d, d))
    model = SelfAttention(beta=2.0, V=V)
    x0 = uniform_sphere(2, 5, d, seed=11)
    return model, x0


def _slope(dts, errs):
    return np.polyfit(np.log(dts), np.log(errs), 1)[0]


ODE_DTS = {1: [0.04, 0.02, 0.01, 0.005], 2: [0.08, 0.04, 0.02, 0.01], 4: [0.2, 0.1, 0.05, 0.025], 5: [0.05, 0.025, 0.0125]}


def _sphere_ode_slope(stepper):
    model, x0 = _ode_problem()
    T = 2.0
    ref = solve(model, x0, T, method="dopri5", rtol=1e-14, atol=1e-15).final
    fixed = dataclasses.replace(stepper, adaptive=False)  # measure the propagated order at fixed steps
    dts = ODE_DTS[int(round(stepper.order))]
    errs = [np.max(np.abs(solve(model, x0, T, dt=h, method=fixed).final - ref)) for h in dts]
    return _slope(dts, errs), errs


def _sphere_sde_slope(stepper):
    from particles import NoisyAttention

    model = NoisyAttention(SelfAttention(beta=1.0), kappa=2.0)
    x0 = uniform_sphere(400, 3, 3, seed=5)
    T, fine = 0.5, 2.0**-10
    path = BrownianIncrements(x0.shape, fine, seed=123)
    ref = solve(model, x0, T, dt=fine, method="stratonovich-heun", brownian=path).final
    factors = [8, 16, 32, 64]
    errs = []
    for f in factors:
        x = solve(model, x0, T, dt=fine * f, method=stepper, brownian=path.coarsen(f)).final
        errs.append(np.mean(np.linalg.norm(x - ref, axis=-1)))
    return _slope([fine * f for f in factors], errs), errs


def _measure(stepper):
    extra = PROBLEMS.get(stepper.name)
    if extra is not None:
        return extra(stepper)
    if stepper.kind == "ode":
        return _sphere_ode_slope(stepper)
    return _sphere_sde_slope(stepper)


#: name -> fn(stepper) -> (slope, errors) for steppers whose state space is not the sphere.
PROBLEMS: dict = {"psd-euler-maruyama": cov_strong_order_slope}


@pytest.mark.parametrize("name", sorted(STEPPERS))
def test_declared_order(name):
    stepper = STEPPERS[name]
    slope, errs = _measure(stepper)
    assert np.all(np.isfinite(errs)) and min(errs) > 0
    assert abs(slope - stepper.order) < TOL, f"{name}: measured order {slope:.3f}, declared {stepper.order} (errors {errs})"
