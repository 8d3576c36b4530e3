"""Sweep reliability (issue 10): timeouts, full disks, code tasks, spec-time validation, mixed code versions.

Tasks with special behaviour (hanging, ignoring the alarm) live in a small module written to a
temporary directory and named as a ``module:function`` task, which needs ``allow_code_tasks``:
pool workers are separate processes and only see registered tasks and importable modules.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from integrators.validation import ParameterError
from studies.sweep import (
    LocalExecutor,
    SerialExecutor,
    Store,
    SweepError,
    load_study,
    merge_sweep,
    parse_spec,
    plan_tasks,
    read_shard,
    run_sweep,
    sweep_status,
)
from studies.sweep.spec import to_toml

CLI = [sys.executable, "-m", "studies.cli"]
MODULE = "sweep_rely_tasks"
TASK_SOURCE = '''
import signal, time
import numpy as np

def hang(params, seed):
    mode = params.get("mode", "ok")
    if mode == "stubborn":  # blocks the worker's alarm: only a kill stops it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if mode in ("sleep", "stubborn"):
        time.sleep(3600)
    time.sleep(params.get("seconds", 0.0))
    return {"x": np.random.default_rng(seed).standard_normal(3) * params.get("value", 1.0)}
'''
# Put in place of the real module for `status` and `merge` in one test: importing it leaves a mark.
TRAP_SOURCE = '''
import os
open(os.environ["SWEEP_TRAP_MARK"], "a").write("imported\\n")
def hang(params, seed):
    raise RuntimeError("must not run")
'''


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rely_tasks")
    (d / f"{MODULE}.py").write_text(TASK_SOURCE)
    return d


@pytest.fixture
def code_path(task_dir, monkeypatch):
    """The task module importable here and in spawned pool workers (they inherit sys.path)."""
    monkeypatch.syspath_prepend(str(task_dir))
    return task_dir


def _env(*extra: Path, **more) -> dict:
    """Environment of a CLI subprocess: this checkout's packages first, then ``extra`` directories."""
    import studies

    root = Path(studies.__file__).resolve().parents[1]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *map(str, extra)]), **more)


def _code_spec(name: str, grid: dict, **sweep) -> dict:
    return {"sweep": {"name": name, "task": f"{MODULE}:hang", "root_seed": 11, **sweep}, "grid": grid}


def test_timeout_kills_hung_tasks_and_the_rest_completes(tmp_path, code_path):
    # one task sleeps (stopped by the worker's alarm), one blocks the alarm (its worker is killed)
    spec = parse_spec(_code_spec("hung", {"mode": ["ok", "sleep", "stubborn"]}, timeout=2, retries=1, seeds=2),
                      allow_code_tasks=True)
    t0 = time.monotonic()
    res = run_sweep(spec, tmp_path, executor=LocalExecutor(workers=2), progress=False)
    wall = time.monotonic() - t0
    by_mode: dict[str, list] = {}
    for t in plan_tasks(spec):
        by_mode.setdefault(t.params["mode"], []).append(read_shard(Store(tmp_path).shard_path(t.task_id)))
    assert all(s.status == "complete" and s.measurements["x"].shape == (3,) for s in by_mode["ok"])
    for s in by_mode["sleep"] + by_mode["stubborn"]:
        assert s.status == "failed" and s.attrs["error"].startswith("timeout: the task ran longer than 2 s")
        assert s.attrs["attempts"] == 1  # a hung task is not retried
    assert all("killed" in s.attrs["error"] for s in by_mode["stubborn"])
    assert (res.completed, res.failed) == (2, 4)
    assert wall < 30, wall  # without the timeout this sweep never ends
    st = sweep_status(spec, tmp_path)
    assert (st.done, st.failed, st.running, st.missing) == (2, 4, 0, 0)


