"""Executors: local pool vs Dask give identical bytes; failures, retries, crashes and kills lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from studies.sweep.spec import to_toml
from studies.sweep import (
    LocalExecutor,
    Store,
    format_status,
    load_study,
    merge_sweep,
    parse_spec,
    plan_tasks,
    read_shard,
    run_sweep,
    sweep_status,
)

CLI = [sys.executable, "-m", "studies.cli"]


def phase_spec(name="p24", **grid):
    """24 small flow tasks (4 betas x 2 dimensions x 3 seeds)."""
    return {
        "sweep": {"name": name, "task": "flow.phase_point", "root_seed": 2024, "seeds": 3},
        "params": {"n": 6, "batch": 3, "t_end": 8.0, "n_save": 5, "dt": 0.1, "method": "rk4", "backend": "numpy"},
        "grid": grid or {"d": [3, 4], "beta": [0.5, 1.0, 4.0, 9.0]},
    }


def measurements(path: Path) -> dict:
    """Every stored array of a study file as raw bytes (strings as tuples), timings left out."""
    st = load_study(path)
    return {k: (tuple(a.ravel()) if a.dtype == object else a.tobytes())
            for k, (_, a) in st["vars"].items() if k not in ("task_compute_s", "task_error")}


def test_local_and_dask_give_identical_bytes(tmp_path):
    pytest.importorskip("distributed")
    from studies.sweep import DaskExecutor

    spec = parse_spec(phase_spec())
    assert spec.n_tasks == 24
    local = run_sweep(spec, tmp_path / "local", executor=LocalExecutor(workers=2), progress=False)
    ex = DaskExecutor(workers=2)
    try:
        assert len(ex.client.scheduler_info()["workers"]) == 2
        dask = run_sweep(spec, tmp_path / "dask", executor=ex, progress=False)
    finally:
        ex.close()
    assert local.completed == dask.completed == 24
    a = measurements(merge_sweep(spec, tmp_path / "local").path)
    b = measurements(merge_sweep(spec, tmp_path / "dask").path)
    assert set(a) >= {"P", "collapsed", "g_theory", "task_seed", "task_status"}
    assert a == b
    P = load_study(tmp_path / "local" / "p24.h5")["vars"]["P"][1]
    assert P[..., 0].max() == 0.0 and P[..., -1].max() == 1.0  # the flow did something: clusters formed


def test_dask_absence_is_a_clear_error(monkeypatch):
    from integrators.validation import ParameterError
    from studies.sweep import DaskExecutor

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ParameterError, match="pip install"):
        DaskExecutor(workers=1)


def test_failing_task_is_recorded_and_the_rest_completes(tmp_path):
    # USA with beta = 800 overflows exp(beta <x_i, x_j>): the dynamics diverge
    spec = parse_spec(phase_spec("fail", normalization=["sa", "usa"], beta=[1.0, 800.0]) | {})
    res = run_sweep(spec, tmp_path, executor=LocalExecutor(workers=2), retries=1, progress=False)
    assert (res.completed, res.failed) == (9, 3)
    store = Store(tmp_path)
    for t in plan_tasks(spec):
        shard = read_shard(store.shard_path(t.task_id), measurements=False)
        bad = t.params["normalization"] == "usa" and t.params["beta"] == 800.0
        assert shard.status == ("failed" if bad else "complete")
        if bad:
            assert "diverged" in shard.attrs["error"] and "FloatingPointError" in shard.attrs["traceback"]
            assert shard.attrs["attempts"] == 2  # retried once
            assert "FloatingPointError" in store.log_path(t.task_id).read_text()
    st = sweep_status(spec, tmp_path)
    assert (st.done, st.failed, st.missing, st.running) == (9, 3, 0, 0)
    assert "diverged" in format_status(st)
    m = merge_sweep(spec, tmp_path)
    st = load_study(m.path)
    status = st["vars"]["task_status"][1]
    assert (status[1, 1] == 2).all() and (status[0] == 1).all()
    assert np.isnan(st["vars"]["P"][1][1, 1]).all() and np.isfinite(st["vars"]["P"][1][0]).all()


def test_retries_and_a_killed_worker(tmp_path):
    base = {"sweep": {"name": "flaky", "task": "demo.flaky", "root_seed": 1, "seeds": 3}}
    # an exception on the first attempt: retried in place
    spec = parse_spec(base | {"params": {"marker_dir": str(tmp_path / "m1")}, "grid": {"failures": [0, 1]}})
    res = run_sweep(spec, tmp_path / "a", executor=LocalExecutor(workers=2), retries=1, progress=False)
    assert res.failed == 0
    attempts = sorted(o.attempts for o in res.outcomes)
    assert attempts == [1, 1, 1, 2, 2, 2]
    # no retries: the transient failure is recorded
    spec0 = parse_spec(base | {"params": {"marker_dir": str(tmp_path / "m0")}, "grid": {"failures": [1]}})
    assert run_sweep(spec0, tmp_path / "b", executor=LocalExecutor(workers=2), retries=0, progress=False).failed == 3
    # the worker process dies (SIGKILL) during the first attempt: the pool is rebuilt, the task re-run
    specc = parse_spec(base | {"params": {"marker_dir": str(tmp_path / "mc"), "crash": True}, "grid": {"failures": [0, 1]}})
    res = run_sweep(specc, tmp_path / "c", executor=LocalExecutor(workers=2), retries=1, progress=False)
    assert (res.completed, res.failed) == (6, 0)
    values = {o.task_id: read_shard(Store(tmp_path / "c").shard_path(o.task_id)).measurements["value"] for o in res.outcomes}
    assert len(values) == 6
    # without retries only the tasks whose worker died are failed; tasks of the other worker,
    # stopped by the broken pool, are re-run and complete
    specd = parse_spec(base | {"params": {"marker_dir": str(tmp_path / "md"), "crash": True}, "grid": {"failures": [0, 1]}})
    res = run_sweep(specd, tmp_path / "d", executor=LocalExecutor(workers=2), retries=0, progress=False)
    failed = {o.task_id for o in res.outcomes if o.status == "failed"}
    assert failed == {t.task_id for t in plan_tasks(specd) if t.params["failures"] == 1}
    assert all("died" in o.error for o in res.outcomes if o.status == "failed")


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("shards/*/*.h5"))


def test_sigkill_then_resume_is_identical(tmp_path):
    spec_data = {
        "sweep": {"name": "kill", "task": "demo.busy", "root_seed": 9, "seeds": 4},
        "params": {"seconds": 0.12},
        "grid": {"size": [3, 5], "scale": [0.5, 1.0, 2.0]},
    }
    path = tmp_path / "kill.toml"
    path.write_text(to_toml(spec_data))
    out = tmp_path / "run"
    proc = subprocess.Popen(CLI + ["sweep", "run", str(path), "--out", str(out), "--workers", "2", "--no-progress"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while len(_shards(out)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, mid-run
    proc.wait(timeout=30)
    done = _shards(out)
    assert 4 <= len(done) < 24, "the kill must land mid-sweep"
    time.sleep(0.3)
    for p in _shards(out):  # every shard on disk is whole: readable, complete, with its data
        shard = read_shard(p)
        assert shard is not None and shard.status == "complete" and shard.measurements["x"].shape in ((3,), (5,))
    spec = parse_spec(spec_data)
    st = sweep_status(spec, out)
    assert st.running == 0 and st.done + st.missing == 24 and st.done >= 4
    res = subprocess.run(CLI + ["sweep", "run", str(path), "--out", str(out), "--workers", "2", "--resume", "--merge",
                                "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{st.done} already complete" in res.stdout
    assert not Store(out).temporaries()
    ref = run_sweep(spec, tmp_path / "ref", executor=LocalExecutor(workers=2), progress=False)
    assert ref.completed == 24
    assert measurements(out / "kill.h5") == measurements(merge_sweep(spec, tmp_path / "ref").path)


def test_task_index_and_sbatch_script(tmp_path):
    path = tmp_path / "p24.toml"
    path.write_text(to_toml(phase_spec()))
    out = tmp_path / "arr"
    spec = parse_spec(phase_spec())
    tasks = plan_tasks(spec)
    res = subprocess.run(CLI + ["sweep", "run", str(path), "--out", str(out), "--task-index", "5"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [p.stem for p in _shards(out)] == [tasks[5].task_id]
    st = subprocess.run(CLI + ["sweep", "status", str(out)], capture_output=True, text=True, timeout=120).stdout
    assert "24 tasks: 1 done, 0 running, 0 failed, 23 missing" in st

    res = subprocess.run(CLI + ["sweep", "submit", str(path), "--out", str(out), "--dry-run", "--time", "00:10:00",
                                "--mem", "2G", "--max-parallel", "8"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    script = out / "slurm" / "p24.sbatch"
    text = script.read_text()
    directives = dict(line[len("#SBATCH "):].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH "))
    lo, hi = directives["--array"].split("%")[0].split("-")
    assert int(hi) - int(lo) + 1 == spec.n_tasks == 24
    assert directives["--time"] == "00:10:00" and directives["--mem"] == "2G" and directives["--array"].endswith("%8")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    command = [line for line in text.splitlines() if line.startswith("exec ")][0]
    assert "sweep run" in command and "--task-index $SLURM_ARRAY_TASK_ID" in command
    # what one array element does: run the script with its index set
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="7")
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(p.stem for p in _shards(out)) == sorted([tasks[5].task_id, tasks[7].task_id])
    with h5py.File(Store(out).shard_path(tasks[7].task_id)) as f:
        assert f.attrs["index"] == 7 and f.attrs["seed"] == tasks[7].seed

    # chunked arrays: ceil(24 / 5) = 5 indices, the last runs tasks 20..23
    subprocess.run(CLI + ["sweep", "submit", str(path), "--out", str(out), "--dry-run", "--chunk", "5"],
                   check=True, capture_output=True, timeout=120)
    text = script.read_text()
    assert "#SBATCH --array=0-4\n" in text and "--task-count 5" in text
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="4")
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=120)
    assert len(_shards(out)) == 6
    assert {t.task_id for t in tasks[20:]} <= {p.stem for p in _shards(out)}


def test_dask_cluster_object_and_jobqueue_options(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from studies.sweep import DaskExecutor, jobqueue_cluster

    spec = parse_spec({"sweep": {"name": "obj", "task": "demo.busy", "root_seed": 1, "seeds": 3}, "params": {"seconds": 0.0}})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        ex = DaskExecutor(cluster=cluster)  # any cluster object: LocalCluster, SLURMCluster, PBSCluster, ...
        assert run_sweep(spec, tmp_path, executor=ex, progress=False).completed == 3
        ex.close()  # closes our client, not the caller's cluster
        assert cluster.status.name == "running"

    class FakeCluster:  # stands in for dask_jobqueue.SLURMCluster: records what it is given
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def scale(self, jobs):
            self.jobs = jobs

    monkeypatch.setitem(sys.modules, "dask_jobqueue", type(sys)("dask_jobqueue"))
    sys.modules["dask_jobqueue"].SLURMCluster = FakeCluster
    c = jobqueue_cluster("slurm", jobs=4, cores=8, memory="16GB", walltime="02:00:00", queue="cpu", account="lab")
    assert c.kwargs == {"cores": 8, "processes": 8, "memory": "16GB", "walltime": "02:00:00", "queue": "cpu", "account": "lab"}
    assert c.jobs == 4
