"""The HDF5 run store: attributes, named dimensions, chunking, crash safety, status."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from integrators import solve
from particles import SelfAttention, uniform_sphere
from integrators.validation import ParameterError
from studies.store.flags import lookup3, superblock_flags
from studies.cli import main
from studies.store import RunWriter, list_runs, open_xarray, read_run, repair, summarize

ROOT = Path(__file__).resolve().parents[2]
OBS = ["energy", "cluster_count", "pair_histogram"]
BIN_EDGES = np.linspace(-1, 1, 51)


def _writer(path, model, **kw):
    return RunWriter(
        path,
        model=model,
        method="rk4",
        dt=0.05,
        backend="numpy",
        seed=7,
        obs_dims={"pair_histogram": ("batch", "bin")},
        coords={"bin": 0.5 * (BIN_EDGES[1:] + BIN_EDGES[:-1])},
        **kw,
    )


def _run(path, dtype="float64", compression="gzip", **kw):
    model = SelfAttention(beta=2.0, V=-np.eye(3), causal=True)
    x0 = uniform_sphere(2, 5, 3, seed=1)
    w = _writer(path, model, dtype=dtype, compression=compression, attrs={"t_end": 1.0}, **kw)
    streamed = solve(model, x0, 1.0, dt=0.05, save_at=11, observables=OBS, dtype=dtype, writer=w)
    assert streamed.x is None  # the writer keeps the states; compare with the same run kept in memory
    return model, solve(model, x0, 1.0, dt=0.05, save_at=11, observables=OBS, dtype=dtype)


def test_lookup3_reference_values():
    # Test vectors printed by Bob Jenkins' lookup3.c (driver5).
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def test_attributes_and_round_trip(tmp_path):
    path = tmp_path / "run.h5"
    model, sol = _run(path)
    run = read_run(path)
    assert run.status == "complete" and run.complete
    np.testing.assert_array_equal(run.t, sol.t)
    np.testing.assert_array_equal(run.state, sol.x)
    for k in OBS:
        np.testing.assert_array_equal(run.observables[k], sol.observables[k])
    a = run.attrs
    for key in ("model", "seed", "integrator", "dt", "backend", "dtype", "device", "package_version",
                "git_commit", "created", "completed", "status", "n_steps", "wall_time_s", "t_end"):  # fmt: skip
        assert key in a, key
    assert a["model"] == "sa" and a["integrator"] == "rk4" and a["dt"] == 0.05 and a["seed"] == 7
    assert a["backend"] == "numpy" and a["dtype"] == "float64" and a["n_steps"] == 20 and a["n_saved"] == 11
    assert json.loads(a["params_json"]) == json.loads(json.dumps(model.params()))
    np.testing.assert_array_equal(np.asarray(run.params["V"]).reshape(3, 3), -np.eye(3))
    np.testing.assert_array_equal(a["V"].reshape(3, 3), -np.eye(3))  # each parameter also as its own attribute
    assert a["beta"] == 2.0 and bool(a["causal"]) is True and a["Q"] == "identity"
    assert run.dims["x"] == ("t", "batch", "n", "d")
    assert run.dims["pair_histogram"] == ("t", "batch", "bin")


def test_xarray_opens_with_named_dimensions(tmp_path):
    import xarray as xr

    path = tmp_path / "run.h5"
    _, sol = _run(path)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["x"].dims == ("t", "batch", "n", "d")
        assert ds["energy"].dims == ("t", "batch")
        assert ds["pair_histogram"].dims == ("t", "batch", "bin")
        np.testing.assert_allclose(ds["bin"].values, 0.5 * (BIN_EDGES[1:] + BIN_EDGES[:-1]))
        np.testing.assert_array_equal(ds["t"].values, sol.t)
        np.testing.assert_array_equal(ds["x"].sel(t=sol.t[5]).values, sol.x[5])
        assert ds.attrs["status"] == "complete" and ds.attrs["integrator"] == "rk4"
    with open_xarray(path) as ds:
        np.testing.assert_array_equal(ds["energy"].values, sol.observables["energy"])


@pytest.mark.parametrize("dtype,compression", [("float64", "gzip"), ("float32", "lzf")])
def test_chunked_along_time_and_compressed(tmp_path, dtype, compression):
    path = tmp_path / "run.h5"
    _run(path, dtype=dtype, compression=compression)
    with h5py.File(path, "r") as f:
        for name in ["x", *OBS]:
            ds = f[name]
            assert ds.chunks is not None and ds.maxshape[0] is None, name
            assert ds.chunks[1:] == ds.shape[1:], name  # small frames: whole frames per chunk
            # Frames below 4 KiB share chunks across saves, which are never compressed (test_store_size.py).
            assert ds.chunks[0] > 1 and ds.compression is None, name
        assert f["x"].dtype == np.dtype(dtype) and f["energy"].dtype == np.dtype(dtype)
        assert f["t"].dtype == np.float64 and f["cluster_count"].dtype.kind == "i"


def test_large_frames_are_split_into_chunks(tmp_path):
    path = tmp_path / "big.h5"
    w = RunWriter(path, model="sa", method="euler", dt=0.1, backend="numpy")
    frame = np.zeros((64, 64, 64))  # 2 MiB per save
    w.append(0.0, frame, {})
    w.close("complete", {})
    with h5py.File(path, "r") as f:
        c = f["x"].chunks
    assert c[0] == 1 and np.prod(c) * 8 <= 1 << 19 and c[2:] == (64, 64)


class _Boom(Exception):
    pass


def _failing_observable(after: float, exc):
    def obs(x, model):
        obs.calls += 1
        if obs.calls > 3:
            raise exc
        return x[:, 0, 0]

    obs.calls = 0
    return obs


@pytest.mark.parametrize("exc,prefix", [(_Boom("disk on fire"), "failed: _Boom: disk on fire"), (KeyboardInterrupt(), "interrupted")])
def test_failed_and_interrupted_runs_are_marked(tmp_path, exc, prefix):
    path = tmp_path / "run.h5"
    model = SelfAttention(beta=1.0)
    w = RunWriter(path, model=model, method="heun", dt=0.1, backend="numpy")
    with pytest.raises(type(exc)):
        solve(model, uniform_sphere(1, 4, 3, seed=0), 1.0, dt=0.1, method="heun", save_at=11,
              observables={"first": _failing_observable(0.25, exc)}, writer=w)  # fmt: skip
    run = read_run(path)
    assert run.status == prefix and not run.complete
    assert len(run.t) == 3 and np.all(np.isfinite(run.state))  # the saves completed before the failure


def test_groups_hold_several_runs(tmp_path):
    path = tmp_path / "study.h5"
    model = SelfAttention(beta=1.0)
    sols = {}
    for g, seed in (("runs/a", 1), ("runs/b", 2)):
        w = RunWriter(path, model=model, method="rk4", dt=0.1, backend="numpy", group=g, seed=seed)
        solve(model, uniform_sphere(1, 4, 3, seed=seed), 1.0, dt=0.1, save_at=3, writer=w)
        sols[g] = solve(model, uniform_sphere(1, 4, 3, seed=seed), 1.0, dt=0.1, save_at=3)
    assert list_runs(path) == ["/runs/a", "/runs/b"]
    for g, sol in sols.items():
        np.testing.assert_array_equal(read_run(path, g).state, sol.x)
        with open_xarray(path, g) as ds:
            np.testing.assert_array_equal(ds["x"].values, sol.x)
    with pytest.raises(FileExistsError):
        RunWriter(path, model=model, method="rk4", dt=0.1, backend="numpy", group="runs/a")
    with pytest.raises(FileExistsError):
        RunWriter(path, model=model, method="rk4", dt=0.1, backend="numpy")
    with pytest.raises(ParameterError, match="group"):
        read_run(path, "runs/c")
    text = summarize(path)
    assert "/runs/a" in text and "/runs/b" in text and text.count("status: complete") == 2


def test_summary_and_not_a_run(tmp_path):
    path = tmp_path / "run.h5"
    _, sol = _run(path)
    text = summarize(path)
    assert "status: complete" in text and "rk4" in text and "dims (t, batch, n, d)" in text and "chunks" in text
    assert f"{np.mean(sol.observables['energy'][-1]):.6g}" in text  # final observable
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ParameterError, match="path"):
        read_run(junk)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = 1
    with pytest.raises(ParameterError, match="not an attnflow run"):
        read_run(tmp_path / "other.h5")


_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from integrators import solve
    from particles import SelfAttention, energy, uniform_sphere
    from studies.store import RunWriter

    class Reporting(RunWriter):
        def append(self, t, x, obs):
            super().append(t, x, obs)
            print(self.n_saved, flush=True)

    def slow(x, model):
        import time
        time.sleep(0.03)
        return x[:, :, 0].sum(axis=1)

    model = SelfAttention(beta=3.0)
    w = Reporting(sys.argv[1], model=model, method="rk4", dt=0.01, backend="numpy", seed=3)
    solve(model, uniform_sphere(2, 12, 4, seed=3), 1000.0, dt=0.01, save_at=np.arange(0, 1000.5, 0.5),
          observables={"energy": energy, "slow": slow}, writer=w)
    """
)


