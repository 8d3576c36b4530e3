"""Seeded Brownian increments that can be coarsened.

The noise is a separate object handed to the driver (as diffrax's
``VirtualBrownianTree`` is): increment k over the fine grid is a pure function of
(seed, k) -- counter-based Philox4x32-10 normals, see :mod:`integrators._philox` --
so any increment is reproducible on its own, rows are drawn in parallel with the
same numbers for any thread count, and a compiled kernel can draw its own row in
place (the fused SDE steps do; they give the same numbers as :meth:`fine`). A coarse
increment over ``factor`` fine steps is the exact sum of those fine increments --
the nested paths that strong-convergence tests need.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from integrators.validation import check_positive, check_positive_int

from ._philox import fill_normals

__all__ = ["BrownianIncrements", "GENERATOR"]

#: Name and layout version of the normal stream (stored with seeded runs): a seed
#: reproduces a path only under the same generator.
GENERATOR = "philox4x32-10/ziggurat256/rows-v1"

_TAG = 0x4257  # "BW": the Brownian stream's spawn-key prefix


@dataclass(frozen=True)
class BrownianIncrements:
    """Brownian increments on a uniform grid of step ``dt``.

    Parameters
    ----------
    shape : shape of one increment (the model's noise shape, batch included).
    dt : step of the fine grid.
    seed : root seed (int). The 64-bit Philox key is drawn from
        ``SeedSequence(seed, spawn_key=(TAG,))``; the tag keeps the noise independent
        of anything else seeded with the same integer. Row r (the first axis: one
        path) of increment k is normals (k, r, 0..P-1) of that key, P = prod(shape[1:]).
    factor : coarsening factor; increment k of this object sums fine increments
        ``k*factor .. (k+1)*factor - 1`` and has variance ``factor*dt``.
    dtype : numpy dtype of the increments.
    """

    shape: tuple[int, ...]
    dt: float
    seed: int
    factor: int = 1
    dtype: str = "float64"

    def __post_init__(self):
        check_positive("dt", self.dt)
        check_positive_int("factor", self.factor)
        if self.seed is None or int(self.seed) < 0:
            raise ValueError("BrownianIncrements needs an explicit non-negative integer seed")

    @property
    def step(self) -> float:
        """Time step of one (possibly coarsened) increment."""
        return self.dt * self.factor

    @functools.cached_property
    def key(self) -> tuple[int, int]:
        """The Philox key (two 32-bit words) of this seed (derived once: it is asked for every step)."""
        k = np.random.SeedSequence(int(self.seed), spawn_key=(_TAG,)).generate_state(2, np.uint32)
        return int(k[0]), int(k[1])

    def _rows(self) -> tuple[int, int]:
        rows = self.shape[0] if len(self.shape) else 1
        return rows, int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    def _draw(self, k_first: int, count: int) -> np.ndarray:
        out = np.empty(self._rows(), dtype=np.float64)
        return fill_normals(self.key, k_first, count, float(np.sqrt(self.dt)), out).reshape(self.shape)

    def fill(self, k: int, out: np.ndarray) -> np.ndarray:
        """Increment ``k`` in float64 into ``out`` (C-contiguous, shape (shape[0], prod(shape[1:])))."""
        if out.shape != self._rows() or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float64 array of shape {self._rows()}")
        return fill_normals(self.key, int(k) * self.factor, self.factor, float(np.sqrt(self.dt)), out)

    def fine(self, k: int) -> np.ndarray:
        """Fine increment number ``k`` (float64, variance dt)."""
        return self._draw(int(k), 1)

    def __call__(self, k: int) -> np.ndarray:
        """Increment number ``k`` of this grid: the sum of fine increments k*factor .. (k+1)*factor - 1,
        in that order, in float64, then cast."""
        return self._draw(int(k) * self.factor, self.factor).astype(self.dtype, copy=False)

    def coarsen(self, factor: int) -> "BrownianIncrements":
        """The same path seen on a grid ``factor`` times coarser."""
        return BrownianIncrements(self.shape, self.dt, self.seed, self.factor * factor, self.dtype)
