"""An exclusive lock on a sweep output directory: one coordinator writes there at a time.

``OUT/sweep.lock`` is held with ``flock`` for as long as ``run_sweep`` runs and
names its holder (pid, host, start time). The kernel drops the lock when the
holder dies, however it dies, so a lock left by a killed run is taken over by
the next one (the file then still names the dead pid, which is logged). Where
``flock`` is not supported (some network file systems) the file's pid is
checked instead: a lock from a dead pid on this host is taken over.

``--task-index`` runs (scheduler array jobs, many at once on one directory)
take the lock shared: they exclude a full run, not each other.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from studies.errors import SweepError

from studies.provenance import hostname, utc_now
from .shards import pid_alive

__all__ = ["SweepLock", "LOCK_NAME"]

LOCK_NAME = "sweep.lock"


def _describe(holder: dict | None) -> str:
    if not holder:
        return "array-job runs (--task-index) of this sweep"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"


class SweepLock:
    """``with SweepLock(root):`` -- raises ``LockedError`` naming the holder if another run holds it."""

    def __init__(self, root: str | Path, shared: bool = False):
        self.path = Path(root) / LOCK_NAME
        self.shared = shared
        self.took_over: dict | None = None  # the dead holder whose lock was taken over
        self._fd: int | None = None

    def _read(self) -> dict | None:
        try:
            text = os.pread(self._fd, 4096, 0).decode()
            holder = json.loads(text) if text.strip() else None
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> "SweepLock":

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flocked = True
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read()
            self._close()
            raise SweepError(f"{self.path.parent} is locked by {_describe(holder)}: another `sweep run` is writing "
                             f"there (lock file {self.path}); wait for it to finish or stop it") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                self._close()
                raise
            flocked = False  # no flock here: fall back on the recorded pid
        holder = self._read()
        if holder and holder.get("pid") != os.getpid():
            same_host = holder.get("host") == hostname()
            if not flocked and (not same_host or pid_alive(int(holder.get("pid", -1)))):
                self._close()
                raise SweepError(f"{self.path.parent} is locked by {_describe(holder)} (lock file {self.path}); "
                                 "wait for it to finish or stop it")
            self.took_over = holder  # its holder died without releasing it
            if self.shared:
                os.ftruncate(self._fd, 0)  # it names nobody now
        if not self.shared:
            text = json.dumps({"pid": os.getpid(), "host": hostname(), "started": utc_now(), "time": time.time()})
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
            os.fsync(self._fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if not self.shared:
            try:
                os.ftruncate(self._fd, 0)  # an empty lock file names no holder
            except OSError:
                pass
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
