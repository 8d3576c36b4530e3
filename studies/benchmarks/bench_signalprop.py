"""Performance of the signal-propagation maps against finite-network measurements.

    python -m studies.benchmarks.bench_signalprop [--quick] [--out FILE]

1. Overlap table: the Monte Carlo grid of s(c), x(c), t_d(c), t_o(c) for (n, sigma_A),
   built once (timed) and reused by every grid point and every later call.
2. Theory: a G x G phase diagram (G = 64) of lambda_a and lambda_g (at the forward
   attractor: plain iterations + safeguarded Newton, vectorised over the grid) over
   (alpha, sigma_w), erf, n = 16; best of k runs with the table already built.
3. Finite networks: lambda_a (slope of log(1 - c) near collapse) and lambda_g (Hutchinson
   JVPs after a burn-in) at one grid point each, d = 256, depth 12, 2 networks, burn-in 30
   -- the settings of the full phase-diagram study; timed on a random subset of the grid
   points (median, after an untimed warm-up) and extrapolated linearly to all G^2 points
   (each point is an independent measurement of the same cost; stated in the output).

Reports theory / finite time ratio (target: < 1%). Writes JSON to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from particles.signalprop import (
    SignalPropParams,
    coefficients,
    exponents,
    overlap_table,
)
from particles.signalprop.measure import (
    measure_angle_exponent,
    measure_gradient_exponent,
)

__all__ = ["main", "run"]


def _time_best(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(grid: int = 64, finite_points: int = 6, d: int = 256, repeats: int = 3, seed: int = 0) -> dict:
    """Time both sides; returns the result dict (see module docstring)."""
    base = SignalPropParams(n=16, sigma_b=0.5)
    t0 = time.perf_counter()
    overlap_table(base.n, base.sigma_A)
    t_table = time.perf_counter() - t0
    alpha = np.linspace(0.02, 0.98, grid)
    sigma_w = np.linspace(0.1, 5.0, grid)
    A, S = np.meshgrid(alpha, sigma_w, indexing="ij")
    co = coefficients(base, alpha=A, sigma_w=S)
    t_theory = _time_best(lambda: exponents(co), repeats)
    t_theory_collapse = _time_best(lambda: exponents(co, state="collapse"), repeats)

    rng = np.random.default_rng(seed)
    picks = rng.choice(grid * grid, size=finite_points, replace=False)
    measure_angle_exponent(base, d=d, depth=4, batch=1, seed=99, linear_max=1e-2)  # warm-up (torch init), untimed
    per_point = []
    for k, flat in enumerate(picks):
        i, j = divmod(int(flat), grid)
        P = base.replace(alpha_A=float(alpha[i]), alpha_M=float(alpha[i]), sigma_w=float(sigma_w[j]))
        t0 = time.perf_counter()
        measure_angle_exponent(P, d=d, depth=12, batch=2, seed=k, linear_max=1e-2)
        measure_gradient_exponent(P, d=d, depth=12, batch=2, seed=k, burn_in=30)
        per_point.append(time.perf_counter() - t0)
    t_finite = float(np.median(per_point)) * grid * grid
    res = {
        "grid": f"{grid} x {grid} (alpha, sigma_w), erf, n = 16, sigma_b = 0.5",
        "overlap_table_build_s": t_table,
        "theory_attractor_s": t_theory,
        "theory_collapse_s": t_theory_collapse,
        "finite_points_timed": int(finite_points),
        "finite_seconds_per_point": per_point,
        "finite_extrapolated_s": t_finite,
        "finite_settings": f"d = {d}, depth 12, batch 2, burn-in 30, lambda_a + lambda_g per point",
        "ratio_theory_over_finite": t_theory / t_finite,
        "ratio_with_table_build": (t_theory + t_table) / t_finite,
        "target_ratio": 0.01,
        "extrapolation": f"median time of {finite_points} random grid points (after an untimed warm-up) times {grid * grid}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.benchmarks.bench_signalprop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 x 16 grid, 2 finite points (seconds)")
    p.add_argument("--out", type=Path, default=Path("benchmark_results/signalprop.json"))
    a = p.parse_args(argv)
    res = run(grid=16, finite_points=2, repeats=1) if a.quick else run()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"ratio theory / finite = {res['ratio_theory_over_finite']:.2e} (target < 1e-2)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
