"""The smaller items of issue 10: each bad input gets a one-line error, each run the correct record."""

import os
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

import integrators.memory as memory
from integrators import solve
from particles import SelfAttention, uniform_sphere
from particles.covariance.models import ShapedMLPSDE
from integrators.validation import ParameterError
from studies.store import RunWriter, read_run


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "studies.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=120)  # fmt: skip


def _one_line_error(r, name):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and name in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_empty_batch_names_x0():
    with pytest.raises(ParameterError, match="x0.*empty"):
        solve(SelfAttention(), np.zeros((0, 8, 3)), 1.0, dt=0.1)
    with pytest.raises(ParameterError, match="x0.*empty"):
        solve(ShapedMLPSDE(0.0, -1.0), np.zeros((0, 3, 3)), 1.0, dt=0.1, method="euler-maruyama", seed=1)


def test_empty_init_file_is_refused(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 8, 3)))
    _one_line_error(_cli("simulate", "sa", "--init-file", "e.npy", "--out", "e.h5", cwd=tmp_path), "init-file")


def test_too_many_tokens_is_a_size_check_not_an_allocation(tmp_path):
    # 10^11 tokens: terabytes, refused before the initial state is drawn
    _one_line_error(_cli("simulate", "sa", "--n", str(10**11), "--out", "big.h5", cwd=tmp_path), "'n'")
    assert not (tmp_path / "big.h5").exists()


def test_pairwise_observables_too_large_are_refused_before_the_run(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    x0 = uniform_sphere(1, 400, 3, seed=0)  # 400 x 400 Gram matrices: ~4 MB per save > 1 MB
    with pytest.raises(ParameterError, match="observables.*pairwise"):
        solve(SelfAttention(), x0, 0.1, dt=0.05, observables=["cluster_count"])
    sol = solve(SelfAttention(), x0, 0.1, dt=0.05, save_states=False)  # the state alone fits
    assert sol.status == "complete"


def test_complex_npy_is_refused(tmp_path):
    x = uniform_sphere(1, 4, 3, seed=0).astype(complex)
    np.save(tmp_path / "c.npy", x)
    _one_line_error(_cli("simulate", "sa", "--init-file", "c.npy", "--out", "c.h5", cwd=tmp_path), "complex")


def test_dt_longer_than_the_run_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="'dt'"):
        solve(SelfAttention(), uniform_sphere(1, 4, 3, seed=0), 1.0, dt=5.0)
    r = _cli("simulate", "sa", "--n", "4", "--dt", "5", "--t-end", "1", "--out", "d.h5", cwd=tmp_path)
    assert r.returncode == 2 and "error: invalid parameter 'dt'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d.h5").exists()


def test_steps_shortened_to_land_on_saves_are_recorded(tmp_path):
    # dt = 0.5 with saves every 0.1: the driver takes steps of 0.1; the record says so
    r = _cli("simulate", "sa", "--n", "4", "--dt", "0.5", "--t-end", "1", "--n-saves", "11", "--out", "s.h5",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    a = read_run(tmp_path / "s.h5").attrs
    assert a["dt"] == 0.5 and a["max_step"] == pytest.approx(0.1) and a["n_steps"] == 10
    assert "steps of at most 0.1" in r.stdout


def test_malformed_params_json_gives_one_line_in_plot(tmp_path):
    path = tmp_path / "run.h5"
    assert _cli("simulate", "sa", "--n", "4", "--t-end", "0.1", "--dt", "0.05", "--out", "run.h5", cwd=tmp_path).returncode == 0
    with h5py.File(path, "r+") as f:
        f.attrs["params_json"] = '{"beta": 1.0,'  # forged: cut short
    _one_line_error(_cli("plot", "run.h5", "--out", "run.png", cwd=tmp_path), "params_json")
    info = _cli("info", "run.h5", cwd=tmp_path)
    assert info.returncode == 0 and "params_json unreadable" in info.stdout


def test_info_into_a_closed_pipe_is_quiet(tmp_path):
    assert _cli("simulate", "sa", "--n", "4", "--t-end", "0.1", "--dt", "0.05", "--out", "run.h5", cwd=tmp_path).returncode == 0
    # the reader is gone before the first write, as after `| head -1` on a long output
    p = subprocess.Popen([sys.executable, "-m", "studies.cli", "info", "run.h5"], cwd=tmp_path, env=os.environ.copy(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=60)
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert p.returncode == 141


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streamed_states_are_not_kept_in_memory(tmp_path):
    model = SelfAttention(beta=1.0)
    x0 = uniform_sphere(2000, 4, 3, seed=0)  # 192 kB per save, tiny n x n blocks
    ts = np.linspace(0, 0.59, 60)
    retained = len(ts) * x0.nbytes  # 11.5 MB
    w = RunWriter(tmp_path / "m.h5", model=model, method="euler", dt=0.01, backend="numpy", compression="none")
    sol, peak = _peak(lambda: solve(model, x0, 0.59, dt=0.01, method="euler", save_at=ts, writer=w))
    assert sol.x is None and sol.last.shape == x0.shape
    run = read_run(tmp_path / "m.h5")
    assert run.state.shape == (len(ts), *x0.shape) and np.array_equal(run.state[-1], sol.final)
    kept, peak_kept = _peak(lambda: solve(model, x0, 0.59, dt=0.01, method="euler", save_at=ts))
    np.testing.assert_array_equal(kept.x, run.state)
    assert peak_kept >= retained  # the measure sees retention where there is some
    assert peak < retained / 3, (peak, retained)
