"""The object :func:`integrators.solve` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Solution"]


@dataclass
class Solution:
    """Saved times, states and observables of one (batched) integration.

    Attributes
    ----------
    t : (n_save,) saved times.
    x : (n_save, batch, ...) saved states (numpy, float64/float32), or None if
        states were not saved.
    observables : name -> (n_save, batch, ...) measured at the saved times.
    exited : (batch,) bool, paths stopped because they left the domain
        (``exit_threshold`` passed, or a non-finite value); their state is
        frozen at the last good value.
    exit_time : (batch,) time of exit, NaN for paths that did not exit.
    stats : number of steps, rejected steps, wall time.
    meta : method, backend, dtype, dt, seed, model parameters.
    """

    t: np.ndarray
    x: np.ndarray | None
    observables: dict[str, np.ndarray]
    exited: np.ndarray
    exit_time: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> np.ndarray:
        """State at the last saved time, shape (batch, ...)."""
        if self.x is None:
            raise ValueError("states were not saved (save_states=False)")
        return self.x[-1]

    @property
    def exit_fraction(self) -> float:
        return float(np.mean(self.exited)) if self.exited.size else 0.0

    def __repr__(self) -> str:
        shape = None if self.x is None else self.x.shape
        return (
            f"Solution(t={self.t.shape}, x={shape}, observables={sorted(self.observables)}, "
            f"exited={int(self.exited.sum())}/{self.exited.size}, steps={self.stats.get('n_steps')})"
        )
