"""A newcomer's first hour (issue 12, points 4-8): honest help, study sizes and overwrites, the numba
notice and warm-up, --version and the ``attnflow`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "studies.cli"]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def _help_text(capsys, *args: str) -> str:
    from studies.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(list(args) + ["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare word streams


# ----------------------------------------------------------------------------- help (point 4)
def test_method_help_tells_each_family_its_own_default(capsys, tmp_path):
    from integrators import get_stepper

    flow = _help_text(capsys, "simulate", "sa")
    assert "rk4 (the default)" in flow and "stratonovich-heun (the default)" in flow
    cov = _help_text(capsys, "simulate", "shaped-block")
    assert "euler-maruyama (the default)" in cov and "stratonovich-heun is refused" in cov
    assert "stratonovich-heun (the default)" not in cov
    # what the help says is what the code does: the Stratonovich stepper is refused for an Ito model
    res = _cli("simulate", "shaped-block", "--method", "stratonovich-heun", "--t-end", "0.1", "--dt", "0.01",
               "--out", str(tmp_path / "x.h5"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "method" in res.stderr
    assert get_stepper("stratonovich-heun").calculus == "stratonovich"


def test_study_help_is_for_users(capsys):
    text = _help_text(capsys, "study")
    for developer_text in (":data:", "Adding a study", "run(out, size"):
        assert developer_text not in text
    assert "about a minute" not in text and "about 3 minutes" in text  # the measured time of `study default`
    assert "smoke (seconds), default (minutes) or full" in text
    assert "(the default)" not in text.split("--size")[1].split("--out")[0]
    import argparse

    from studies.study_common import add_study_options

    p = argparse.ArgumentParser()
    add_study_options(p)
    for action in p._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def test_readme_points_to_the_models_text_where_it_is():
    readme = (ROOT / "README.md").read_text()
    assert "shared/spec/MODELS.md" not in readme or "not in this repository" in readme
    assert "Python >= 3.11" in readme or "Python 3.11" in readme


def test_benchmark_docstrings_cite_no_issue_numbers():
    import re

    for path in (ROOT / "studies" / "benchmarks").glob("*.py"):
        assert not re.search(r"[Ii]ssue\s*#?\d", path.read_text()), path.name


# ------------------------------------------------------------------------ studies (point 5)
def test_study_list_shows_every_size_with_a_time():
    from studies.cli_study import STUDIES

    res = _cli("study", "list")
    assert res.returncode == 0, res.stderr
    for name, entry in STUDIES.items():
        block = res.stdout.split(f"\n{name} ", 1)[1].split("\n")[1]
        for size in entry.seconds:
            assert f"{size} about" in block, (name, block)
        assert ("estimate" in block) == (set(entry.seconds) != set(entry.measured))


def test_long_full_size_needs_size_full(tmp_path):
    from studies.cli_study import LONG_S, STUDIES

    long_ones = [n for n, e in STUDIES.items() if e.default_size == "full" and e.seconds["full"] > LONG_S]
    assert "collapse" in long_ones
    res = _cli("study", "collapse", "--out", str(tmp_path / "c"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--size full" in res.stderr
    assert not (tmp_path / "c").exists()  # refused before anything ran


def test_phase_diagram_file_names_do_not_depend_on_the_size():
    from studies.study_phase_diagram import spec_for

    for size in ("smoke", "default", "full"):
        assert spec_for(size).name == "phase_diagram"
        assert spec_for(size, "default").name == "default"


def test_study_refuses_to_overwrite_and_uses_one_file_name(tmp_path):
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "default.h5").is_file() and (tmp_path / "default.png").is_file()
    assert not (tmp_path / "phase_diagram.h5").exists()  # the smoke size writes the full size's name
    before = (tmp_path / "default.h5").stat().st_mtime_ns
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--overwrite" in res.stderr
    assert (tmp_path / "default.h5").stat().st_mtime_ns == before
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress", "--overwrite")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "default.h5").stat().st_mtime_ns != before
