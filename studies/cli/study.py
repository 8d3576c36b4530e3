"""``attnflow study NAME [--smoke | --size S] [--out DIR]``: run a named study end to end.

A study sweeps its parameters (with the local process pool unless --executor says
otherwise), merges the results into HDF5 files and draws its figures into --out
(default runs/NAME). Each study has three sizes: smoke (seconds), default (minutes)
and full (the published size). `attnflow study list` shows every size with its
time on a 2-core machine.

`attnflow study default` is the README's main command: a small phase diagram,
about 3 minutes on 2 cores. A full size that takes longer than 10 minutes runs
only when asked for by name (--size full). An interrupted study resumes where it
stopped when run again; finished outputs are replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from studies.papers.registry import LONG_S, STUDIES, StudyEntry, chosen_size, format_duration, study_outputs

__all__ = ["register", "STUDIES"]


def _size_line(entry: StudyEntry) -> str:
    parts = []
    for size, s in entry.seconds.items():
        notes = ["measured" if size in entry.measured else "estimate"]
        if size == "full" and s > LONG_S:
            notes.append("only with --size full")
        elif size == entry.default_size:
            notes.append("runs without --size")
        parts.append(f"{size} {format_duration(s)} ({', '.join(notes)})")
    return "; ".join(parts)


def _list() -> None:
    print("Named studies; times are wall times on a 2-core machine (run one with `attnflow study NAME --smoke`):")
    width = max(map(len, STUDIES))
    for name, entry in STUDIES.items():
        doc = (importlib.import_module(entry.module).__doc__ or "").strip().splitlines()[0]
        print(f"{name:{width}s} {doc}")
        print(f"{'':{width}s}   sizes: {_size_line(entry)}")


def _run(args: argparse.Namespace) -> int:
    from studies.errors import UserError
    from studies.papers.common import run_from_args

    if args.name == "list":
        _list()
        return 0
    if args.name not in STUDIES:
        raise UserError(f"unknown study {args.name!r}; known: {', '.join(STUDIES)} (or 'list')")
    entry = STUDIES[args.name]
    size = chosen_size(args.name, args)
    args.out = args.out or f"runs/{args.name}"
    mod = importlib.import_module(entry.module)
    paths = run_from_args(mod.run, args, size, outputs=study_outputs(args.name, Path(args.out)))
    for kind, items in paths.items():
        for item in items:
            print(f"{kind}: {Path(item)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from studies.papers.common import add_study_options

    p = subparsers.add_parser("study", help="run a named study (sweep + merge + figure)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of: {', '.join(STUDIES)}, or 'list' (each with its sizes and times)")
    add_study_options(p)
    p.set_defaults(func=_run)
