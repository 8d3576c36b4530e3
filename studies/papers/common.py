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
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

from studies.sweep import DaskExecutor, LocalExecutor, SerialExecutor, merge_sweep, parse_spec, run_sweep
from studies.sweep.spec import SweepSpec, to_toml

__all__ = ["SPEC_DIR", "study_spec", "sweep_and_merge", "study_main", "SIZES", "add_study_options", "check_outputs",
           "run_from_args"]

SPEC_DIR = Path(__file__).resolve().parent
SIZES = ("smoke", "default", "full", "paper")


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


def sweep_and_merge(spec: SweepSpec, out: Path, executor: Any = None, progress: bool = True) -> Path:
    """Run (resuming) the sweep under ``out/sweeps/<name>`` and merge it into ``out/<name>.h5``."""
    store = Path(out) / "sweeps" / spec.name
    res = run_sweep(spec, store, executor=executor, resume=True, progress=progress)
    merged = merge_sweep(spec, store, Path(out) / f"{spec.name}.h5")
    if merged.complete == 0:
        from studies.errors import UserError

        raise UserError(f"{spec.name}: no task finished ({merged.status}); see `attnflow sweep status {store}` "
                        f"and the task logs in {store / 'logs'}")
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
    """The options every study takes: size, output folder, executor, progress, overwrite."""
    p.add_argument("--smoke", action="store_true", help="the tiny size the tests run, seconds (same as --size smoke)")
    p.add_argument("--size", choices=SIZES, default=None,
                   help="smoke (seconds), default (minutes), full (the published size; the study's size when "
                        "none is given, except for 'default') or paper (the paper's parameters in at most 30 minutes on 2 cores). "
                        "See `attnflow study list` for the times")
    p.add_argument("--out", help="output directory (default: runs/NAME)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the study's existing output files (finished tasks of the same size are reused)")
    p.add_argument("--executor", choices=("local", "serial", "dask"), default="local",
                   help="where the sweep's tasks run: local (a process pool on this machine, the default), "
                        "serial (one after another in this process) or dask (a Dask cluster, see --scheduler)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPUs)")
    p.add_argument("--scheduler", help="Dask scheduler address (with --executor dask; default: a local cluster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in batch jobs and logs)")


def check_outputs(outputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse to replace existing study outputs unless ``overwrite`` (ParameterError naming ``overwrite``)."""
    from integrators.validation import ParameterError

    existing = [Path(p) for p in outputs if Path(p).exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise ParameterError("overwrite", f"{names} exist(s); pass --overwrite to replace, or choose another --out")


def run_from_args(run: Callable, args: argparse.Namespace, default_size: str = "full",
                  outputs: Sequence[Path] = ()) -> dict:
    """Call a study's ``run(out, size, executor, progress)`` from parsed options.

    ``outputs`` are the files the study writes: if one exists, the study refuses to
    start unless ``args.overwrite``.
    """
    from integrators.validation import ParameterError

    if args.smoke and args.size not in (None, "smoke"):
        raise ParameterError("size", "--smoke and --size disagree")
    size = "smoke" if args.smoke else (args.size or default_size)
    check_outputs(outputs, getattr(args, "overwrite", False))
    executor = _executor(args)
    try:
        return run(Path(args.out), size, executor=executor, progress=not args.no_progress)
    finally:
        executor.close()


def study_main(name: str, run: Callable, doc: str, argv: Sequence[str] | None = None) -> int:
    """``python -m studies.study_X [--smoke] [--out DIR] ...``."""
    from integrators.validation import ParameterError

    from studies.errors import UserError
    from studies.papers.registry import STUDIES, chosen_size, study_outputs

    p = argparse.ArgumentParser(prog=f"python -m studies.study_{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(p)
    args = p.parse_args(argv)
    args.out = args.out or f"runs/{name}"
    key = name.replace("_", "-")
    try:
        if key in STUDIES:
            paths = run_from_args(run, args, chosen_size(key, args), outputs=study_outputs(key, Path(args.out)))
        else:
            paths = run_from_args(run, args)
    except (UserError, ParameterError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    for kind, items in paths.items():
        for item in items:
            print(f"{kind}: {item}")
    return 0
