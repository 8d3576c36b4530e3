"""Shards are atomic; the merged study file opens in xarray with the grid as named dimensions."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from studies.sweep import (
    SerialExecutor,
    Store,
    load_study,
    merge_sweep,
    parse_spec,
    plan_tasks,
    read_shard,
    run_sweep,
    write_shard,
)

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")


def test_shard_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "ab" / "abcdef.h5"
    write_shard(path, {"status": "complete", "task_id": "abcdef"}, {"a": np.arange(3.0)})
    before = path.read_bytes()
    # a writer that fails half-way (the second dataset cannot be stored) leaves the old shard untouched
    with pytest.raises(TypeError):
        write_shard(path, {"status": "complete", "task_id": "abcdef"}, {"a": np.zeros(3), "b": np.array([object()])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["abcdef.h5"]  # no temporary left behind
    shard = read_shard(path)
    assert shard.status == "complete" and np.array_equal(shard.measurements["a"], np.arange(3.0))


def _phase_spec(**grid):
    return parse_spec({
        "sweep": {"name": "tiny", "task": "flow.phase_point", "root_seed": 11, "seeds": 2},
        "params": {"d": 3, "batch": 2, "t_end": 1.0, "n_save": 3, "dt": 0.1, "backend": "numpy"},
        "grid": grid,
    })


def test_merged_file_is_labelled_for_xarray(tmp_path):
    spec = _phase_spec(qkv=["identity", "random"], zip={"cfg": {"beta": [1.0, 2.0], "n": [4, 5]}})
    res = run_sweep(spec, tmp_path / "s", executor=SerialExecutor(), progress=False)
    assert res.completed == spec.n_tasks == 8
    m = merge_sweep(spec, tmp_path / "s")
    with xr.open_dataset(m.path, engine="h5netcdf") as ds:
        assert ds["P"].dims == ("qkv", "cfg", "seed", "t")
        assert list(ds["qkv"].values) == ["identity", "random"]
        assert list(ds["beta"].values) == [1.0, 2.0] and ds["beta"].dims == ("cfg",)
        assert list(ds["n"].values) == [4, 5] and "n" in ds["P"].coords
        assert np.array_equal(ds["t"].values, np.linspace(0, 1, 3))
        assert list(ds["seed"].values) == [0, 1]
        # every entry is the shard of the planned task
        store = Store(tmp_path / "s")
        for t in plan_tasks(spec):
            q, c = t.point
            sel = dict(qkv=q, cfg=c, seed=t.replicate)
            assert ds["task_id"][sel].item() == t.task_id and ds["task_seed"][sel].item() == t.seed
            shard = read_shard(store.shard_path(t.task_id))
            assert np.array_equal(ds["P"][sel].values, shard.measurements["P"])
        assert (ds["task_status"].values == 1).all()
        a = ds.attrs
        assert a["model"] == "flow.phase_point" and a["root_seed"] == 11 and a["completion_status"] == "complete"
        assert json.loads(a["parameters"])["grid"][1]["coords"] == {"beta": [1.0, 2.0], "n": [4, 5]}
        for key in ("package_version", "git_commit", "created", "fixed_parameters"):
            assert key in a
    # the h5py reader sees the same
    st = load_study(m.path)
    assert st["vars"]["P"][0] == ("qkv", "cfg", "seed", "t")


def test_missing_failed_and_ragged_entries(tmp_path):
    spec = parse_spec({
        "sweep": {"name": "rag", "task": "demo.busy", "root_seed": 5, "seeds": 1},
        "params": {"seconds": 0.0},
        "grid": {"size": [2, 3], "scale": [1.0, 2.0]},
    })
    run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)
    tasks = plan_tasks(spec)
    store = Store(tmp_path)
    store.shard_path(tasks[0].task_id).unlink()  # a missing task
    failed = store.shard_path(tasks[3].task_id)  # a failed task, as the worker records it
    attrs = dict(read_shard(failed, measurements=False).attrs, status="failed", error="RuntimeError: boom")
    write_shard(failed, attrs, None)
    m = merge_sweep(spec, tmp_path)
    assert (m.complete, m.failed, m.missing) == (2, 1, 1)
    with xr.open_dataset(m.path, engine="h5netcdf") as ds:
        assert ds.attrs["completion_status"].startswith("incomplete")
        assert ds["task_status"].values.ravel().tolist() == [0, 1, 1, 2]
        assert ds["task_error"].values.ravel()[3] == "RuntimeError: boom"
        x = ds["x"].values  # (size, scale, seed, x_dim0): sizes 2 and 3 padded with NaN
        assert x.shape == (2, 2, 1, 3)
        assert np.isnan(x[0, 0]).all() and np.isnan(x[1, 1]).all()
        assert np.isnan(x[0, 1, 0, 2]) and np.isfinite(x[0, 1, 0, :2]).all()
        expected = read_shard(store.shard_path(tasks[2].task_id)).measurements["x"]
        assert np.array_equal(x[1, 0, 0], expected)


def test_resume_refuses_silent_recompute(tmp_path):
    from studies.sweep import SweepError

    spec = _phase_spec(beta=[1.0], n=[4])
    run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), resume=True, progress=False)
    assert (res.skipped, res.completed) == (2, 0)
    with h5py.File(merge_sweep(spec, tmp_path).path) as f:
        assert f.attrs["n_complete"] == 2


def test_status_sees_running_and_interrupted_tasks(tmp_path):
    import os
    import subprocess
    import sys

    from studies.sweep import sweep_status

    spec = _phase_spec(beta=[1.0, 2.0], n=[4])
    tasks = plan_tasks(spec)
    store = Store(tmp_path)
    store.prepare(None)
    store.mark_running(tasks[0].task_id, {"index": 0, "progress": 0.25})  # this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.mark_running(tasks[1].task_id, {"index": 1})
    info = json.loads(store.marker_path(tasks[1].task_id).read_text())
    store.marker_path(tasks[1].task_id).write_text(json.dumps(info | {"pid": int(dead.stdout)}))  # a killed run
    st = sweep_status(spec, tmp_path)
    assert (st.running, st.missing, st.interrupted, st.done) == (1, 3, 1, 0)
    assert st.active[0]["pid"] == os.getpid() and st.active[0]["progress"] == 0.25
    # --resume clears the stale marker and runs everything
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), resume=True, progress=False)
    assert res.completed == 4 and not list((tmp_path / "running").iterdir())
