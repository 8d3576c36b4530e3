"""Peak extra memory of one numba SA drift evaluation, measured in a fresh process.

Run as ``python -m studies.benchmarks.flow_memory --n 65536 --d 64``; prints one
JSON line. "Extra" is the peak resident set size during the call minus the
resident set size just before it (state already allocated, kernels already
compiled by a small warm-up call), so it counts the result array (n d floats),
the kernel's scratch and anything else the call allocates -- an n x n matrix
would show up as 8 n^2 bytes (34 GB at n = 65536).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

__all__ = ["main", "measure"]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(n: int, d: int, beta: float, seed: int = 0) -> dict:
    from particles import SelfAttention, uniform_sphere

    model = SelfAttention(beta=beta)
    x = uniform_sphere(1, n, d, seed=seed)
    model.numba_drift(0.0, x[:, : min(n, 1024)].copy())  # load the compiled kernels first
    reset = _reset_peak()
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    out = model.numba_drift(0.0, x)
    wall = time.perf_counter() - t
    peak = _status_kb("VmHWM")
    ok = bool(np.all(np.isfinite(out)))
    return {
        "n": n,
        "d": d,
        "rss_before_mb": before / 1024,
        "peak_mb": peak / 1024,
        "extra_mb": (peak - before) / 1024,
        "peak_reset": reset,
        "state_mb": x.nbytes / 2**20,
        "dense_matrix_would_be_mb": 8.0 * n * n / 2**20,
        "seconds": wall,
        "finite": ok,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--d", type=int, required=True)
    p.add_argument("--beta", type=float, default=1.0)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.n, a.d, a.beta)))


if __name__ == "__main__":
    main()
