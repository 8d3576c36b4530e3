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
    exited : (batch,) bool, paths that left the domain (``exit_threshold``
        passed, or a non-finite value); from their exit on they are NaN in ``x``
        and their observables NaN (integer observables -1).
    exit_time : (batch,) time of exit, NaN for paths that did not exit.
    stats : number of steps, rejected steps, wall time, largest step taken (``max_step``).
    meta : method, backend, dtype, dt, seed, model parameters.
    status : "complete", or "failed: ..." when every path exited or an ODE
        state went non-finite (the run stopped at that save).
    last : (batch, ...) the state at the last save (masked like ``x``); kept
        also when ``x`` is not (states streamed to a writer, or not saved).
    """

    t: np.ndarray
    x: np.ndarray | None
    observables: dict[str, np.ndarray]
    exited: np.ndarray
    exit_time: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"
    last: np.ndarray | None = None

    @property
    def final(self) -> np.ndarray:
        """State at the last saved time, shape (batch, ...)."""
        if self.x is not None:
            return self.x[-1]
        if self.last is None:
            raise ValueError("no state was saved")
        return self.last

    @property
    def exit_fraction(self) -> float:
        return float(np.mean(self.exited)) if self.exited.size else 0.0

    def __repr__(self) -> str:
        shape = None if self.x is None else self.x.shape
        return (
            f"Solution(t={self.t.shape}, x={shape}, observables={sorted(self.observables)}, "
            f"exited={int(self.exited.sum())}/{self.exited.size}, steps={self.stats.get('n_steps')})"
        )
