"""Provenance recorded with every shard, study file and run file (MODELS.md section 4).

Package version, git commit of the source tree, host, process id and UTC
timestamps. The git commit is looked up once per process and is ``"unknown"``
outside a git checkout (an installed wheel, a copied tree).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import socket
import subprocess
from pathlib import Path

__all__ = ["package_version", "git_commit", "utc_now", "hostname", "provenance"]


@functools.cache
def package_version() -> str:
    """Installed version of the ``attnflow`` distribution ("unknown" if not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnflow")
    except PackageNotFoundError:
        return "unknown"


@functools.cache
def git_commit() -> str:
    """Commit hash of the source tree this package runs from, with ``-dirty`` if modified."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.cache
def hostname() -> str:
    return socket.gethostname()


def provenance() -> dict[str, str | int]:
    """Attributes every file carries: version, commit, host, pid, creation time."""
    return {
        "package_version": package_version(),
        "git_commit": git_commit(),
        "host": hostname(),
        "pid": os.getpid(),
        "created": utc_now(),
    }
