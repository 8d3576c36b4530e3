"""State spaces: the geometry a driver applies after each step.

Following jax-md's ``shift``, a model declares *where* its state lives and the
driver applies that space's retraction; the steppers themselves stay Euclidean.

* :class:`Sphere` -- tokens on S^{d-1}, state shape (batch, n, d).
  Tangent projection P_x y = y - <x, y> x and retraction by normalisation
  (first-order equivalent to the exponential map, and of any order when used
  as a projection method after a full Runge-Kutta step).

The flat spaces (:class:`integrators.spaces.Euclidean`,
:class:`integrators.spaces.SymmetricMatrices`) live with the driver that applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrators.ops import namespace

__all__ = [
    "Sphere",
    "tangent",
    "retract",
    "expmap",
    "sphere_tangent",
    "sphere_retract",
    "sphere_expmap",
]


def sphere_tangent(x, v):
    """Project ``v`` on the tangent space of the unit sphere at ``x``.

    P_x v = v - <x, v> x, along the last axis. Shapes (..., d).
    """
    xp = namespace(x)
    return v - xp.sum(x * v, axis=-1, keepdims=True) * x


def sphere_retract(x):
    """Retraction by normalisation: x / |x| along the last axis."""
    xp = namespace(x)
    return x / xp.norm(x, axis=-1, keepdims=True)


def sphere_expmap(x, v):
    """Exponential map of the unit sphere: exp_x(v) = cos|v| x + sin|v| v/|v|.

    ``v`` must be tangent at ``x``. Exact geodesic step; used by the Lie-group
    Euler stepper and as a check of the retraction.
    """
    xp = namespace(x)
    nv = xp.norm(v, axis=-1, keepdims=True)
    # sin(r)/r -> 1 as r -> 0; use a series below 1e-8 to avoid 0/0.
    small = nv < 1e-8
    safe = xp.where(small, nv * 0 + 1.0, nv)
    sinc = xp.where(small, 1.0 - nv * nv / 6.0, _sin(safe) / safe)
    return _cos(nv) * x + sinc * v


def _sin(x):
    import numpy as np

    if type(x).__module__.startswith("torch"):
        return x.sin()
    return np.sin(x)


def _cos(x):
    import numpy as np

    if type(x).__module__.startswith("torch"):
        return x.cos()
    return np.cos(x)


@dataclass(frozen=True)
class Sphere:
    """Unit sphere S^{d-1} along the last axis (rows are tokens)."""

    name: str = "sphere"

    def tangent(self, x, v):
        return sphere_tangent(x, v)

    def retract(self, x):
        return sphere_retract(x)

    def expmap(self, x, v):
        return sphere_expmap(x, v)

    def defect(self, x) -> float:
        """max | |x_i| - 1 |: how far the state is from the manifold."""
        xp = namespace(x)
        return float(xp.max(xp.abs(xp.norm(x, axis=-1) - 1.0)))


# Module-level conveniences for the sphere, the space most of the code uses.
tangent = sphere_tangent
retract = sphere_retract
expmap = sphere_expmap
