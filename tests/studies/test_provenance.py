"""Provenance: the commit recorded in every shard, study file and run file is this checkout's HEAD."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_git_commit_is_this_checkouts_head():
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    from studies.provenance import git_commit, provenance

    assert git_commit().removesuffix("-dirty") == head
    assert provenance()["git_commit"] == git_commit()
