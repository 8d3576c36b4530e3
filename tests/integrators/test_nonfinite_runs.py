"""Runs that overflow are reported as failed, never stored as complete (issue 10, item 1).

USA at beta = 800 overflows exp(beta <x_i, x_j>) in the first step: every state goes
non-finite. Before, the file said ``status = "complete"``, the CLI exited 0 and
``attnflow info`` printed fraction_close = -0.03 and cluster_count = 32 from NaN states.
"""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from integrators import solve
from integrators.exits import PathExits
from particles import SelfAttention, uniform_sphere
from particles.covariance.models import ShapedBlockSDE
from studies.store import read_run

N = 8


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "studies.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120)  # fmt: skip


def test_overflowing_flow_fails_with_one_line_and_sane_info(tmp_path):
    out = tmp_path / "usa.h5"
    r = _cli("simulate", "usa", "--beta", "800", "--n", str(N), "--batch", "3", "--t-end", "0.2", "--dt", "0.01",
             "--n-saves", "5", "--out", str(out), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "non-finite state at t=" in errors[0] and "Traceback" not in r.stderr
    run = read_run(out)
    assert run.status.startswith("failed: non-finite state at t=")
    # the run stopped at the save that found it, and says which paths and when
    assert run.exited.all() and np.all(run.exit_time == run.t[-1]) and len(run.t) == 2
    assert np.all(np.isfinite(run.state[0])) and np.all(np.isnan(run.state[-1]))
    # no impossible observable: missing (NaN, or -1 for the integer count) or a possible value
    frac, count = run.observables["fraction_close"], run.observables["cluster_count"]
    assert np.all(np.isnan(frac[-1])) and np.all(count[-1] == -1)
    assert np.all((frac[0] >= 0) & (frac[0] <= 1)) and np.all((count[0] >= 1) & (count[0] <= N))
    info = _cli("info", str(out), cwd=tmp_path)
    assert info.returncode == 0
    assert "status: failed: non-finite state" in info.stdout and "exited      3 of 3 paths" in info.stdout
    finals = info.stdout.split("final values", 1)[1].splitlines()
    for name in ("fraction_close", "cluster_count", "min_inner_product"):
        line = next(li for li in finals if li.strip().startswith(name))
        assert "(no surviving system)" in line, line


def test_solve_reports_an_ode_gone_non_finite():
    x0 = uniform_sphere(2, N, 3, seed=0)
    with pytest.warns(RuntimeWarning, match="solve: failed: non-finite state"):
        sol = solve(SelfAttention(beta=800.0, normalization="usa"), x0, 1.0, dt=0.01, save_at=11,
                    observables=["fraction_close", "cluster_count"])  # fmt: skip
    assert sol.status.startswith("failed: non-finite state at t=0.1")
    assert sol.exited.all() and np.all(sol.exit_time == 0.1)
    assert sol.t.tolist() == [0.0, 0.1] and np.all(np.isnan(sol.x[-1])) and np.array_equal(sol.x[0], x0)
    assert np.all(np.isnan(sol.observables["fraction_close"][-1])) and np.all(sol.observables["cluster_count"][-1] == -1)


def test_a_finite_run_is_complete_and_unmasked():
    x0 = uniform_sphere(2, N, 3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = solve(SelfAttention(beta=2.0), x0, 1.0, dt=0.05, save_at=3, observables=["cluster_count"])
    assert sol.status == "complete" and not sol.exited.any() and np.all(np.isnan(sol.exit_time))
    assert np.all(np.isfinite(sol.x)) and sol.observables["cluster_count"].dtype.kind == "i"


def _blowups(backend):
    # gamma = 1 and a small tau0: the cubic attention drift blows some paths up within T = 1
    model = ShapedBlockSDE(gamma=1.0, tau0=0.5)
    V0 = np.repeat((2.0 * np.eye(3) + 0.5)[None], 64, axis=0)
    return solve(model, V0, 1.0, dt=0.01, method="euler-maruyama", backend=backend, seed=5, save_at=11,
                 exit_threshold=1e4)  # fmt: skip


def test_torch_exits_on_the_device_match_numpy_and_are_read_only_at_saves(monkeypatch):
    from integrators.backends import TorchBackend

    reads = []
    original = PathExits.read
    monkeypatch.setattr(PathExits, "read", lambda self: reads.append(1) or original(self))
    ref = _blowups("numpy")
    n_ref = len(reads)
    reads.clear()
    dev = _blowups(TorchBackend(fused=False))  # the generic step with the PathExits check per step
    assert 0 < ref.exited.sum() < ref.exited.size
    assert np.array_equal(dev.exited, ref.exited)
    np.testing.assert_allclose(dev.exit_time[dev.exited], ref.exit_time[ref.exited], rtol=0, atol=1e-12)
    # 100 steps, 11 saves: one read per save and one at the end, none per step
    assert len(reads) == n_ref == 12
    fused = _blowups("torch")  # the fused torch step returns its flags on the device too
    assert np.array_equal(fused.exited, ref.exited)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bad_paths_are_the_non_finite_and_the_large_ones(kind):
    """PathExits.bad: NaN, +inf and -inf anywhere in a path; with a threshold, |entry| above it
    on either side; the empty state has no bad path. Same answer on numpy and torch."""
    import torch

    class _Backend:
        name = kind
        device = "cpu"

    x = np.zeros((6, 3, 2))
    x[1, 0, 0] = np.nan
    x[2, 1, 1] = -np.inf
    x[3, 2, 0] = -11.0
    x[4, 0, 1] = np.inf
    x[5, 2, 1] = 10.0  # at the threshold: not above it
    arr = torch.from_numpy(x) if kind == "torch" else x

    def bad(threshold, a):
        return np.asarray(PathExits(_Backend, a.shape[0], threshold).bad(a)).tolist()

    assert bad(None, arr) == [False, True, True, False, True, False]
    assert bad(10.0, arr) == [False, True, True, True, True, False]
    empty = torch.zeros((4, 0)) if kind == "torch" else np.zeros((4, 0))
    assert bad(None, empty) == [False] * 4
