"""Readers of the HDF5 run store: :func:`read_run`, :func:`open_xarray`, :func:`summarize`, :func:`repair`.

Public through :mod:`studies.store`. Files whose writer was killed still carry
HDF5's "open for writing" flag: they are opened in SWMR-read mode, which shows
every complete save (``len(t)`` frames).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from integrators.validation import ParameterError

from studies.store.flags import clear_superblock_flags, superblock_flags

__all__ = ["Run", "read_run", "list_runs", "open_xarray", "repair", "data_bytes"]


def _open_read(path: str | os.PathLike) -> h5py.File:
    """Open for reading; files of a killed SWMR writer are opened in SWMR-read mode."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a directory, not an HDF5 file")
    try:
        return h5py.File(p, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise ParameterError("path", f"{p} is not a readable HDF5 file ({exc})") from None
    try:
        return h5py.File(p, "r", swmr=True)
    except OSError:
        raise ParameterError(
            "path",
            f"{p} is open for writing, or its writer was killed before the first save "
            f"(`attnflow info --repair {p}` clears the flag of a dead writer)",
        ) from None


def _locked_by_live_writer(path: Path) -> bool:
    # A non-SWMR HDF5 writer holds an flock on the file for as long as it lives.
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


@dataclass
class Run:
    """One stored run: times, state, observables and attributes (numpy arrays).

    Attributes
    ----------
    t : (n_saved,) saved times (only complete frames).
    state : (n_saved, ...) the state, or None if states were not saved or not loaded.
    state_name : "x", "V", ...
    observables : name -> (n_saved, batch, ...).
    dims : dataset name -> dimension names (time first).
    attrs : every attribute of the run group.
    params : the model parameters (decoded ``params_json``).
    exited : (batch,) bool, paths that left the domain (None in files written before it was stored).
    exit_time : (batch,) their exit times, NaN for the others (None likewise).
    """

    path: Path
    group: str
    t: np.ndarray
    state: np.ndarray | None
    state_name: str
    observables: dict[str, np.ndarray]
    dims: dict[str, tuple[str, ...]]
    attrs: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    exited: np.ndarray | None = None
    exit_time: np.ndarray | None = None

    @property
    def n_exited(self) -> int:
        return 0 if self.exited is None else int(self.exited.sum())

    def surviving(self) -> np.ndarray | None:
        """(batch,) bool, the paths that never exited (None when the file does not say)."""
        return None if self.exited is None else ~self.exited

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def _is_run(g) -> bool:
    return isinstance(g, h5py.Group) and "attnflow_format" in g.attrs


def list_runs(path: str | os.PathLike) -> list[str]:
    """Names of the groups of ``path`` that hold runs ("/" for a single-run file)."""
    out: list[str] = []
    with _open_read(path) as f:
        if _is_run(f):
            out.append("/")
        f.visititems(lambda name, obj: out.append("/" + name) if _is_run(obj) else None)
    return out


def _run_group(f: h5py.File, group: str):
    group = "/" + str(group).strip("/")
    if group not in f:
        raise ParameterError("group", f"{f.filename} has no group {group!r}")
    g = f[group]
    if not _is_run(g):
        raise ParameterError("group", f"{f.filename}:{group} is not an attnflow run")
    return g


def _dims_of(ds: h5py.Dataset) -> tuple[str, ...]:
    return tuple(_decode(d.label) or (d[0].name.rsplit("/", 1)[-1] if len(d) else f"dim_{i}") for i, d in enumerate(ds.dims))


def read_run(path: str | os.PathLike, group: str = "/", states: bool = True) -> Run:
    """Read a run written by :class:`RunWriter` (also an incomplete one: its complete frames)."""
    with _open_read(path) as f:
        g = _run_group(f, group)
        attrs = {k: _decode(v) for k, v in g.attrs.items()}
        t = g["t"][()] if "t" in g else np.empty(0)  # no "t": stopped before its first save
        n = len(t)
        state_name = str(attrs.get("state", "x"))
        scales = {name for name, obj in g.items() if isinstance(obj, h5py.Dataset) and obj.is_scale}
        state, obs, dims = None, {}, {}
        exited = g["exited"][()].astype(bool) if "exited" in g else None
        exit_time = g["exit_time"][()] if "exit_time" in g else None
        for name, ds in g.items():
            if not isinstance(ds, h5py.Dataset) or name in scales or name in ("exited", "exit_time"):
                continue
            dims[name] = _dims_of(ds)
            if name == state_name:
                state = ds[:n] if states else None
            else:
                obs[name] = ds[:n]
        dims["t"] = ("t",)
    params = _decode_params(path, attrs)
    return Run(Path(path), "/" + str(group).strip("/"), t, state, state_name, obs, dims, attrs, params, exited,
               exit_time)  # fmt: skip


def _decode_params(path, attrs: dict) -> dict:
    if "params_json" not in attrs:
        return {}
    try:
        params = json.loads(attrs["params_json"])
    except (ValueError, TypeError):
        params = None
    if not isinstance(params, dict):
        raise ParameterError("params_json", f"{path}: the attribute params_json is not a JSON object (a damaged or forged file)")
    return params


def open_xarray(path: str | os.PathLike, group: str = "/"):
    """The run as an ``xarray.Dataset`` (h5netcdf engine; SWMR-read for a killed writer's file)."""
    import xarray as xr

    with _open_read(path) as f:
        swmr = f.swmr_mode
    kw = {"driver_kwds": {"swmr": True}} if swmr else {}
    return xr.open_dataset(path, engine="h5netcdf", group=None if group in ("/", "") else group, **kw)


def repair(path: str | os.PathLike, force: bool = False) -> bool:
    """Clear the "open for writing" flag a killed writer left, so any HDF5 tool opens the file.

    The run stays marked incomplete. Refuses (ParameterError) while the writer
    recorded in the file still runs on this host, unless ``force``.
    Returns whether the file was changed.
    """
    path = Path(path)
    try:
        with _open_read(path) as f:
            killed = f.swmr_mode
            pids = [(g.attrs.get("writer_host"), g.attrs.get("writer_pid")) for g in _groups(f)]
    except ParameterError:
        # Not even SWMR-readable: a plain writer had it open (and holds a lock while it lives).
        if not path.is_file() or superblock_flags(path) == 0:
            raise
        if not force and _locked_by_live_writer(path):
            raise ParameterError("path", f"{path} is still open in a live writer") from None
        killed, pids = True, []
    if not killed:
        return False
    if not force:
        for host, pid in pids:
            if _decode(host) == socket.gethostname() and pid is not None and _alive(int(pid)):
                raise ParameterError("path", f"{path} is still being written by process {int(pid)}")
    changed = clear_superblock_flags(path)
    # A kill inside a save can leave some datasets one frame longer than t: cut them back.
    with h5py.File(path, "r+") as f:
        for g in _groups(f):
            n = g["t"].shape[0] if "t" in g else None
            for ds in g.values():
                if n is not None and isinstance(ds, h5py.Dataset) and ds.maxshape[:1] == (None,) and ds.shape[0] > n:
                    ds.resize(n, axis=0)
    return changed


def _groups(f: h5py.File):
    out = [f] if _is_run(f) else []
    f.visititems(lambda name, obj: out.append(obj) if _is_run(obj) else None)
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def data_bytes(path: str | os.PathLike) -> int:
    """Bytes of every dataset's values in a file (states, observables, times, dimension scales).

    The file's size over this is its storage overhead (chunk slack, metadata, compression).
    """
    total = 0

    def add(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += obj.size * obj.dtype.itemsize

    with _open_read(path) as f:
        f.visititems(add)
    return total
