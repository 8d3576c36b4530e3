"""Blown-up SDE paths are identified in the run file and left out of every summary (issue 10, item 2).

Shaped block with gamma = 1 and tau0 = 0.5 from V0 = 2 I + 0.5: the cubic attention drift
blows a fraction of the paths up within T = 1 (tests/test_cov_fused.py uses the same case).
Before, only the count ``n_exited`` was stored and the blown-up paths stayed in ``V``
frozen at values up to 1e279 beside normal ones.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from studies.store import open_xarray, read_run, summarize

BATCH = 120


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "studies.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def blowup_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("exits")
    np.save(d / "v0.npy", 2.0 * np.eye(3) + 0.5)
    out = d / "run.h5"
    r = _cli("simulate", "shaped-block", "--gamma", "1", "--tau0", "0.5", "--v0", "v0.npy", "--batch", str(BATCH),
             "--t-end", "1", "--dt", "0.01", "--n-saves", "21", "--exit-threshold", "1e4",
             "--observables", "trace", "--seed", "3", "--out", str(out), cwd=d)  # fmt: skip
    return r, out


def test_file_holds_exits_per_path_and_masks_states_after_them(blowup_run):
    r, out = blowup_run
    assert r.returncode == 0, r.stderr
    run = read_run(out)
    assert run.status == "complete" and run.attrs["exit_threshold"] == 1e4
    k = run.n_exited
    assert 0 < k < BATCH and run.attrs["n_exited"] == k
    assert run.exited.shape == run.exit_time.shape == (BATCH,) and run.exited.dtype == bool
    assert np.all(np.isnan(run.exit_time[~run.exited])) and np.all(run.exit_time[run.exited] > 0)
    V, obs = run.state, run.observables["trace"]
    for b in range(BATCH):
        after = run.t >= run.exit_time[b] if run.exited[b] else np.zeros(len(run.t), dtype=bool)
        assert np.all(np.isnan(V[after, b])) and np.all(np.isnan(obs[after, b])), b
        assert np.all(np.isfinite(V[~after, b])) and np.all(np.isfinite(obs[~after, b])), b
        assert np.all(np.abs(V[~after, b]) <= 1e4), b  # nothing beyond the threshold is stored
    with open_xarray(out) as ds:
        assert ds["exited"].dims == ("batch",) and ds["exit_time"].dims == ("batch",)
        assert int(ds["exited"].sum()) == k


def test_summaries_cover_the_surviving_paths(blowup_run):
    r, out = blowup_run
    run = read_run(out)
    k, keep = run.n_exited, run.surviving()
    assert f"exited={k}/{BATCH}" in r.stdout and "mean over the surviving paths" in r.stdout
    mean = np.mean(run.observables["trace"][-1][keep])
    assert f"trace={mean:.6g}" in r.stdout
    text = summarize(out)
    assert f"exited      {k} of {BATCH} paths" in text
    assert f"over the {BATCH - k} surviving of {BATCH} systems" in text
    line = next(li for li in text.split("final values", 1)[1].splitlines() if "trace" in li)
    assert f"mean {mean:.6g}" in line


def test_covariance_runs_exit_at_1e6_by_default_and_off_disables_it(tmp_path):
    common = ("simulate", "shaped-mlp", "--m", "3", "--batch", "2", "--t-end", "0.1", "--dt", "0.05")
    assert _cli(*common, "--out", "a.h5", cwd=tmp_path).returncode == 0
    assert read_run(tmp_path / "a.h5").attrs["exit_threshold"] == 1e6
    assert _cli(*common, "--exit-threshold", "off", "--out", "b.h5", cwd=tmp_path).returncode == 0
    assert read_run(tmp_path / "b.h5").attrs["exit_threshold"] == "off"
    assert _cli("simulate", "sa", "--n", "4", "--t-end", "0.1", "--dt", "0.05", "--out", "c.h5", cwd=tmp_path).returncode == 0
    assert read_run(tmp_path / "c.h5").attrs["exit_threshold"] == "off"  # the flow: off unless asked
    bad = _cli(*common, "--exit-threshold", "-1", "--out", "d.h5", cwd=tmp_path)
    assert bad.returncode == 2 and "exit-threshold" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_every_path_exited_fails_the_run(tmp_path):
    # V0 has entries 1 > 1e-3: every path is beyond the threshold from the start
    r = _cli("simulate", "shaped-mlp", "--m", "3", "--batch", "4", "--t-end", "0.2", "--dt", "0.05",
             "--exit-threshold", "1e-3", "--out", "all.h5", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1
    errors = [li for li in r.stderr.splitlines() if "error" in li]
    assert len(errors) == 1 and errors[0].startswith("attnflow simulate: error: run failed: every path exited")
    run = read_run(tmp_path / "all.h5")
    assert run.status.startswith("failed: every path exited by t=0 ") and run.exited.all()
    with h5py.File(tmp_path / "all.h5", "r") as f:
        assert np.all(np.isnan(f["V"][()])) and f["t"][()].tolist() == [0.0]  # stopped at the save that found it
        assert f.attrs["n_steps"] == 0
