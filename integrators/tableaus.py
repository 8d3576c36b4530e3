"""Butcher tableaus as data (explicit methods).

Each tableau satisfies c_i = sum_j a_ij and sum_i b_i = 1; the tests check these
identities and the order conditions up to the declared order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Tableau", "EULER", "HEUN", "MIDPOINT", "RK4", "DOPRI5"]


@dataclass(frozen=True)
class Tableau:
    """Explicit Runge-Kutta coefficients.

    Attributes
    ----------
    a : (s, s) strictly lower triangular stage matrix.
    b : (s,) weights of the propagated solution.
    c : (s,) stage times.
    b_err : (s,) weights of the embedded solution (adaptive methods), else None.
    order : classical order of ``b``.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    order: int
    b_err: np.ndarray | None = None
    err_order: int | None = None

    @property
    def stages(self) -> int:
        return len(self.b)


def _t(a, b, c, order, b_err=None, err_order=None) -> Tableau:
    return Tableau(
        np.array(a, dtype=float),
        np.array(b, dtype=float),
        np.array(c, dtype=float),
        order,
        None if b_err is None else np.array(b_err, dtype=float),
        err_order,
    )


EULER = _t([[0.0]], [1.0], [0.0], 1)
HEUN = _t([[0, 0], [1, 0]], [0.5, 0.5], [0, 1], 2)
MIDPOINT = _t([[0, 0], [0.5, 0]], [0, 1], [0, 0.5], 2)
RK4 = _t(
    [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]],
    [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    [0, 0.5, 0.5, 1],
    4,
)
# Dormand & Prince (1980), the 5(4) pair used by scipy's RK45 and diffrax's Dopri5.
DOPRI5 = _t(
    [
        [0, 0, 0, 0, 0, 0, 0],
        [1 / 5, 0, 0, 0, 0, 0, 0],
        [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
        [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
        [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    ],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
    [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    5,
    b_err=[5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40],
    err_order=4,
)
