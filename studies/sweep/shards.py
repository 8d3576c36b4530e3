"""The sweep store: one directory, one HDF5 shard per task, written atomically.

Layout of an output directory::

    OUT/spec.toml                 the spec the store was last run with
    OUT/shards/ab/<task_id>.h5    one shard per finished task (complete or failed)
    OUT/logs/ab/<task_id>.log     per-task log (appended by every attempt)
    OUT/running/<task_id>.json    marker while a task runs (host, pid, progress)
    OUT/<name>.h5                 the merged study file (``attnflow sweep merge``)

A shard is written to a temporary file in its final directory, flushed,
``fsync``-ed and renamed over the final name (``os.replace``, atomic on POSIX):
a shard either exists complete or not at all, whatever kills the writer (and,
the data being on disk before the rename, whatever crashes the machine). The
directory itself is not ``fsync``-ed per shard (it costs more than the rest of
the write on network and virtual disks): after a power loss a just-renamed
shard may be missing, never partial, and ``--resume`` recomputes it.
Temporary files start with ``.`` and end in ``.tmp``; readers ignore them.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from studies.provenance import hostname, provenance

__all__ = ["Store", "Shard", "write_shard", "read_shard", "atomic_write_text", "SHARD_FORMAT"]

SHARD_FORMAT = "attnflow-shard/1"
# Measurements above this size are chunked and compressed; small ones are stored contiguous.
_COMPRESS_BYTES = 1 << 16


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{hostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write_text(path: Path, text: str, sync: bool = False) -> None:
    """Write a small text file by temporary file + rename."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_shard(path: Path, attrs: dict[str, Any], measurements: dict[str, np.ndarray] | None) -> None:
    """Write a shard atomically: temporary file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = SHARD_FORMAT
            for k, v in {**provenance(), **attrs}.items():
                f.attrs[k] = "" if v is None else v
            g = f.create_group("measurements")
            for name, arr in (measurements or {}).items():
                if arr.nbytes > _COMPRESS_BYTES:
                    g.create_dataset(name, data=arr, chunks=True, compression="gzip", compression_opts=4, shuffle=True)
                else:
                    g.create_dataset(name, data=arr)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class Shard:
    """What a shard file holds: its attributes and (optionally) the measurements."""

    attrs: dict[str, Any]
    measurements: dict[str, np.ndarray] | None

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", ""))


def _py(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_shard(path: Path, measurements: bool = True) -> Shard | None:
    """Read a shard; None if it does not exist or cannot be read."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _py(v) for k, v in f.attrs.items()}
            data = None
            if measurements:
                g = f.get("measurements")
                data = {k: g[k][()] for k in g} if g is not None else {}
    except (OSError, KeyError):
        return None
    return Shard(attrs, data)


class Store:
    """Paths and bookkeeping of one sweep output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def prepare(self, spec_text: str | None) -> None:
        for sub in ("shards", "logs", "running"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if spec_text is not None:
            atomic_write_text(self.root / "spec.toml", spec_text)

    def shard_path(self, tid: str) -> Path:
        return self.root / "shards" / tid[:2] / f"{tid}.h5"

    def log_path(self, tid: str) -> Path:
        return self.root / "logs" / tid[:2] / f"{tid}.log"

    def marker_path(self, tid: str) -> Path:
        return self.root / "running" / f"{tid}.json"

    # ------------------------------------------------------------- running markers
    def mark_running(self, tid: str, info: dict[str, Any]) -> None:
        p = self.marker_path(tid)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, json.dumps({"host": hostname(), "pid": os.getpid(), "time": time.time(), **info}))

    def clear_running(self, tid: str) -> None:
        try:
            self.marker_path(tid).unlink()
        except FileNotFoundError:
            pass

    def shard_ids(self) -> set[str]:
        """Ids of the tasks that have a shard file, from one listing per shard directory (no stat per task)."""
        ids: set[str] = set()
        try:
            subdirs = [e.path for e in os.scandir(self.root / "shards") if e.is_dir()]
        except FileNotFoundError:
            return ids
        for d in subdirs:
            with os.scandir(d) as it:
                ids.update(e.name[:-3] for e in it if e.name.endswith(".h5") and not e.name.startswith("."))
        return ids

    def running_ids(self) -> set[str]:
        """Ids of the tasks that have a running marker."""
        try:
            with os.scandir(self.root / "running") as it:
                return {e.name[:-5] for e in it if e.name.endswith(".json") and not e.name.startswith(".")}
        except FileNotFoundError:
            return set()

    def running_info(self, tid: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.marker_path(tid).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def temporaries(self) -> list[Path]:
        """Leftover temporary files (from writers that were killed)."""
        return sorted(self.root.glob("shards/*/.*.tmp"))

    def remove_dead_temporaries(self) -> int:
        """Remove temporaries written by processes of this host that no longer exist."""
        removed = 0
        host = hostname()
        for p in self.temporaries():
            parts = p.name.split(".")
            # .<tid>.h5.<host>.<pid>.<rand>.tmp
            try:
                pid = int(parts[-3])
                owner = ".".join(parts[3:-3])
            except (ValueError, IndexError):
                continue
            if owner == host and not pid_alive(pid):
                p.unlink(missing_ok=True)
                removed += 1
        return removed


def pid_alive(pid: int) -> bool:
    """Whether a live (not zombie) process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a killed process whose parent died too stays a zombie until init reaps it
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
