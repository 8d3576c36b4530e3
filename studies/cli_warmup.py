"""``attnflow warmup``: compile and cache every Numba kernel ahead of a (cluster) job.

Run it once where the jobs will run (same Numba version, same NUMBA_CACHE_DIR if
set, a cache folder the jobs can read): later processes then load the machine
code from disk instead of each compiling for 10 s or more.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from .warmup import warmup

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
