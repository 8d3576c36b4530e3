"""The HDF5 run store: one streaming writer, and readers (MODELS.md section 4).

Layout of a run (a group; the file's root by default)::

    t                  (t,)                    saved times, float64; dimension scale "t"
    x | V | ...        (t, batch, n, d) ...    the state (name and dims configurable), optional
    <observable>       (t, batch, ...)         one dataset per observable
    exited, exit_time  (batch,)                paths that left the domain (bool) and when (NaN: never);
                                               rewritten at every save (from :func:`integrators.solve`)
    batch, n, d, ...   (size,)                 dimension scales (indices, or given coordinates)
    attrs              model, every parameter (and ``params_json``), seed, integrator, dt,
                       backend, dtype, device, package_version, git_commit, created, status, ...

Chunking. Every save appends one frame along time. A chunk holds as many saves
as fit in ``_FRAME_CHUNK_BYTES`` (4 KiB; at least one save, a frame above
``_CHUNK_BYTES`` split along its leading axes), and only chunks that hold one
save are compressed: each compressed chunk is then written once. A compressed
chunk spanning several saves would be recompressed and reallocated at every
save, and HDF5 does not reuse the space it leaves (files grew 10-50x beyond
their data). Uncompressed chunks are written in place, so small frames
(observables, small states) share chunks at no cost and a file holds at most
one partly filled 4 KiB chunk per dataset beyond its data. The default is no
compression: shuffle + gzip saves 5-10% on float64 trajectories for about half
again the writing time (``python -m studies.benchmarks.bench_store``).

Every dataset has its dimensions attached as HDF5 dimension scales, so
``xarray.open_dataset(path, engine="h5netcdf")`` opens a run with named
dimensions (see :func:`open_xarray`).

Crash safety. The datasets are created at the first save, the attribute
``status`` is set to "incomplete", and the file then switches to SWMR
(single-writer / multiple-reader) mode: each save extends every dataset (``t``
last, so ``len(t)`` counts complete frames) and flushes. HDF5 orders SWMR
writes so that the file on disk is consistent after every flush: a killed run
leaves every completed save readable and ``status == "incomplete"``. At
``close`` the file is reopened to set ``status`` to "complete", "interrupted" or
"failed: <reason>" and to record the step statistics. A killed writer also
leaves HDF5's "open for writing" flag set: the readers here open such files in
SWMR-read mode, and :func:`repair` clears the flag (as ``h5clear -s``) for other
tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from integrators.validation import ParameterError, check_choice
from studies.provenance import git_commit, package_version

__all__ = ["RunWriter", "FORMAT_VERSION", "COMPRESSIONS"]

FORMAT_VERSION = 1
#: Superblock v3 is what SWMR needs; capping the format at 1.10 keeps files readable by HDF5 >= 1.10.
LIBVER = ("v110", "v110")
COMPRESSIONS = ("gzip", "lzf", "none")
_CHUNK_BYTES = 1 << 19
#: Saves share a chunk up to this size; frames at least this large get one chunk per save (and may be compressed).
_FRAME_CHUNK_BYTES = 1 << 12
_MAX_T_CHUNK = 128
_RESERVED = (
    "attnflow_format", "model", "params_json", "seed", "integrator", "dt", "backend", "dtype", "device",
    "package_version", "git_commit", "created", "completed", "status", "state", "writer_pid", "writer_host", "n_saved",
)  # fmt: skip


def _attr(value: Any):
    """A JSON-like value as an HDF5 attribute (None -> "none", nested or mixed -> JSON text)."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_, str, int, float, np.integer, np.floating)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(value)
        except ValueError:
            arr = None
        if arr is not None and arr.dtype.kind in "biuf" and arr.size > 0:
            return arr
    return json.dumps(value, default=_json_default)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    return str(o)


