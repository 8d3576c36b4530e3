"""Flow studies: the theory curves, the tasks against them, and each study's --smoke run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from particles.sphere.flow_theory import (
    equiangular_hitting_time,
    equiangular_rhs,
    equiangular_solution,
    two_cluster_merge_time,
    two_cluster_rhs,
)
from studies.sweep.tasks import get_task

CLI = [sys.executable, "-m", "studies.cli"]


def test_equiangular_ode_closed_form_and_fixed_points():
    t = np.linspace(0.0, 4.0, 41)
    n = 7
    exact = (np.exp(2 * t) - 1) / (np.exp(2 * t) + n - 1)  # beta = 0, g(0) = 0 (MODELS.md section 1)
    assert np.max(np.abs(equiangular_solution(t, 0.0, n) - exact)) < 1e-8
    simplex = -1.0 / (n - 1)
    assert np.allclose(equiangular_solution(t, 3.0, n, g0=simplex), simplex, atol=1e-12)
    # the rhs is the overflow-safe form of GLPR eq. 6.9
    g, beta = np.linspace(-0.1, 0.9, 11), 2.5
    direct = 2 * np.exp(beta * g) * (1 - g) * ((n - 1) * g + 1) / (np.exp(beta) + (n - 1) * np.exp(beta * g))
    assert np.allclose(equiangular_rhs(g, beta, n), direct, rtol=1e-13)
    ts = equiangular_hitting_time(beta, n, 1e-3)
    assert abs(equiangular_solution([ts], beta, n)[0] - (1 - 1e-3)) < 1e-8
    assert equiangular_hitting_time(600.0, 32, 1e-3) > 1e200  # no overflow at huge beta


def test_two_cluster_ode_limits():
    rho, beta = np.linspace(-0.9, 0.99, 9), 3.0
    two = 2 * (1 - rho**2) / (1 + np.exp(beta * (1 - rho)))  # two particles (MODELS.md section 1)
    assert np.allclose(two_cluster_rhs(rho, beta, 1, 1), two, rtol=1e-13)
    # log merge time is asymptotically linear in beta with slope 1 - rho0 (after removing the 1/beta prefactor)
    rho0 = 0.5
    b1, b2 = 40.0, 50.0
    t1, t2 = (two_cluster_merge_time(b, 8, 24, rho0) for b in (b1, b2))
    slope = (np.log(b2 * t2) - np.log(b1 * t1)) / (b2 - b1)
    assert abs(slope - (1 - rho0)) < 0.01


def test_two_caps_task_matches_the_ode():
    task = get_task("flow.two_caps")
    p = task.check_params({"beta": 5.0, "m1": 6, "m2": 10, "batch": 3, "cap": 0.005, "n_save": 801}, {})
    out = task(p, 7)
    assert np.all(np.abs(out["merge_time"] / out["merge_time_theory"] - 1) < 0.02)


def test_high_dim_task_tracks_the_ode():
    task = get_task("flow.high_dim")
    p = task.check_params({"d": 512, "batch": 2, "t_end": 5.0, "n_save": 6, "backend": "numpy"}, {})
    out = task(p, 3)
    assert abs(out["ip_std"][0] * np.sqrt(512) - 1) < 0.1  # uniform start: <x_i, x_j> ~ N(0, 1/d)
    # Thm 6.9: the inner products follow g(t) up to O(d^{-1/2}) (3 sd of one pair at d = 512 is 0.13)
    assert np.max(np.abs(out["ip_mean"] - out["g_theory"])) < 3 / np.sqrt(512)
    assert out["hist"].shape == (6, 80) and np.allclose(out["hist"].sum(axis=1) * 2 / 80, 1.0)


@pytest.mark.parametrize("study", ["phase-diagram", "metastability", "collapse", "high-dim"])
def test_study_smoke_writes_hdf5_and_figure(tmp_path, study):
    res = subprocess.run(CLI + ["study", study, "--smoke", "--out", str(tmp_path), "--workers", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    h5s = [line.split(": ", 1)[1] for line in res.stdout.splitlines() if line.startswith("hdf5: ")]
    figs = [line.split(": ", 1)[1] for line in res.stdout.splitlines() if line.startswith("figure: ")]
    assert h5s and figs
    for h in h5s:
        with h5py.File(h) as f:
            assert f.attrs["completion_status"] == "complete"
            assert json.loads(f.attrs["parameters"])["task"].startswith("flow.")
    for fig in figs:
        with open(fig, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_default_study_end_to_end(tmp_path):
    """The README's main command (about a minute on 2 cores)."""
    xr = pytest.importorskip("xarray")
    res = subprocess.run(CLI + ["study", "default", "--out", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(tmp_path / "default.h5", engine="h5netcdf") as ds:
        assert ds["P"].dims == ("d", "beta", "seed", "t")
        P = ds["P"].mean("seed")
        # below the ODE boundary the system has collapsed, far above it almost no pair has merged
        assert float(P.sel(d=32, beta=0.25).isel(t=-1)) == 1.0
        assert float(P.sel(d=32, beta=9.0).isel(t=-1)) < 0.2
    assert (tmp_path / "default.png").stat().st_size > 20_000
