"""Lyapunov exponents measured on finite random transformers.

* lambda_a: slope of log(1 - c) per block, started near collapse (1 - c = 1e-7 by
  default, q at its collapsed fixed point) and fitted only while 1 - c stays in the
  linear regime (< ``linear_max``); otherwise saturation biases the slope
  (MODELS.md section 3, "Checks").
* gradient modes at collapse: tokens exactly collapsed (this state is invariant),
  token-mean probes 1 v^T and token-differential probes, pushed forward as
  Jacobian-vector products; the growth rate of |J v|^2 per block is averaged
  over blocks, probes and networks.
* lambda_g: Hutchinson estimate of E||J_L||_F^2 = E|J_L v|^2 with isotropic probes,
  its log-slope over the last blocks, after a burn-in that brings the forward state
  to its attractor (collapse in the ordered phase, the simplex in the chaotic phase).

Every estimate carries the standard error over the independent networks of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from integrators.validation import ParameterError, check_in_range, check_positive_int
from .config import SignalPropParams
from .exponents import collapse_fixed_point
from .finite import RandomTransformer
from .states import probes, simplex_tokens

__all__ = ["Measurement", "measure_angle_exponent", "measure_gradient_exponent", "measure_gradient_modes"]


@dataclass(frozen=True)
class Measurement:
    """An exponent estimate: mean over networks, its standard error, per-network values."""

    value: float
    stderr: float
    per_network: np.ndarray


def _summary(vals: np.ndarray) -> Measurement:
    vals = np.asarray(vals, dtype=np.float64)
    err = float(vals.std(ddof=1) / np.sqrt(vals.size)) if vals.size > 1 else float("nan")
    return Measurement(float(vals.mean()), err, vals)


def _q_start(params: SignalPropParams) -> float:
    if params.residual == "plain":
        return 1.0
    q = float(collapse_fixed_point(params)[0])
    return q if np.isfinite(q) else 1.0


def measure_angle_exponent(
    params: SignalPropParams,
    d: int,
    depth: int = 20,
    batch: int = 4,
    seed: int = 0,
    one_minus_c0: float = 1e-7,
    linear_max: float = 1e-3,
    d_mlp: int | None = None,
    sampling: str = "projected",
) -> Measurement:
    """lambda_a from the slope of log(1 - c) over blocks while 1 - c < ``linear_max``."""
    check_in_range("one_minus_c0", one_minus_c0, 0.0, 1.0, lo_open=True)
    depth = check_positive_int("depth", depth, minimum=2)
    net = RandomTransformer(params, d, d_mlp, sampling)
    x0 = simplex_tokens(batch, params.n, d, _q_start(params), 1.0 - one_minus_c0, seed=seed)
    run = net.run(x0, depth, seed=seed + 1)
    logs = np.log(run.one_minus_c)  # (depth + 1, batch)
    slopes = []
    for b in range(logs.shape[1]):
        # stop at saturation, or where token differences near float64 resolution (strong order)
        omc = run.one_minus_c[:, b]
        ok = np.nonzero((omc >= linear_max) | (omc < 1e-24))[0]
        stop = int(ok[0]) if ok.size else logs.shape[0]
        if stop < 3:
            raise ParameterError("one_minus_c0", f"1 - c left the linear regime after {stop} blocks; start closer to collapse")
        ls = np.arange(stop)
        slopes.append(np.polyfit(ls, logs[:stop, b], 1)[0])
    return _summary(np.array(slopes))


def _growth(tsq: np.ndarray, start: int) -> np.ndarray:
    """Per-network growth rate of mean |J v|^2 over probes, blocks start..end (log-linear fit)."""
    logs = np.log(tsq.mean(-1))  # (depth + 1, batch)
    ls = np.arange(start, logs.shape[0])
    return np.polyfit(ls, logs[start:], 1)[0]


def measure_gradient_modes(
    params: SignalPropParams,
    d: int,
    depth: int = 20,
    batch: int = 4,
    n_probes: int = 2,
    seed: int = 0,
    d_mlp: int | None = None,
    sampling: str = "projected",
) -> tuple[Measurement, Measurement]:
    """(lambda_mean, lambda_diff): growth of the token-mean and token-differential modes at collapse."""
    n = params.n
    net = RandomTransformer(params, d, d_mlp, sampling)
    x0 = simplex_tokens(batch, n, d, _q_start(params), 1.0, seed=seed)
    tang = torch.cat(
        [probes(batch, n_probes, n, d, "mean", seed=seed + 1), probes(batch, n_probes, n, d, "differential", seed=seed + 2)],
        dim=1,
    )
    run = net.run(x0, depth, seed=seed + 3, tangents=tang)
    mean_mode = _growth(run.tangent_sq[:, :, :n_probes], 0)
    diff_mode = _growth(run.tangent_sq[:, :, n_probes:], 0)
    return _summary(mean_mode), _summary(diff_mode)


def measure_gradient_exponent(
    params: SignalPropParams,
    d: int,
    depth: int = 20,
    batch: int = 4,
    n_probes: int = 4,
    seed: int = 0,
    burn_in: int = 40,
    c0: float = 0.0,
    fit_from: int | None = None,
    d_mlp: int | None = None,
    sampling: str = "projected",
) -> Measurement:
    """lambda_g: log-slope of the Hutchinson estimate of E||J||_F^2 at the forward attractor.

    The forward state is first run ``burn_in`` blocks from a regular simplex at c0 (no
    tangents), then isotropic probes are pushed through ``depth`` more blocks; the slope is
    fitted from block ``fit_from`` (default depth // 2, after the modes have separated).
    """
    n = params.n
    burn_in = check_positive_int("burn_in", burn_in, minimum=0)
    net = RandomTransformer(params, d, d_mlp, sampling)
    x = simplex_tokens(batch, n, d, _q_start(params), c0, seed=seed)
    if burn_in:
        x = net.run(x, burn_in, seed=seed + 1).x
    run = net.run(x, depth, seed=seed + 2, tangents=probes(batch, n_probes, n, d, "isotropic", seed=seed + 3))
    start = depth // 2 if fit_from is None else fit_from
    return _summary(_growth(run.tangent_sq, start))
