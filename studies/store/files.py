"""What kind of attnflow file an HDF5 file is, and text summaries of the kinds that hold no run.

Kinds (:func:`file_kind`):

* ``"runs"``   one or more :class:`studies.store.RunWriter` runs (``attnflow simulate``);
* ``"shard"``  one sweep task's shard (``OUT/shards/ab/<task_id>.h5``, :mod:`studies.sweep.shards`);
* ``"study"``  a merged sweep (``attnflow sweep merge``, ``attnflow study``; :mod:`studies.sweep.merge`):
               grid dimensions, ``seed``, measurements and ``task_*`` bookkeeping;
* ``"study:NAME"`` a study's own file (``cov_study.h5``, ``signalprop.h5``, ``trainability.h5``,
               ``causal.h5``);
* ``"hdf5"``   any other HDF5 file.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

__all__ = ["file_kind", "format_file", "STUDY_FIGURES", "study_figure_of"]

_SHARD_FORMAT = "attnflow-shard/1"  # studies.sweep.shards.SHARD_FORMAT (read, not imported: no sweep import)


def _s(v) -> str:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return str(v)


def file_kind(f: h5py.File) -> str:
    """The kind of an open file (see the module docstring)."""
    from studies.store.reader import _groups

    a = f.attrs
    if _groups(f):
        return "runs"
    if _s(a.get("format", "")) == _SHARD_FORMAT:
        return "shard"
    if "task" in a and "n_tasks" in a and "task_status" in f:
        return "study"
    if _s(a.get("study", "")) in ("cov", "causal"):
        return "study:" + _s(a["study"])
    if "r2_quadratic" in a and "models" in f:
        return "study:trainability"
    if "trajectories" in f and "params_json" in a:
        return "study:signalprop"
    return "hdf5"


def _coord_text(values: np.ndarray, width: int = 48) -> str:
    vals = [_s(v) for v in np.ravel(values)]
    if np.asarray(values).dtype.kind == "f":
        vals = [f"{float(v):.4g}" for v in np.ravel(values)]
    text = ", ".join(vals)
    if len(text) > width and len(vals) > 2:
        text = f"{vals[0]} ... {vals[-1]}"
    return f"[{text}]"


def _dims(ds: h5py.Dataset) -> tuple[str, ...]:
    return tuple(d[0].name.rsplit("/", 1)[-1] if len(d) else f"dim_{i}" for i, d in enumerate(ds.dims))


def _variables(g: h5py.Group, indent: str = "    ") -> list[str]:
    data = [k for k, ds in g.items() if isinstance(ds, h5py.Dataset) and not ds.is_scale]
    if not data:
        return []
    width = max(len(k) for k in data)
    lines = []
    for name in data:
        ds = g[name]
        extra = ""
        if ds.dtype.kind == "f" and ds.size and ds.size <= 1 << 24:
            nan = float(np.isnan(ds[()]).mean())
            extra = f"  NaN {100 * nan:.3g}%" if nan else ""
        lines.append(f"{indent}{name:<{width}}  {str(ds.shape):<20} {ds.dtype}  dims ({', '.join(_dims(ds))}){extra}")
    return lines


def _scales(g: h5py.Group) -> str:
    parts = [f"{k}={ds.shape[0] if ds.ndim else 1} {_coord_text(ds[()])}" for k, ds in g.items()
             if isinstance(ds, h5py.Dataset) and ds.is_scale]  # fmt: skip
    return "  ".join(parts)


def _provenance(a) -> str:
    return (f"  written     {_s(a.get('created', '?'))} by attnflow {_s(a.get('package_version', '?'))}"
            f" (git {_s(a.get('git_commit', '?'))[:12]})")  # fmt: skip


def _format_study(f: h5py.File) -> list[str]:
    a = f.attrs
    status = _s(a.get("completion_status", "unknown"))
    task, model = _s(a["task"]), _s(a.get("model", "?"))
    lines = [f"{f.filename}   merged sweep {_s(a.get('title', '')).removeprefix('attnflow sweep ')!r}"
             f" (task {task}{'' if model == task else f', model {model}'})   status: {status}"]  # fmt: skip
    if a.get("description"):
        lines.append(f"  description {_s(a['description'])}")
    lines.append(_provenance(a))
    st = f["task_status"][()]
    comp = f["task_compute_s"][()] if "task_compute_s" in f else np.array([np.nan])
    lines.append(f"  tasks       {int(a['n_tasks'])}: {int((st == 1).sum())} complete, {int((st == 2).sum())} failed, "
                 f"{int((st == 0).sum())} missing; {np.nansum(comp):.3g} s of compute")  # fmt: skip
    grid = _dims(f["task_status"])
    lines.append(f"  grid        ({', '.join(grid)})  = {' x '.join(str(f[d].shape[0]) for d in grid)} tasks")
    lines.append("  dimensions  " + _scales(f))
    try:
        fixed = json.loads(_s(a.get("fixed_parameters", "{}")))
        lines.append("  fixed       " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    except ValueError:
        pass
    lines.append("  variables")
    lines += _variables(f)
    mod = study_figure_of(f)
    lines.append(f"  figure      `attnflow plot {f.filename}` draws "
                 + (f"the study's figure ({mod}.plot)" if mod else "each measurement over the grid"))  # fmt: skip
    return lines


def _format_shard(f: h5py.File) -> list[str]:
    a = f.attrs
    lines = [f"{f.filename}   sweep shard of task {_s(a.get('task', '?'))} ({_s(a.get('task_id', '?'))})"
             f"   status: {_s(a.get('status', '?'))}"]  # fmt: skip
    lines.append(f"  task        index {_s(a.get('index', '?'))}, replicate {_s(a.get('replicate', '?'))}, "
                 f"seed {_s(a.get('seed', '?'))}, {_s(a.get('attempts', '?'))} attempt(s), "
                 f"{float(a.get('compute_s', np.nan)):.3g} s")  # fmt: skip
    lines.append(f"  parameters  {_s(a.get('params', '{}'))}")
    lines.append(_provenance(a))
    if _s(a.get("error", "")):
        lines.append(f"  error       {_s(a['error'])}")
    g = f.get("measurements")
    if g is not None and len(g):
        lines.append("  measurements")
        width = max(len(k) for k in g)
        for k, ds in g.items():
            v = ds[()]
            val = f"  = {np.asarray(v).item():.6g}" if np.ndim(v) == 0 and np.asarray(v).dtype.kind in "fiub" else ""
            lines.append(f"    {k:<{width}}  {str(ds.shape):<16} {ds.dtype}{val}")
    return lines


def _format_tree(f: h5py.File, kind: str) -> list[str]:
    a = f.attrs
    head = f"{f.filename}   " + (f"study file of `attnflow study {kind[6:]}`" if kind.startswith("study:") else "HDF5 file")
    if "status" in a:
        head += f"   status: {_s(a['status'])}"
    lines = [head]
    if "model" in a:
        lines.append(f"  model       {_s(a['model'])}")
    if "created" in a:
        lines.append(_provenance(a))
    shown = {"params_json", "parameters_json", "model", "created", "package_version", "git_commit", "status"}
    other = [f"{k}={_s(v)[:40]}" for k, v in a.items() if k not in shown and np.size(v) <= 8]
    if other:
        lines.append("  attributes  " + "  ".join(other))
    groups = [("/", f)] + [(k, g) for k, g in f.items() if isinstance(g, h5py.Group)]
    for name, g in groups:
        body = _variables(g, indent="      ")
        if not body:
            continue
        lines.append(f"  group {name}" + (f"   dimensions  {_scales(g)}" if _scales(g) else ""))
        lines += body
    if kind.startswith("study:"):
        lines.append(f"  figure      `attnflow plot {f.filename}` draws the study's figures")
    return lines


def format_file(f: h5py.File) -> str:
    """Summary of an open file that holds no run: a shard, a merged study, a study file or any HDF5 file."""
    kind = file_kind(f)
    if kind == "study":
        return "\n".join(_format_study(f))
    if kind == "shard":
        return "\n".join(_format_shard(f))
    return "\n".join(_format_tree(f, kind))


#: sweep task -> study module whose ``plot`` draws the merged file
STUDY_FIGURES = {
    "flow.phase_point": "studies.papers.phase_diagram",
    "flow.collapse": "studies.papers.collapse",
    "flow.high_dim": "studies.papers.high_dim",
    "flow.trajectory": "studies.papers.metastability",
    "flow.two_caps": "studies.papers.metastability",
}
_PAIRED = {"flow.trajectory": ("two_caps.h5", "flow.two_caps"), "flow.two_caps": ("metastability.h5", "flow.trajectory")}


def _task(path: Path) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            return _s(f.attrs["task"]) if "task" in f.attrs and "task_status" in f else None
    except (OSError, KeyError):
        return None


def _partner(path: Path, task: str) -> Path | None:
    """The other file of a two-file study (metastability), if it sits next to ``path``."""
    if task not in _PAIRED:
        return None
    name, other_task = _PAIRED[task]
    p = Path(path).with_name(name)
    return p if p.is_file() and _task(p) == other_task else None


def study_figure_of(f: h5py.File) -> str | None:
    """The study module whose ``plot`` draws this merged file, or None (generic figure)."""
    task = _s(f.attrs.get("task", ""))
    if task not in STUDY_FIGURES:
        return None
    if task in _PAIRED and _partner(Path(f.filename), task) is None:
        return None
    return STUDY_FIGURES[task]