def _chunks(frame: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape along time: saves share a chunk up to _FRAME_CHUNK_BYTES; frames above _CHUNK_BYTES are split."""
    nbytes = max(1, math.prod(frame) * itemsize)
    if nbytes <= _CHUNK_BYTES:
        return (int(min(_MAX_T_CHUNK, max(1, _FRAME_CHUNK_BYTES // nbytes))), *frame)
    chunk = list(frame)
    for ax in range(len(chunk)):  # split the leading (batch) axes first
        while chunk[ax] > 1 and math.prod(chunk) * itemsize > _CHUNK_BYTES:
            chunk[ax] = (chunk[ax] + 1) // 2
    return (1, *chunk)


class RunWriter:
    """Stream one run into an HDF5 file; the ``writer`` that :func:`integrators.solve` calls.

    It stores the states it is given (``stores_states``), so ``solve`` does not keep
    them in memory as well; ``solve`` hands it the per-path exits (:meth:`set_exits`)
    before each save.

    Parameters
    ----------
    path : the HDF5 file (created, or opened for appending when ``group`` is not the root).
    model : a model object (its ``name`` and ``params()`` are stored) or a model name.
    params : the parameters (default ``model.params()``); JSON-friendly values.
    method, dt, backend, dtype, device, seed : how the run was integrated (stored as attributes).
    group : the group holding the run ("/" = the file's root).
    state_name, state_dims : name of the state dataset and its dimensions after time:
        "x", ("batch", "n", "d") for particles; e.g. "V", ("batch", "m", "m2") for covariances.
    obs_dims : observable name -> its dimensions after time (default ("batch", "<name>_1", ...)).
    coords : dimension name -> coordinate values (default 0, 1, ..., size - 1).
    compression : "none" (default), "gzip" (level 4, with shuffle) or "lzf" (with shuffle); applied to
        datasets whose chunks hold one save (frames of at least 4 KiB), see the module docstring.
    attrs : further attributes (e.g. t_end, the command line).
    overwrite : replace an existing file (root group) or group.
    """

    stores_states = True

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: Any,
        method: str,
        dt: float | None,
        backend: str,
        dtype: str = "float64",
        device: str = "cpu",
        seed: int | None = None,
        params: Mapping[str, Any] | None = None,
        group: str = "/",
        state_name: str = "x",
        state_dims: Sequence[str] = ("batch", "n", "d"),
        obs_dims: Mapping[str, Sequence[str]] | None = None,
        coords: Mapping[str, np.ndarray] | None = None,
        compression: str = "none",
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ):
        check_choice("dtype", dtype, ("float64", "float32"))
        check_choice("compression", compression, COMPRESSIONS)
        self.path = Path(path)
        self.group = "/" + str(group).strip("/")
        self.state_name = state_name
        self.state_dims = tuple(state_dims)
        self.obs_dims = {k: tuple(v) for k, v in (obs_dims or {}).items()}
        self.coords = {k: np.asarray(v) for k, v in (coords or {}).items()}
        self.dtype = np.dtype(dtype)
        self.compression = compression
        self.closed = False
        self.n_saved = 0
        self._datasets: dict[str, h5py.Dataset] = {}
        self._exits: tuple[np.ndarray, np.ndarray] | None = None
        if params is None:
            params = model.params() if hasattr(model, "params") else {}
        model_name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
        meta = {
            "attnflow_format": FORMAT_VERSION,
            "model": model_name,
            "params_json": json.dumps(dict(params), default=_json_default),
            "seed": seed,
            "integrator": method,
            "dt": dt,
            "backend": backend,
            "dtype": dtype,
            "device": str(device),
            "package_version": package_version(),
            "git_commit": git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "status": "incomplete",
            "state": state_name,
            "writer_pid": os.getpid(),
            "writer_host": socket.gethostname(),
        }
        for k, v in params.items():
            key = k if k not in meta or meta[k] == v else f"param_{k}"
            meta[key] = v
        for k, v in (attrs or {}).items():
            if k in _RESERVED:
                raise ValueError(f"attribute {k!r} is reserved by the run store")
            meta[k] = v
        self._open(overwrite)
        for k, v in meta.items():
            self._g.attrs[k] = _attr(v)
        self._f.flush()

    # --------------------------------------------------------------- creation
    def _open(self, overwrite: bool) -> None:
        try:
            self._open_file(overwrite)
        except OSError as exc:  # locked by another process, a killed writer's flag, no permission...
            if isinstance(exc, FileExistsError):
                raise
            raise ParameterError("path", f"cannot open {self.path} for writing ({exc})") from None

    def _open_file(self, overwrite: bool) -> None:
        exists = self.path.exists()
        if self.group == "/":
            if exists and not overwrite:
                raise FileExistsError(f"{self.path} exists (pass overwrite=True to replace it)")
            self._f = h5py.File(self.path, "w", libver=LIBVER)
            self._g = self._f
            return
        self._f = h5py.File(self.path, "a" if exists else "w", libver=LIBVER)
        if self.group in self._f:
            if not overwrite:
                self._f.close()
                raise FileExistsError(f"{self.path} already holds a group {self.group!r} (pass overwrite=True)")
            del self._f[self.group]
        self._g = self._f.require_group(self.group)

    def _scale(self, dim: str, size: int) -> h5py.Dataset:
        if dim in self._g:
            ds = self._g[dim]
            if ds.shape != (size,):
                raise ValueError(f"dimension {dim!r} has size {ds.shape[0]} but another dataset needs {size}")
            return ds
        values = self.coords.get(dim, np.arange(size))
        if values.shape != (size,):
            raise ValueError(f"coordinates of {dim!r} have shape {values.shape}, need ({size},)")
        ds = self._g.create_dataset(dim, data=values)
        ds.make_scale(dim)
        return ds

    def _create(self, name: str, frame: np.ndarray, dims: tuple[str, ...], t_scale) -> None:
        if name in self._g:
            raise ValueError(f"dataset name {name!r} is taken (a dimension or another dataset)")
        if len(dims) != frame.ndim:
            raise ValueError(f"{name!r} has {frame.ndim} axes per save but dims {dims}")
        if frame.dtype.kind == "f":
            dtype, fill = self.dtype, np.nan
        elif frame.dtype.kind == "b":
            dtype, fill = np.dtype(np.int8), -1
        elif frame.dtype.kind in "iu":
            dtype, fill = frame.dtype, -1 if frame.dtype.kind == "i" else 0
        else:
            raise TypeError(f"cannot store {name!r} of dtype {frame.dtype}")
        chunks = _chunks(frame.shape, dtype.itemsize)
        filters = {}
        if chunks[0] == 1:  # a chunk that spans saves would be recompressed at each of them
            if self.compression == "gzip":
                filters = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
            elif self.compression == "lzf":
                filters = {"compression": "lzf", "shuffle": True}
        ds = self._g.create_dataset(
            name,
            shape=(0, *frame.shape),
            maxshape=(None, *frame.shape),
            chunks=chunks,
            dtype=dtype,
            fillvalue=fill,
            **filters,
        )
        ds.dims[0].attach_scale(t_scale)
        for ax, dim in enumerate(dims, start=1):
            ds.dims[ax].attach_scale(self._scale(dim, frame.shape[ax - 1]))
        self._datasets[name] = ds

    def _start(self, x, observables: Mapping[str, np.ndarray]) -> None:
        t = self._g.create_dataset("t", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float64)
        t.make_scale("t")
        t.attrs["long_name"] = "time"
        if x is not None:
            self._create(self.state_name, np.asarray(x), self.state_dims, t)
        for name, v in observables.items():
            v = np.asarray(v)
            default = (("batch",) + tuple(f"{name}_{k}" for k in range(1, v.ndim)))[: v.ndim]
            self._create(name, v, self.obs_dims.get(name, default), t)
        self._datasets["t"] = t
        if self._exits is not None:
            exited, exit_time = self._exits
            for name, v in (("exited", exited), ("exit_time", exit_time)):
                if name in self._g:
                    raise ValueError(f"dataset name {name!r} is taken (a dimension or an observable)")
                ds = self._g.create_dataset(name, data=v)
                ds.dims[0].attach_scale(self._scale("batch", v.shape[0]))
        # Everything is created (SWMR forbids new objects and attributes from here on).
        self._f.flush()
        self._f.swmr_mode = True

    # --------------------------------------------------------------- streaming
    def append(self, t: float, x, observables: Mapping[str, np.ndarray]) -> None:
        """Write one save: time ``t``, state ``x`` (or None) and the observables, then flush."""
        if self.closed:
            raise RuntimeError("the writer is closed")
        if self.n_saved == 0:
            self._start(x, observables)
        k = self.n_saved
        frames = dict(observables)
        if x is not None:
            frames[self.state_name] = x
        if set(frames) != set(self._datasets) - {"t"}:
            raise ValueError(f"save {k} writes {sorted(frames)} but the run holds {sorted(set(self._datasets) - {'t'})}")
        for name, v in frames.items():
            ds = self._datasets[name]
            ds.resize(k + 1, axis=0)
            ds[k] = np.asarray(v)
        if self._exits is not None and k > 0:
            self._g["exited"][...] = self._exits[0]
            self._g["exit_time"][...] = self._exits[1]
        t_ds = self._datasets["t"]  # last: len(t) counts the complete frames
        t_ds.resize(k + 1, axis=0)
        t_ds[k] = float(t)
        self._f.flush()
        self.n_saved = k + 1

    def set_exits(self, exited: np.ndarray, exit_time: np.ndarray) -> None:
        """The per-path exits ((batch,) bool and float, NaN: never) to store with the next save."""
        self._exits = (np.asarray(exited, dtype=bool), np.asarray(exit_time, dtype=np.float64))

    def close(self, status: str = "complete", stats: Mapping[str, Any] | None = None) -> None:
        """Finish the run: record ``status`` ("complete", "interrupted", "failed: ...") and ``stats``."""
        if self.closed:
            return
        self.closed = True
        self._f.close()  # ends SWMR mode; attributes can be written again after reopening
        with h5py.File(self.path, "r+", libver=LIBVER) as f:
            g = f[self.group]
            g.attrs["status"] = str(status)
            g.attrs["completed"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            g.attrs["n_saved"] = self.n_saved
            for k, v in (stats or {}).items():
                g.attrs[k if k not in _RESERVED else f"stat_{k}"] = _attr(v)

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("complete")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close(f"failed: {exc_type.__name__}: {exc}")