def test_disk_full_is_recorded_per_task_and_resume_completes(tmp_path, monkeypatch):
    import studies.sweep.worker as worker

    spec = parse_spec({"sweep": {"name": "full", "task": "demo.busy", "root_seed": 4, "seeds": 2},
                       "params": {"seconds": 0.0}, "grid": {"size": [2, 3, 4]}})
    tasks = plan_tasks(spec)
    no_data, nothing = tasks[1].task_id, tasks[4].task_id
    real = worker.write_shard

    def full_disk(path, attrs, measurements):
        # task 1: its data do not fit, its failure record does; task 4: nothing can be written
        if attrs["task_id"] == nothing or (attrs["task_id"] == no_data and measurements is not None):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, attrs, measurements)

    monkeypatch.setattr(worker, "write_shard", full_disk)
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)  # in this process: the patch applies
    assert (res.completed, res.failed) == (4, 2)
    errors = {o.task_id: o.error for o in res.outcomes if o.status == "failed"}
    assert set(errors) == {no_data, nothing}
    assert all("No space left on device" in e for e in errors.values())
    assert "could not be recorded either" in errors[nothing]
    shard = read_shard(Store(tmp_path).shard_path(no_data))
    assert shard.status == "failed" and "Errno 28" in shard.attrs["error"]
    assert not Store(tmp_path).shard_path(nothing).exists()
    st = sweep_status(spec, tmp_path)
    assert (st.done, st.failed, st.missing, st.running) == (4, 1, 1, 0)

    # the coordinator's own record (of a lost worker) hits the full disk too: reported, not raised
    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(worker, "write_shard", no_space)
    lost = worker.record_failure(worker.TaskRun("demo.busy", "ab" * 8, 0, 0, 1, 4, {}, str(tmp_path)), "worker died")
    assert lost.status == "failed" and "could not be recorded" in lost.error

    monkeypatch.setattr(worker, "write_shard", real)
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), resume=True, progress=False)
    assert (res.skipped, res.completed, res.failed) == (4, 2, 0)
    assert sweep_status(spec, tmp_path).done == 6


def test_disk_full_in_a_pool_worker_does_not_crash_the_coordinator(tmp_path, code_path):
    # The worker of some tasks finds the disk full for every write; the pool and the coordinator go on.
    (code_path / "sweep_rely_full.py").write_text('''
import errno, numpy as np
import studies.sweep.worker as worker

def task(params, seed):
    if params["full"]:
        real = worker.write_shard
        def full(path, attrs, measurements):
            if attrs["seed"] == seed:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, attrs, measurements)
        worker.write_shard = full
    return {"x": np.float64(seed % 7)}
''')
    spec = parse_spec({"sweep": {"name": "poolfull", "task": "sweep_rely_full:task", "root_seed": 2, "seeds": 2},
                       "grid": {"full": [False, True]}}, allow_code_tasks=True)
    res = run_sweep(spec, tmp_path, executor=LocalExecutor(workers=2), progress=False)
    assert (res.completed, res.failed) == (2, 2)
    assert all("No space left" in o.error for o in res.outcomes if o.status == "failed")
    st = sweep_status(spec, tmp_path)
    assert (st.done, st.missing, st.running) == (2, 2, 0)  # the failures could not be written: missing, re-run by --resume


def test_code_tasks_need_the_flag_and_status_merge_never_import_them(tmp_path, task_dir):
    spec_file = tmp_path / "code.toml"
    spec_file.write_text(to_toml(_code_spec("code", {"value": [1.0, 2.0, 3.0]})))
    out = tmp_path / "out"
    run = CLI + ["sweep", "run", str(spec_file), "--out", str(out), "--workers", "2", "--no-progress"]
    res = subprocess.run(run, capture_output=True, text=True, timeout=60, env=_env(task_dir))
    assert res.returncode == 2 and "--allow-code-tasks" in res.stderr and "sweep.task" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written
    res = subprocess.run(run + ["--allow-code-tasks"], capture_output=True, text=True, timeout=60, env=_env(task_dir))
    assert res.returncode == 0, res.stderr
    # --resume re-reads OUT/spec.toml: it needs the same opt-in
    res = subprocess.run(CLI + ["sweep", "run", str(out), "--resume", "--no-progress"], capture_output=True, text=True,
                         timeout=60, env=_env(task_dir))
    assert res.returncode == 2 and "--allow-code-tasks" in res.stderr

    # status and merge: once with the module unknown, once with a module of that name that marks its import
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / f"{MODULE}.py").write_text(TRAP_SOURCE)
    mark = tmp_path / "imported.mark"
    for env, target in ((_env(), [str(out)]), (_env(trap, SWEEP_TRAP_MARK=str(mark)), [str(spec_file), "--out", str(out)])):
        st = subprocess.run(CLI + ["sweep", "status", *target], capture_output=True, text=True, timeout=60, env=env)
        assert st.returncode == 0, st.stderr
        assert "3 tasks: 3 done, 0 running, 0 failed, 0 missing" in st.stdout
        m = subprocess.run(CLI + ["sweep", "merge", *target], capture_output=True, text=True, timeout=60, env=env)
        assert m.returncode == 0, m.stderr
    assert not mark.exists()
    x = load_study(out / "code.h5")["vars"]["x"][1]
    assert x.shape == (3, 1, 3) and np.isfinite(x).all()


