"""Text summaries of stored files (``attnflow info``): runs, sweep shards, merged studies."""

from __future__ import annotations

import json
import os
import socket

import h5py
import numpy as np

from studies.store import reader
from studies.store.files import format_file

__all__ = ["format_run", "summarize"]

_SHOWN = {
    "attnflow_format", "model", "params_json", "seed", "integrator", "dt", "backend", "dtype", "device",
    "package_version", "git_commit", "created", "completed", "status", "state", "writer_pid", "writer_host",
    "n_steps", "n_rejected", "wall_time_s", "n_saved", "n_exited",
}  # fmt: skip


_EXITS = ("exited", "exit_time")


def _short(v, width: int = 60) -> str:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray):
        s = f"array{v.shape}" if v.size > 8 else np.array2string(v, precision=4, separator=",")
    elif isinstance(v, (list, dict)):
        s = json.dumps(v)
        if len(s) > width:
            s = f"array{np.shape(v)}" if isinstance(v, list) else s[: width - 3] + "..."
    elif isinstance(v, (float, np.floating)):
        s = f"{float(v):.6g}"
    else:
        s = str(v.item() if isinstance(v, np.generic) else v)
    return s if len(s) <= width else s[: width - 3] + "..."


def _params(attrs) -> dict:
    """The decoded ``params_json`` ({} when absent or not a JSON object: a forged or damaged file)."""
    try:
        params = json.loads(attrs["params_json"])
    except (KeyError, ValueError, TypeError):
        return {}
    return params if isinstance(params, dict) else {}


def _describe_params(attrs) -> str:
    params = _params(attrs)
    if not params and "params_json" in attrs:
        return "params_json unreadable"
    return ", ".join(f"{k}={_short(v, 30)}" for k, v in params.items() if k != "model")


def _stat_line(v: np.ndarray) -> str:
    v = np.asarray(v, dtype=float)
    if v.size == 1:
        return f"{v.item():.6g}"
    return f"mean {np.nanmean(v):.6g}  [min {np.nanmin(v):.6g}, max {np.nanmax(v):.6g}]"


def format_run(filename: str, g: h5py.Group) -> str:
    a = {k: v for k, v in g.attrs.items()}
    lines = [f"{filename}:{g.name}   status: {_short(a.get('status', 'unknown'), 200)}"]
    lines.append(f"  model       {_short(a.get('model'))}  ({_describe_params(a)})")
    lines.append(
        f"  integrator  {_short(a.get('integrator'))}  "
        + "  ".join(f"{k}={_short(a[k])}" for k in ("dt", "backend", "dtype", "device", "seed") if k in a)
    )
    t = g["t"][()] if "t" in g else np.empty(0)
    saves = f"{len(t)} saves" + (f" (t = {t[0]:.6g} ... {t[-1]:.6g})" if len(t) else "")
    if "n_steps" in a:
        wall = f" in {float(a['wall_time_s']):.3g} s" if "wall_time_s" in a else ""
        rej = f", {int(a['n_rejected'])} rejected" if int(a.get("n_rejected", 0)) else ""
        ex = f", {int(a['n_exited'])} paths exited" if int(a.get("n_exited", 0)) else ""
        lines.append(f"  steps       {int(a['n_steps'])}{wall}{rej}{ex}; {saves}")
    else:
        lines.append(f"  steps       (not recorded); {saves}")
    lines.append(
        f"  written     {_short(a.get('created'))} by attnflow {_short(a.get('package_version'))}"
        f" (git {_short(a.get('git_commit'))[:12]})"
        + (f", finished {_short(a['completed'])}" if "completed" in a else "")
    )
    other = {k: v for k, v in a.items() if k not in _SHOWN and k not in _params(a)}
    if other:
        lines.append("  attributes  " + "  ".join(f"{k}={_short(v, 40)}" for k, v in other.items()))
    state = _short(a.get("state", "x"))
    data = sorted(
        (k for k, ds in g.items() if isinstance(ds, h5py.Dataset) and not ds.is_scale),
        key=lambda k: (k != state, k),
    )
    scales = [k for k, ds in g.items() if isinstance(ds, h5py.Dataset) and ds.is_scale and k != "t"]
    lines.append("  datasets")
    width = max([len(k) for k in data] + [4])
    for name in ["t", *data] if "t" in g else data:
        ds = g[name]
        dims = tuple(d[0].name.rsplit("/", 1)[-1] if len(d) else "?" for d in ds.dims)
        extra = "" if name == "t" else f"  dims ({', '.join(dims)})"
        if ds.chunks and name != "t":
            extra += f"  chunks {ds.chunks}"
        if ds.compression:
            extra += f"  {ds.compression}"
        lines.append(f"    {name:<{width}}  {str(ds.shape):<18} {ds.dtype}{extra}")
    if scales:
        lines.append("  dimensions  " + "  ".join(f"{k}={g[k].shape[0]}" for k in scales))
    n = len(t)
    obs = [
        name
        for name, ds in g.items()
        if isinstance(ds, h5py.Dataset) and not ds.is_scale and name not in ("t", state, *_EXITS) and ds.shape[0] >= n > 0
    ]
    exited = g["exited"][()].astype(bool) if "exited" in g else None
    if exited is not None and exited.any():
        first = float(np.nanmin(g["exit_time"][()])) if "exit_time" in g else float("nan")
        lines.append(f"  exited      {int(exited.sum())} of {exited.size} paths (first at t = {first:.6g}); "
                     "the values below are over the surviving paths")  # fmt: skip
    if obs:
        batch = g[obs[0]].shape[1] if g[obs[0]].ndim > 1 else 1
        keep = ~exited if exited is not None and exited.shape == (batch,) else np.ones(batch, dtype=bool)
        over = f"{batch} system{'s' if batch != 1 else ''}"
        if not keep.all():
            over = f"the {int(keep.sum())} surviving of {over}"
        lines.append(f"  final values (t = {t[-1]:.6g}, over {over})")
        w = max(len(o) for o in obs)
        for name in obs:
            ds = g[name]
            if ds.ndim > 2:
                lines.append(f"    {name:<{w}}  ({int(np.prod(ds.shape[2:]))} values per system)")
            elif not keep.any():
                lines.append(f"    {name:<{w}}  (no surviving system)")
            else:
                v = ds[n - 1]
                lines.append(f"    {name:<{w}}  {_stat_line(v[keep] if v.ndim == 1 and v.shape[0] == batch else v)}")
    return "\n".join(lines)


def summarize(path: str | os.PathLike, group: str | None = None) -> str:
    """A human-readable summary of the runs in a file, or of a shard or study file (``attnflow info``)."""
    groups = [group] if group is not None else reader.list_runs(path)
    if not groups:  # a sweep shard, a merged study, a study's own file
        with reader._open_read(path) as f:
            return format_file(f)
    with reader._open_read(path) as f:
        open_for_write = f.swmr_mode
        blocks = [format_run(f.filename, reader._run_group(f, g)) for g in groups]
        writers = [(reader._decode(g.attrs.get("writer_host")), g.attrs.get("writer_pid")) for g in reader._groups(f)]
    if open_for_write:
        live = [int(pid) for host, pid in writers if host == socket.gethostname() and pid is not None and reader._alive(int(pid))]
        if live:
            blocks.append(f"note: still being written by process {live[0]} (read in SWMR mode).")
        else:
            blocks.append(
                "note: the writer was killed; HDF5's write flag is still set (this tool reads the file in SWMR mode).\n"
                f"      `attnflow info --repair {path}` clears the flag so that any HDF5 tool opens it."
            )
    return "\n\n".join(blocks)
