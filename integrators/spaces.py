"""Flat state spaces the driver applies after each step (the sphere lives with its models).

Following jax-md's ``shift``, a model declares *where* its state lives (``model.space``)
and :func:`integrators.solve` applies that space's retraction; steppers stay Euclidean.

* :class:`Euclidean` -- no constraint (self-attention without layer norm, scalar SDEs).
* :class:`SymmetricMatrices` -- (batch, m, m) symmetric matrices; the retraction
  symmetrises, which removes round-off asymmetry of Euler-Maruyama updates.

A space is any object with ``name``, ``tangent(x, v)``, ``retract(x)``, ``expmap(x, v)``
and ``defect(x)``; :class:`particles.sphere.geometry.Sphere` is the other one.
"""

from __future__ import annotations

from dataclasses import dataclass

from integrators.ops import namespace

__all__ = ["Euclidean", "SymmetricMatrices"]


@dataclass(frozen=True)
class Euclidean:
    """Flat space: tangent is the identity, retraction does nothing."""

    name: str = "euclidean"

    def tangent(self, x, v):
        return v

    def retract(self, x):
        return x

    def expmap(self, x, v):
        return x + v

    def defect(self, x) -> float:
        return 0.0


@dataclass(frozen=True)
class SymmetricMatrices:
    """Symmetric (..., m, m) matrices; retraction symmetrises."""

    name: str = "symmetric"

    def tangent(self, x, v):
        xp = namespace(v)
        return 0.5 * (v + xp.swap(v))

    def retract(self, x):
        xp = namespace(x)
        return 0.5 * (x + xp.swap(x))

    def expmap(self, x, v):
        return self.retract(x + v)

    def defect(self, x) -> float:
        xp = namespace(x)
        return float(xp.max(xp.abs(x - xp.swap(x))))
