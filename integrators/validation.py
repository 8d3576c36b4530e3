"""Input validation shared by every entry point: errors name the parameter."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "ParameterError",
    "check_positive_int",
    "check_positive",
    "check_nonnegative",
    "check_in_range",
    "check_choice",
    "check_finite_array",
]


class ParameterError(ValueError):
    """A user-supplied parameter is invalid; the message names it."""

    def __init__(self, name: str, message: str):
        self.parameter = name
        super().__init__(f"invalid parameter {name!r}: {message}")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(name, f"expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ParameterError(name, f"expected an integer >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ParameterError(name, f"expected a finite positive number, got {value!r}")
    if value <= 0:
        raise ParameterError(name, f"must be > 0, got {value}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ParameterError(name, f"expected a finite number >= 0, got {value!r}")
    if value < 0:
        raise ParameterError(name, f"must be >= 0, got {value}")
    return float(value)


def check_in_range(name: str, value, lo: float, hi: float, *, lo_open=False, hi_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ParameterError(name, f"expected a finite number, got {value!r}")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ParameterError(name, f"must lie in {lb}{lo}, {hi}{rb}, got {value}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ParameterError(name, f"unknown value {value!r}; choose one of {sorted(choices)}")
    return value


def check_finite_array(name: str, value, ndim: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(name, f"not a numeric array ({exc})") from None
    if ndim is not None and arr.ndim not in ndim:
        raise ParameterError(name, f"expected {' or '.join(map(str, ndim))} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ParameterError(name, "contains NaN or infinite entries")
    return arr
