"""Time-dependent parameters: constant arrays, per-layer piecewise constants, callables.

A transformer's layer index plays the role of time (GLPR section 2), so Q(t),
K(t), V(t) may be piecewise constant over layers or any callable of t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from integrators.validation import ParameterError

__all__ = ["PiecewiseConstant", "resolve", "is_time_dependent"]


@dataclass(frozen=True, eq=False)
class PiecewiseConstant:
    """value(t) = values[k] for breaks[k-1] <= t < breaks[k] (layer k).

    Parameters
    ----------
    values : (L, ...) one value per layer.
    breaks : (L-1,) increasing layer boundaries in time; default: layers of
        unit length, boundaries 1, 2, ..., L-1.
    """

    values: np.ndarray
    breaks: np.ndarray | None = None

    def __post_init__(self):
        vals = np.asarray(self.values, dtype=np.float64)
        if vals.ndim < 1 or vals.shape[0] < 1:
            raise ParameterError("values", "need at least one layer")
        object.__setattr__(self, "values", vals)
        L = vals.shape[0]
        br = np.arange(1, L, dtype=np.float64) if self.breaks is None else np.asarray(self.breaks, dtype=np.float64)
        if br.shape != (L - 1,) or np.any(np.diff(br) <= 0):
            raise ParameterError("breaks", f"expected {L - 1} increasing layer boundaries, got {br}")
        object.__setattr__(self, "breaks", br)

    def __call__(self, t: float) -> np.ndarray:
        return self.values[int(np.searchsorted(self.breaks, t, side="right"))]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape[1:]


def is_time_dependent(p: Any) -> bool:
    return callable(p)


def resolve(p: Any, t: float) -> Any:
    """Value of a (possibly time-dependent) parameter at time t."""
    if p is None:
        return None
    if callable(p):
        return np.asarray(p(t), dtype=np.float64)
    return p
