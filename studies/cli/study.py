"""``attnflow study NAME [--smoke | --size S] [--out DIR]``: run a named study end to end.

A study sweeps (on the local executor by default, resuming), merges the shards
into HDF5 study files and draws its figure(s) into ``--out``. ``default`` is the
small phase diagram of the README's main command (about a minute on 2 cores).

Adding a study is one line in :data:`STUDIES`: ``"name": ("module", "size")``,
where the module has ``run(out, size, executor=None, progress=True) -> dict``
and a module docstring (shown by ``attnflow study list``).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

__all__ = ["register", "STUDIES"]

#: name -> (module, size used when neither --smoke nor --size is given)
STUDIES: dict[str, tuple[str, str]] = {
    "default": ("studies.papers.phase_diagram", "default"),
    "phase-diagram": ("studies.papers.phase_diagram", "full"),
    "metastability": ("studies.papers.metastability", "full"),
    "collapse": ("studies.papers.collapse", "full"),
    "high-dim": ("studies.papers.high_dim", "full"),
    "cov": ("studies.papers.cov", "full"),
    "signalprop": ("studies.papers.signalprop", "full"),
    "trainability": ("studies.papers.trainability", "full"),
}


def _run(args) -> int:
    from studies.errors import UserError
    from studies.papers.common import run_from_args

    if args.name == "list":
        for name, (mod, size) in STUDIES.items():
            doc = (importlib.import_module(mod).__doc__ or "").strip().splitlines()[0]
            print(f"{name:16s} {doc} [{size}]")
        return 0
    if args.name not in STUDIES:
        raise UserError(f"unknown study {args.name!r}; known: {', '.join(STUDIES)} (or 'list')")
    mod_name, default_size = STUDIES[args.name]
    mod = importlib.import_module(mod_name)
    args.out = args.out or f"runs/{args.name}"
    paths = run_from_args(mod.run, args, default_size)
    for kind, items in paths.items():
        for item in items:
            print(f"{kind}: {Path(item)}")
    return 0


def register(subparsers) -> None:
    from studies.papers.common import add_study_options

    p = subparsers.add_parser("study", help="run a named study (sweep + merge + figure)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of: {', '.join(STUDIES)}, or 'list'")
    add_study_options(p)
    p.set_defaults(func=_run)
