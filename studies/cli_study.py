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
from dataclasses import dataclass
from pathlib import Path

__all__ = ["register", "STUDIES", "StudyEntry", "LONG_S", "format_duration", "study_outputs", "chosen_size"]

#: a full size whose estimate exceeds this many seconds runs only with an explicit --size full
LONG_S = 600.0


@dataclass(frozen=True)
class StudyEntry:
    """One named study.

    Attributes
    ----------
    module : the module with ``run(out, size, executor=None, progress=True) -> dict``.
    default_size : the size run when neither --smoke nor --size is given.
    seconds : wall time of each size on a 2-core machine, in seconds.
    measured : the sizes whose time was measured (the others are estimates from the
        module's notes or extrapolated from a timed fraction).
    outputs : the files the study writes into --out (the same names at every size).
    """

    module: str
    default_size: str
    seconds: dict[str, float]
    measured: frozenset[str]
    outputs: tuple[str, ...]


# Smoke times measured with `attnflow study NAME --smoke --no-progress` on a shared 2-core VM
# (cold numba cache excluded); the larger sizes come from the studies' docstrings and closing notes.
STUDIES: dict[str, StudyEntry] = {
    "default": StudyEntry("studies.study_default", "default", {"smoke": 6, "default": 180},
                          frozenset({"smoke", "default"}), ("default.h5", "default.png")),
    "phase-diagram": StudyEntry("studies.study_phase_diagram", "full", {"smoke": 6, "default": 180, "full": 2700},
                                frozenset({"smoke", "default"}), ("phase_diagram.h5", "phase_diagram.png")),
    "metastability": StudyEntry("studies.study_metastability", "full", {"smoke": 8, "default": 75, "full": 1200},
                                frozenset({"smoke", "default"}), ("metastability.h5", "two_caps.h5", "metastability.png")),
    "collapse": StudyEntry("studies.study_collapse", "full", {"smoke": 5, "default": 20, "full": 3600},
                           frozenset({"smoke", "default"}), ("collapse.h5", "collapse.png")),
    "high-dim": StudyEntry("studies.study_high_dim", "full", {"smoke": 7, "default": 15, "full": 600},
                           frozenset({"smoke", "default"}), ("high_dim.h5", "high_dim.png")),
    "cov": StudyEntry("studies.cov_study", "full", {"smoke": 17, "default": 180, "full": 1800},
                      frozenset({"smoke"}), ("cov_study.h5", "cov_density.png", "cov_ks.png", "cov_collapse.png")),
    "signalprop": StudyEntry("studies.study_signalprop", "full", {"smoke": 5, "default": 150, "full": 900},
                             frozenset({"smoke"}),
                             ("signalprop.h5", "signalprop_trajectories.png", "signalprop_phase.png")),
    "trainability": StudyEntry("studies.study_trainability", "full", {"smoke": 7, "default": 90, "full": 960},
                               frozenset({"smoke", "full"}), ("trainability.h5", "trainability.png")),
}  # fmt: skip


def format_duration(seconds: float) -> str:
    """``"about 45 s"``, ``"about 3 min"``, ``"about 1.5 h"``: a rounded wall time."""
    if seconds < 60:
        return f"about {round(seconds / 5) * 5 if seconds >= 10 else max(1, round(seconds))} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h".replace(".0 h", " h")


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
    for name, entry in STUDIES.items():
        doc = (importlib.import_module(entry.module).__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {doc}")
        print(f"{'':14s}   sizes: {_size_line(entry)}")


def study_outputs(name: str, out: Path) -> list[Path]:
    """The files study ``name`` writes into ``out``."""
    return [Path(out) / f for f in STUDIES[name].outputs]


def chosen_size(name: str, args: argparse.Namespace) -> str:
    """The size to run (--smoke, --size or the study's default); a long full size must be asked for by name."""
    from .cli import UserError

    entry = STUDIES[name]
    if args.smoke and args.size not in (None, "smoke"):
        raise UserError(f"--smoke and --size {args.size} disagree")
    size = "smoke" if args.smoke else (args.size or entry.default_size)
    if size not in entry.seconds:
        raise UserError(f"study {name!r} has sizes {', '.join(entry.seconds)}, not {size!r}")
    if size == "full" and args.size != "full" and entry.seconds["full"] > LONG_S:
        quick = format_duration(entry.seconds["default"])
        raise UserError(f"the full {name} study takes {format_duration(entry.seconds['full'])} on 2 cores (estimate): "
                        f"run it with --size full, or try --size default ({quick}) or --smoke")
    return size


def _run(args: argparse.Namespace) -> int:
    from .cli import UserError
    from .study_common import run_from_args

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
    from .study_common import add_study_options

    p = subparsers.add_parser("study", help="run a named study (sweep + merge + figure)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of: {', '.join(STUDIES)}, or 'list' (each with its sizes and times)")
    add_study_options(p)
    p.set_defaults(func=_run)