def test_sigkill_leaves_completed_saves_readable(tmp_path):
    import xarray as xr

    path = tmp_path / "killed.h5"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        n = 0
        while n < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            n = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert n >= 4, "the child never reported its saves"

    run = read_run(path)  # opened in SWMR-read mode: the writer never closed the file
    assert run.status == "incomplete" and not run.complete
    k = len(run.t)
    assert k >= n
    np.testing.assert_allclose(run.t, 0.5 * np.arange(k))
    # Every completed frame equals the same simulation redone here.
    model = SelfAttention(beta=3.0)
    ref = solve(model, uniform_sphere(2, 12, 4, seed=3), run.t[-1], dt=0.01, save_at=run.t, observables=["energy"])
    np.testing.assert_array_equal(run.state, ref.x)
    np.testing.assert_array_equal(run.observables["energy"], ref.observables["energy"])
    with open_xarray(path) as ds:
        assert ds.sizes["t"] == k and ds.attrs["status"] == "incomplete"
        np.testing.assert_array_equal(ds["x"].values, ref.x)
    assert "incomplete" in summarize(path) and "--repair" in summarize(path)

    # After clearing HDF5's write flag every tool opens it normally.
    assert superblock_flags(path) != 0
    assert main(["info", str(path), "--repair"]) == 0
    assert superblock_flags(path) == 0 and repair(path) is False
    with h5py.File(path, "r") as f:
        assert f.attrs["status"] == "incomplete" and f["t"].shape == (k,)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["x"].values, ref.x)


def test_writer_killed_before_its_first_save(tmp_path):
    path = tmp_path / "early.h5"
    script = tmp_path / "early.py"
    script.write_text(
        "import sys, time\n"
        "from studies.store import RunWriter\n"
        "w = RunWriter(sys.argv[1], model='sa', method='rk4', dt=0.1, backend='numpy')\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(ParameterError, match="still open in a live writer"):
            repair(path)  # the writer holds its lock: refuse
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(ParameterError, match="--repair"):
        read_run(path)
    assert repair(path) is True
    run = read_run(path)
    assert run.status == "incomplete" and len(run.t) == 0 and run.state is None