@pytest.mark.parametrize("table, key, value, label", [
    ("grid", "dt", [0.1, -0.1], "grid.dt"),
    ("params", "backend", "nunba", "params.backend"),
    ("params", "method", "euler-maruyama", "params.method"),
])
def test_spec_check_builds_each_model_before_any_task_runs(tmp_path, table, key, value, label):
    data = {"sweep": {"name": "bad", "task": "flow.phase_point", "root_seed": 1},
            "params": {"n": 4, "batch": 2, "t_end": 1.0, "n_save": 3, "backend": "numpy"},
            "grid": {"beta": [1.0, 2.0]}}
    data[table][key] = value
    with pytest.raises(ParameterError) as err:
        parse_spec(data)
    assert err.value.parameter == label
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(to_toml(data))
    res = subprocess.run(CLI + ["sweep", "run", str(spec_file), "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=60, env=_env())
    assert res.returncode == 2 and label in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()  # no task ran, no shard to orphan


def test_covariance_task_is_validated_at_spec_time():
    base = {"sweep": {"name": "cov", "task": "cov.rho_law", "root_seed": 1}}
    with pytest.raises(ParameterError) as err:
        parse_spec(base | {"grid": {"dt": [0.01, -0.1]}})
    assert err.value.parameter == "grid.dt"
    with pytest.raises(ParameterError) as err:  # a relation between two parameters, at one point of the grid
        parse_spec(base | {"params": {"m": 4}, "grid": {"n": [8, 2]}})
    assert err.value.parameter == "grid.n" and "n >= m" in str(err.value)


def _set_commit(path: Path, commit: str) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["git_commit"] = commit


def test_merge_refuses_shards_of_different_code_versions(tmp_path):
    spec = parse_spec({"sweep": {"name": "mix", "task": "demo.busy", "root_seed": 3, "seeds": 2},
                       "params": {"seconds": 0.0}, "grid": {"size": [2, 3]}})
    run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)
    shards = sorted(tmp_path.glob("shards/*/*.h5"))
    for p in shards:
        _set_commit(p, "a" * 40)
    m = merge_sweep(spec, tmp_path)
    with h5py.File(m.path) as f:
        assert f.attrs["shards_code_version"].endswith("a" * 40)
        assert "mixed_code_versions" not in f.attrs
    _set_commit(shards[0], "b" * 40)
    with pytest.raises(SweepError, match="2 code versions.*--allow-mixed"):
        merge_sweep(spec, tmp_path)
    res = subprocess.run(CLI + ["sweep", "merge", str(tmp_path)], capture_output=True, text=True, timeout=60, env=_env())
    assert res.returncode == 2 and "--allow-mixed" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(CLI + ["sweep", "merge", str(tmp_path), "--allow-mixed"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 0, res.stderr
    with h5py.File(tmp_path / "mix.h5") as f:
        mixed = json.loads(f.attrs["mixed_code_versions"])
        assert f.attrs["shards_code_version"] == "mixed"
    assert sorted(mixed.values()) == [1, 3] and any(k.endswith("b" * 40) for k in mixed)


def test_large_grid_needs_yes_and_scans_list_the_store(tmp_path, monkeypatch):
    import studies.sweep.runner as runner

    big = {"sweep": {"name": "big", "task": "demo.busy", "root_seed": 1},
           "grid": {"size": list(range(1, 401)), "scale": {"start": 0.1, "stop": 1.0, "num": 300}}}
    t0 = time.monotonic()
    with pytest.raises(SweepError, match="120,000 tasks.*--yes"):
        run_sweep(parse_spec(big), tmp_path / "big", progress=False)
    assert time.monotonic() - t0 < 2  # refused before planning
    spec_file = tmp_path / "big.toml"
    spec_file.write_text(to_toml(big))
    res = subprocess.run(CLI + ["sweep", "run", str(spec_file), "--out", str(tmp_path / "big")], capture_output=True,
                         text=True, timeout=60, env=_env())
    assert res.returncode == 2 and "--yes" in res.stderr and len(res.stderr.strip().splitlines()) == 1

    # a fresh run opens no shard path; a resume opens only the shards that exist
    opened = []
    real = runner.read_shard
    monkeypatch.setattr(runner, "read_shard", lambda p, **kw: opened.append(p) or real(p, **kw))
    small = parse_spec({"sweep": {"name": "small", "task": "demo.busy", "root_seed": 1, "seeds": 3},
                        "params": {"seconds": 0.0}, "grid": {"size": [2, 3]}})
    run_sweep(small, tmp_path / "s", executor=SerialExecutor(), task_index=0, task_count=4, progress=False)
    assert opened == []
    res = run_sweep(small, tmp_path / "s", executor=SerialExecutor(), resume=True, progress=False)
    assert len(opened) == 4 and (res.skipped, res.completed) == (4, 2)


def test_unreachable_dask_scheduler_is_a_quick_one_line_error():
    pytest.importorskip("distributed")
    from studies.sweep import DaskExecutor

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ParameterError) as err:
        DaskExecutor(address=f"tcp://127.0.0.1:{port}", connect_timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert err.value.parameter == "scheduler" and f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)
