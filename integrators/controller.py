"""Step-size control for adaptive steppers (Hairer, Norsett & Wanner I, II.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PIController"]


@dataclass
class PIController:
    """Accept/reject and propose the next step from an embedded error estimate.

    The error norm is the RMS of err / (atol + rtol max(|x|, |x_new|)) per
    system, and the worst system of the batch decides (one step size for the batch).
    ``h_new = h * clip(safety * norm^(-1/(q+1)), facmin, facmax)`` with q the
    order of the embedded estimate.
    """

    rtol: float
    atol: float
    error_order: int
    safety: float = 0.9
    facmin: float = 0.2
    facmax: float = 5.0

    def update(self, be, x, x_new, err, h):
        e = be.to_numpy(err)
        a = np.abs(be.to_numpy(x))
        b = np.abs(be.to_numpy(x_new))
        scale = self.atol + self.rtol * np.maximum(a, b)
        r = (e / scale).reshape(e.shape[0], -1)
        norm = float(np.max(np.sqrt(np.mean(r * r, axis=1))))
        if not np.isfinite(norm):
            return False, h * self.facmin
        fac = self.facmax if norm == 0 else min(self.facmax, max(self.facmin, self.safety * norm ** (-1.0 / (self.error_order + 1))))
        return norm <= 1.0, h * fac
