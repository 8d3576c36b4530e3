"""Seeded Brownian increments that can be coarsened.

The noise is a separate object handed to the driver (as diffrax's
``VirtualBrownianTree`` is): increment k over the fine grid is drawn from a
generator keyed by (seed, k), so any increment is reproducible on its own, and a
coarse increment over ``factor`` fine steps is the exact sum of those fine
increments -- the nested paths that strong-convergence tests need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from particles.validation import check_positive, check_positive_int

__all__ = ["BrownianIncrements"]

_TAG = 0x4257  # "BW": the Brownian stream's spawn-key prefix


@dataclass(frozen=True)
class BrownianIncrements:
    """Brownian increments on a uniform grid of step ``dt``.

    Parameters
    ----------
    shape : shape of one increment (the model's noise shape, batch included).
    dt : step of the fine grid.
    seed : root seed (int); increment k uses ``SeedSequence(seed, spawn_key=(TAG, k))``.
        The tag keeps the noise independent of anything else seeded with the
        same integer (``SeedSequence(s)`` and ``SeedSequence([s, 0])`` coincide,
        so a plain ``[seed, k]`` key would reproduce ``default_rng(seed)`` at k = 0).
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

    def fine(self, k: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence(int(self.seed), spawn_key=(_TAG, int(k))))
        return rng.standard_normal(self.shape) * np.sqrt(self.dt)

    def __call__(self, k: int) -> np.ndarray:
        """Increment number ``k`` of this grid (float64 summation, then cast)."""
        if self.factor == 1:
            out = self.fine(k)
        else:
            out = self.fine(k * self.factor)
            for j in range(1, self.factor):
                out += self.fine(k * self.factor + j)
        return out.astype(self.dtype, copy=False)

    def coarsen(self, factor: int) -> "BrownianIncrements":
        """The same path seen on a grid ``factor`` times coarser."""
        return BrownianIncrements(self.shape, self.dt, self.seed, self.factor * factor, self.dtype)
