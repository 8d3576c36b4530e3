"""What every study script shares: specs with size overrides, sweep + merge, command-line options.

A study is a thin script over one or more sweep specs (``studies/papers/*.toml``,
the full size) and a figure drawn from the merged study files. Smaller sizes
(``smoke`` for the tests, ``default`` for a quick look) override tables of the
spec; the spec that actually ran is saved as TOML next to its shards, so
``attnflow sweep status|merge OUT/sweeps/NAME`` work on a study's sweeps too.
Studies always resume: re-running one after an interruption only computes
what is missing.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Callable

from studies.sweep import DaskExecutor, LocalExecutor, SerialExecutor, merge_sweep, parse_spec, run_sweep
from studies.sweep.spec import SweepSpec, to_toml

__all__ = ["SPEC_DIR", "study_spec", "sweep_and_merge", "study_main", "SIZES"]

SPEC_DIR = Path(__file__).resolve().parent
SIZES = ("smoke", "default", "full")


def study_spec(base: str, overrides: dict | None = None) -> SweepSpec:
    """The spec ``studies/papers/<base>.toml`` with tables updated by ``overrides``.

    ``overrides["grid"]`` replaces the whole grid; other tables are updated key by key.
    """
    data = tomllib.loads((SPEC_DIR / f"{base}.toml").read_text())
    for table, values in (overrides or {}).items():
        if table == "grid":
            data["grid"] = values
        else:
            data.setdefault(table, {}).update(values)
    text = to_toml(data)
    return parse_spec(tomllib.loads(text), source=str(SPEC_DIR / f"{base}.toml"), text=text)


def sweep_and_merge(spec: SweepSpec, out: Path, executor=None, progress: bool = True) -> Path:
    """Run (resuming) the sweep under ``out/sweeps/<name>`` and merge it into ``out/<name>.h5``."""
    store = Path(out) / "sweeps" / spec.name
    res = run_sweep(spec, store, executor=executor, resume=True, progress=progress)
    merged = merge_sweep(spec, store, Path(out) / f"{spec.name}.h5")
    if res.failed or merged.complete < merged.total:
        print(f"warning: {spec.name}: {merged.status}; see `attnflow sweep status {store}`")
    return merged.path


def _executor(args):
    if args.executor == "serial":
        return SerialExecutor()
    if args.executor == "dask":
        return DaskExecutor(address=args.scheduler, workers=None if args.scheduler else args.workers)
    return LocalExecutor(workers=args.workers)


def add_study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true", help="the tiny size used by the tests (same as --size smoke)")
    p.add_argument("--size", choices=SIZES, default=None, help="smoke, default or full (the default)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--executor", choices=("local", "serial", "dask"), default="local")
    p.add_argument("--workers", type=int, help="worker processes (default: CPUs)")
    p.add_argument("--scheduler", help="Dask scheduler address (with --executor dask)")
    p.add_argument("--no-progress", action="store_true")


def run_from_args(run: Callable, args, default_size: str = "full") -> dict:
    """Call a study's ``run(out, size, executor, progress)`` from parsed options."""
    from integrators.validation import ParameterError

    if args.smoke and args.size not in (None, "smoke"):
        raise ParameterError("size", "--smoke and --size disagree")
    size = "smoke" if args.smoke else (args.size or default_size)
    executor = _executor(args)
    try:
        return run(Path(args.out), size, executor=executor, progress=not args.no_progress)
    finally:
        executor.close()


def study_main(name: str, run: Callable, doc: str, argv=None) -> int:
    """``python -m studies.papers.X [--smoke] [--out DIR] ...``."""
    p = argparse.ArgumentParser(prog=f"python -m studies.papers.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(p)
    args = p.parse_args(argv)
    args.out = args.out or f"runs/{name}"
    paths = run_from_args(run, args)
    for kind, items in paths.items():
        for item in items:
            print(f"{kind}: {item}")
    return 0
