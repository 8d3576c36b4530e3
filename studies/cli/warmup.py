"""``attnflow warmup``: compile and cache every Numba kernel ahead of a (cluster) job.

Run it once where the jobs will run (same Numba version, same NUMBA_CACHE_DIR if
set, a cache folder the jobs can read): later processes then load the machine
code from disk instead of each compiling for 10 s or more.

The kernels have ``cache=True``, so a compiled kernel is stored on disk (next to
the sources, or under ``NUMBA_CACHE_DIR``) and loaded by every later process.
Compiling takes 10-60 s in all; paying it once before a cluster array job keeps
hundreds of tasks from each compiling the same kernels. :func:`warmup` runs
:func:`integrators.solve` on the numba backend for a few steps of tiny systems,
through every path that reaches a compiled kernel, in each dtype the backends
offer: the attention flow (per-system and streamed kernels, fused Euler step,
generic drift, heads with Q, K, V, feed-forward term, causal mask, noise) and the
covariance SDEs (fused Euler-Maruyama with and without the PSD projection, the
generic drift and diffusion, the m = 2 correlation SDE), with the Philox noise.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import numpy as np

__all__ = ["register", "warmup", "WARMUP_CASES", "kernel_dispatchers"]


def _run(args: argparse.Namespace) -> int:
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    res = warmup(dtypes, log=None if args.quiet else print)
    print(f"warmup: {res['cases']} runs; {res['kernels']} kernels ({res['signatures']} type signatures) compiled "
          f"or loaded from the cache in {res['seconds']:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("warmup", help="compile and cache every numba kernel (before a cluster job)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=("both", "float64", "float32"), default="both",
                   help="the float types to compile for (default: both)")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    p.set_defaults(func=_run)


def _flow_cases(dtype: str) -> list[tuple[str, Callable[[], None]]]:
    from integrators import NumbaBackend, solve
    from particles import FeedForward, SelfAttention, uniform_sphere

    def run(model, n: int, method: str, fused: bool = True, seed: int | None = None) -> None:
        x0 = uniform_sphere(batch=2, n=n, d=4, seed=0)
        solve(model, x0, 0.02, dt=0.01, method=method, backend=NumbaBackend(dtype=dtype, fused=fused), seed=seed)

    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 4, 4)) / 2 for _ in range(3))
    ffn = FeedForward(w=rng.standard_normal((4, 6)), a=rng.standard_normal((6, 4)))
    return [
        ("flow: fused Euler step", lambda: run(SelfAttention(beta=1.0), 8, "euler")),
        ("flow: drift (rk4), causal", lambda: run(SelfAttention(beta=1.0, causal=True), 8, "rk4")),
        ("flow: heads with Q, K, V", lambda: run(SelfAttention(beta=1.0, Q=Q, K=K, V=V, heads=2), 8, "heun")),
        ("flow: feed-forward, unprojected", lambda: run(SelfAttention(beta=1.0, ffn=ffn, projected=False), 8, "rk4")),
        ("flow: streamed kernel (long sequences)", lambda: run(SelfAttention(beta=1.0), 300, "rk4")),
        ("flow: streamed fused step", lambda: run(SelfAttention(beta=1.0), 300, "euler")),
        ("flow: noise (stratonovich-heun)",
         lambda: run(SelfAttention(beta=1.0).with_noise(1.0), 8, "stratonovich-heun", seed=0)),
        ("flow: noise (euler-maruyama)",
         lambda: run(SelfAttention(beta=1.0).with_noise(1.0, calculus="ito"), 8, "euler-maruyama", seed=0)),
    ]


def _cov_cases(dtype: str) -> list[tuple[str, Callable[[], None]]]:
    from integrators import NumbaBackend, solve
    from particles.covariance import (CorrelationSDE, ResidualLinearSDE, ResidualShapedMLPSDE, ShapedAttentionSDE,
                                      ShapedBlockSDE, ShapedMLPSDE)

    V0 = np.repeat((0.8 * np.eye(3) + 0.2)[None], 2, axis=0)

    def run(model, method: str, fused: bool) -> None:
        solve(model, V0, 0.02, dt=0.01, method=method, backend=NumbaBackend(dtype=dtype, fused=fused), seed=0)

    cases = []
    for model in (ShapedBlockSDE(0.35), ShapedAttentionSDE(0.35), ShapedMLPSDE(), ResidualShapedMLPSDE(0.35),
                  ResidualLinearSDE(0.35)):
        name = type(model).__name__
        for method in ("euler-maruyama", "psd-euler-maruyama"):
            for fused in (True, False):
                cases.append((f"cov: {name} {method}{'' if fused else ' (generic)'}",
                              lambda m=model, me=method, f=fused: run(m, me, f)))
    x0 = np.full((2, 1), 0.2)
    cases.append(("cov: correlation SDE", lambda: solve(CorrelationSDE(0.0, -1.0, 1.0, 1.0), x0, 0.02, dt=0.01,
                                                         method="euler-maruyama", backend=NumbaBackend(dtype=dtype),
                                                         seed=0)))
    return cases


def WARMUP_CASES(dtypes: Sequence[str] = ("float64", "float32")) -> list[tuple[str, Callable[[], None]]]:
    """(label, call) for every kernel path, in each dtype."""
    return [(f"{label} [{dt}]", fn) for dt in dtypes for label, fn in _flow_cases(dt) + _cov_cases(dt)]


def kernel_dispatchers() -> dict[str, object]:
    """The Numba dispatchers of this project's loaded modules that hold machine code, by ``module.name``.

    Kernels called only from other kernels are compiled into their callers and hold none of
    their own once the callers come from the cache, so these are the entry points.
    """
    import sys

    from numba.core.registry import CPUDispatcher

    found = {}
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or mod_name.split(".", 1)[0] not in ("particles", "integrators"):
            continue
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mod_name and obj.signatures:
                found[f"{mod_name}.{name}"] = obj
    return found


def warmup(dtypes: Sequence[str] = ("float64", "float32"), log: Callable[[str], None] | None = None) -> dict:
    """Compile (or load from the on-disk cache) every Numba kernel; returns counts and the wall time.

    Parameters
    ----------
    dtypes : the float types to compile for (both by default: float32 runs use their own
        machine code).
    log : called with one line per case (e.g. ``print``); None for silence.

    Returns
    -------
    dict with ``cases`` (number of runs), ``kernels`` (entry-point kernels with machine code),
    ``signatures`` (their compiled type signatures) and ``seconds``.
    """
    t0 = time.perf_counter()
    cases = WARMUP_CASES(dtypes)
    for label, fn in cases:
        t = time.perf_counter()
        fn()
        if log is not None:
            log(f"{label}: {time.perf_counter() - t:.1f} s")
    disp = kernel_dispatchers()
    return {"cases": len(cases), "kernels": len(disp), "signatures": sum(len(d.signatures) for d in disp.values()),
            "seconds": time.perf_counter() - t0}
