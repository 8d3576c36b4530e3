"""Small statistics for the gallery tables: bootstrap standard errors, crossings, grid look-ups.

Shared by the studies' ``gallery_numbers`` (see :mod:`studies.papers.gallery`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["bootstrap_se", "censored_median", "first_crossing", "nearest_index"]


def censored_median(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median of times where NaN means "not reached within the run" (larger than every finite value).

    NaN counts as +inf, so the median is finite only while fewer than half the samples are
    censored; otherwise the result is NaN (the median exceeds the horizon).
    """
    med = np.median(np.where(np.isnan(x), np.inf, x), axis=axis)
    return np.where(np.isfinite(med), med, np.nan)


def bootstrap_se(x: np.ndarray, stat: Callable[[np.ndarray], float], n_boot: int = 400, seed: int = 0) -> float:
    """Bootstrap standard error of ``stat`` over the samples ``x`` (first axis), NaN if undefined.

    Half the width of the 16-84% interval of the resampled statistic (the standard deviation
    for a normal law, and robust to resamples where ``stat`` is infinite or NaN); NaN if
    more than 16% of the resamples give a non-finite statistic or there are fewer than 2 samples.
    """
    x = np.asarray(x)
    if len(x) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)], dtype=float)
    vals = np.where(np.isnan(vals), np.inf, vals)
    with np.errstate(invalid="ignore"):  # inf - inf inside the interpolation: a NaN end, handled below
        lo, hi = np.percentile(vals, [16, 84])
    return float(0.5 * (hi - lo)) if np.isfinite(hi) and np.isfinite(lo) else float("nan")


def first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first x where y reaches ``level`` from below, linearly interpolated; NaN if it never does.

    ``y[0] >= level`` gives ``x[0]`` (already above at the start of the grid).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    hit = np.nonzero(y >= level)[0]
    if hit.size == 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    w = (level - y[i - 1]) / (y[i] - y[i - 1])
    return float(x[i - 1] + w * (x[i] - x[i - 1]))


def nearest_index(grid: np.ndarray, value: float) -> int:
    """Index of the grid point nearest ``value``."""
    return int(np.argmin(np.abs(np.asarray(grid, float) - value)))
