"""``attnflow plot FILE --out fig.png``: draw a stored run.

Figure modules are listed in :data:`PLOT_PLUGINS`; each exposes
``handles(run) -> bool`` (whether it knows the run's model, from
``run.attrs["model"]``) and ``plot_run(run, out, system=0) -> Path``. The first
module that handles the run draws it; a module that does not exist yet is skipped.
"""

from __future__ import annotations

import importlib

__all__ = ["register", "PLOT_PLUGINS", "plot_file"]

PLOT_PLUGINS = ("studies.figures.flow", "studies.figures.cov")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="draw a run, a study file or a sweep shard",
        description="Draw a file written by attnflow. A flow run: trajectories on the circle / sphere (d = 2, 3), the "
        "histogram of pairwise inner products over time, the number of clusters and the energy over time. A covariance "
        "run: rho^{ab} over depth with quantile bands, the density of rho at the end, the diagonal and the spectrum. A "
        "merged study file: the study's own figure. A sweep shard: its measurements.",
    )
    p.add_argument("file", help="HDF5 file written by attnflow")
    p.add_argument("--out", default=None, help="image file (.png, .pdf, .svg; default: FILE with .png)")
    p.add_argument("--group", default="/", help="run group in the file (default: the root)")
    p.add_argument("--system", default="0", help="which system of the batch to draw trajectories of (default 0)")
    p.set_defaults(func=run)


def plot_file(path, out, group: str = "/", system: int = 0):
    """Draw the run at ``path``/``group`` with the first figure module that handles it.

    A file with no run (a merged study, a sweep shard, a study's own file) is drawn by
    :func:`studies.figures.study.plot_study_file`, which returns a list of figures.
    """
    from studies.errors import UserError
    from studies.store import list_runs, read_run

    runs = list_runs(path)
    if not runs:
        from studies.figures.study import plot_study_file

        return plot_study_file(path, out)
    if "/" + group.strip("/") not in runs and group.strip("/") == "":
        raise UserError(f"{path} holds runs in groups {', '.join(runs)}: choose one with --group")
    r = read_run(path, group)
    for mod_name in PLOT_PLUGINS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue
            raise
        if mod.handles(r):
            return mod.plot_run(r, out, system=system)
    raise UserError(f"no figure module draws model {r.attrs.get('model')!r}")


def run(args) -> int:
    from pathlib import Path

    from studies.cli.options import integer

    system = integer(0)("system", args.system)
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".png")
    if not out.parent.exists():
        from integrators.validation import ParameterError

        raise ParameterError("out", f"folder {out.parent} does not exist")
    paths = plot_file(args.file, out, args.group, system)
    for path in paths if isinstance(paths, list) else [paths]:
        print(f"wrote {path}")
    return 0
