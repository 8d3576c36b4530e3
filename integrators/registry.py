"""Steppers registered by name with their declared order.

One parametrised test (tests/integrators/test_convergence_orders.py) measures
every entry's convergence slope against ``order``: classical order for ODE
steppers, strong order for SDE steppers. Add a stepper here and it is tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from . import steppers as _s
from .tableaus import DOPRI5

__all__ = ["Stepper", "STEPPERS", "get_stepper", "register"]


@dataclass(frozen=True)
class Stepper:
    """A registered one-step method.

    Attributes
    ----------
    name : registry key.
    step : the one-step map, see :mod:`integrators.steppers`.
    order : declared order (classical for ODEs, strong for SDEs).
    kind : "ode" or "sde".
    calculus : for SDE steppers, the calculus they are consistent with.
    adaptive : whether ``step`` returns an error estimate for step-size control.
    error_order : order of the embedded estimate (adaptive methods).
    """

    name: str
    step: Callable
    order: float
    kind: Literal["ode", "sde"]
    calculus: Literal["ito", "stratonovich"] | None = None
    adaptive: bool = False
    error_order: int | None = None
    description: str = ""


STEPPERS: dict[str, Stepper] = {}


def register(stepper: Stepper) -> Stepper:
    if stepper.name in STEPPERS:
        raise ValueError(f"a stepper named {stepper.name!r} is already registered")
    STEPPERS[stepper.name] = stepper
    return stepper


def get_stepper(method: str | Stepper) -> Stepper:
    """Look a stepper up by name (or pass a :class:`Stepper` through)."""
    if isinstance(method, Stepper):
        return method
    if method not in STEPPERS:
        from integrators.validation import ParameterError

        raise ParameterError("method", f"unknown method {method!r}; registered: {sorted(STEPPERS)}")
    return STEPPERS[method]


register(Stepper("euler", _s.euler_step, 1, "ode", description="explicit Euler"))
register(Stepper("lie-euler", _s.lie_euler_step, 1, "ode", description="geodesic Euler via the exponential map"))
register(Stepper("heun", _s.heun_step, 2, "ode", description="Heun's method (explicit trapezoid)"))
register(Stepper("midpoint", _s.midpoint_step, 2, "ode", description="explicit midpoint"))
register(Stepper("rk4", _s.rk4_step, 4, "ode", description="classical Runge-Kutta"))
register(
    Stepper(
        "dopri5",
        _s.dopri5_step,
        DOPRI5.order,
        "ode",
        adaptive=True,
        error_order=DOPRI5.err_order,
        description="Dormand-Prince 5(4) with error control",
    )
)
register(
    Stepper("euler-maruyama", _s.euler_maruyama_step, 0.5, "sde", calculus="ito", description="Euler-Maruyama (Ito)")
)
register(
    Stepper(
        "stratonovich-heun",
        _s.stratonovich_heun_step,
        0.5,
        "sde",
        calculus="stratonovich",
        description="stochastic Heun (Stratonovich); strong order 0.5 for non-commutative noise, 1 for commutative",
    )
)

from . import matrix_steppers as _ms  # noqa: E402  (SDEs on symmetric PSD matrices)

register(
    Stepper(
        "psd-euler-maruyama",
        _ms.psd_euler_maruyama_step,
        0.5,
        "sde",
        calculus="ito",
        description="Euler-Maruyama projected onto the PSD cone (symmetric matrices only; "
        "order measured on particles.covariance.convergence_problem())",
    )
)
