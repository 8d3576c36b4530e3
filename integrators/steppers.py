"""One-step maps. Steppers never loop, draw random numbers or write files.

Every stepper has the signature ``step(f, t, x, dt, space, g=None, dw=None)``
and returns ``(x_new, err)`` where ``err`` is an error estimate (adaptive
methods) or None. ``f(t, x)`` is the drift, ``g(t, x, dw)`` the diffusion
applied to a noise increment. The state space supplies ``expmap`` for the
Lie-group stepper; retraction onto the manifold is the driver's job.
"""

from __future__ import annotations

from .tableaus import DOPRI5, HEUN, MIDPOINT, RK4, Tableau

__all__ = [
    "explicit_rk_step",
    "euler_step",
    "heun_step",
    "midpoint_step",
    "rk4_step",
    "dopri5_step",
    "lie_euler_step",
    "euler_maruyama_step",
    "stratonovich_heun_step",
]


def explicit_rk_step(tab: Tableau, f, t, x, dt, k1=None):
    """One explicit Runge-Kutta step from tableau ``tab``.

    Returns (x_new, err, ks) where ``err`` is x_new - x_embedded (or None).
    """
    ks = []
    for i in range(tab.stages):
        if i == 0 and k1 is not None:
            ks.append(k1)
            continue
        xi = x
        for j in range(i):
            if tab.a[i, j] != 0.0:
                xi = xi + (dt * tab.a[i, j]) * ks[j]
        ks.append(f(t + tab.c[i] * dt, xi))
    x_new = x
    for bi, k in zip(tab.b, ks):
        if bi != 0.0:
            x_new = x_new + (dt * bi) * k
    err = None
    if tab.b_err is not None:
        err = 0.0 * x
        for bi, be, k in zip(tab.b, tab.b_err, ks):
            if bi != be:
                err = err + (dt * (bi - be)) * k
    return x_new, err, ks


def euler_step(f, t, x, dt, space, g=None, dw=None):
    return x + dt * f(t, x), None


def heun_step(f, t, x, dt, space, g=None, dw=None):
    return explicit_rk_step(HEUN, f, t, x, dt)[:2]


def midpoint_step(f, t, x, dt, space, g=None, dw=None):
    return explicit_rk_step(MIDPOINT, f, t, x, dt)[:2]


def rk4_step(f, t, x, dt, space, g=None, dw=None):
    return explicit_rk_step(RK4, f, t, x, dt)[:2]


def dopri5_step(f, t, x, dt, space, g=None, dw=None):
    return explicit_rk_step(DOPRI5, f, t, x, dt)[:2]


def lie_euler_step(f, t, x, dt, space, g=None, dw=None):
    """Geodesic (Lie-group) Euler: x_new = exp_x(dt f(t, x)) with the space's exponential map."""
    return space.expmap(x, dt * f(t, x)), None


def euler_maruyama_step(f, t, x, dt, space, g=None, dw=None):
    """Ito Euler-Maruyama: x + f dt + g(x) dW."""
    return x + dt * f(t, x) + g(t, x, dw), None


def stratonovich_heun_step(f, t, x, dt, space, g=None, dw=None):
    """Stochastic Heun (trapezoidal predictor-corrector), consistent with Stratonovich calculus."""
    f0 = f(t, x)
    g0 = g(t, x, dw)
    xbar = space.retract(x + dt * f0 + g0)
    return x + (0.5 * dt) * (f0 + f(t + dt, xbar)) + 0.5 * (g0 + g(t + dt, xbar, dw)), None
