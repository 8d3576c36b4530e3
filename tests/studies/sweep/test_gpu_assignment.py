"""Several GPUs (issue 11, item 6): one device per worker, chosen by the executor.

On the CPU the assignment logic runs with a fake device list: the executors are handed device
ids (or the CUDA probe is replaced) and a probe task, run in the workers, records what its
process was given (slot, ``CUDA_VISIBLE_DEVICES``, the torch device). Nothing here touches
CUDA except the ``gpu``-marked test, which runs a tiny sweep on a real GPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from integrators.validation import ParameterError
from studies.sweep import (
    LocalExecutor,
    SerialExecutor,
    Store,
    load_study,
    merge_sweep,
    parse_spec,
    plan_tasks,
    read_shard,
    run_sweep,
    sbatch_script,
)
from studies.sweep import devices as dev
from studies.sweep.spec import to_toml

MODULE = "gpu_probe_tasks"
# A task that reports what its worker process was given. With ``expect`` > 1 it waits (at most
# 30 s) until that many distinct worker processes have started a task, so every worker of the
# pool runs one whatever the start-up order on a loaded machine.
TASK_SOURCE = '''
import os, time
import numpy as np
from studies.sweep.devices import device_assignment, task_device

def probe(params, seed):
    d = params["barrier"]
    open(os.path.join(d, str(os.getpid())), "a").close()
    stop = time.monotonic() + 30.0
    while len(os.listdir(d)) < params["expect"] and time.monotonic() < stop:
        time.sleep(0.02)
    a = device_assignment()
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    extra = {}
    if params.get("count_cuda", False):  # on a real GPU: what CUDA shows this worker
        import torch
        extra = {"cuda_count": torch.cuda.device_count(), "current": torch.zeros(1, device=task_device()).device.index}
    return {**extra, "pid": os.getpid(), "slot": -1 if a is None else a.slot,
            "visible": int(env) if env.isdigit() else -1,
            "ordinal": int(task_device().split(":")[1]) if task_device() != "cpu" else -1}
'''
FAKE = ("5", "6", "7")  # three fake GPUs, named as CUDA_VISIBLE_DEVICES would name them


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gpu_tasks")
    (d / f"{MODULE}.py").write_text(TASK_SOURCE)
    return d


@pytest.fixture
def code_path(task_dir, monkeypatch):
    """The probe importable here and in spawned workers (they inherit sys.path); the CUDA variable restored after."""
    monkeypatch.syspath_prepend(str(task_dir))
    monkeypatch.delenv(dev.CUDA_ENV, raising=False)
    monkeypatch.setattr(dev, "_assigned", None)
    return task_dir


def probe_spec(tmp_path: Path, n_tasks: int, expect: int, name: str = "probe") -> dict:
    barrier = tmp_path / f"barrier-{name}"
    barrier.mkdir(exist_ok=True)
    return {"sweep": {"name": name, "task": f"{MODULE}:probe", "root_seed": 3},
            "params": {"barrier": str(barrier), "expect": expect}, "grid": {"i": list(range(n_tasks))}}


def records(spec, out: Path) -> list[dict]:
    """What each task saw, with its shard's ``device`` attribute."""
    rows = []
    for t in plan_tasks(spec):
        shard = read_shard(Store(out).shard_path(t.task_id))
        assert shard is not None and shard.status == "complete", shard and shard.attrs.get("error")
        rows.append({k: int(v) for k, v in shard.measurements.items()} | {"device": shard.attrs.get("device")})
    return rows


def check_round_robin(rows: list[dict], devices: tuple[str, ...], workers: int) -> None:
    """Worker k saw CUDA_VISIBLE_DEVICES = devices[k mod G] as cuda:0; one slot per process, every worker used."""
    slot_of_pid = {}
    for r in rows:
        assert r["visible"] == int(devices[r["slot"] % len(devices)])
        assert r["ordinal"] == 0
        assert r["device"] == f"cuda:0 (device {r['visible']})"
        assert slot_of_pid.setdefault(r["pid"], r["slot"]) == r["slot"]
    assert sorted(slot_of_pid.values()) == list(range(workers))


# ----------------------------------------------------------------------------- the device list


def test_resolve_devices_from_the_cuda_count_and_the_visible_list(monkeypatch):
    monkeypatch.setattr(dev, "cuda_device_count", lambda: 3)
    monkeypatch.delenv(dev.CUDA_ENV, raising=False)
    assert dev.resolve_devices() == ()
    assert dev.resolve_devices(gpus=2) == ("0", "1")
    assert dev.resolve_devices(gpus="all") == ("0", "1", "2")
    assert dev.resolve_devices(devices="2,0") == ("2", "0")
    with pytest.raises(ParameterError, match="'gpus'.*4 GPUs asked for, 3 visible"):
        dev.resolve_devices(gpus=4)
    with pytest.raises(ParameterError, match="'devices'.*CUDA has 3"):
        dev.resolve_devices(devices="3")
    with pytest.raises(ParameterError, match="'gpus'"):
        dev.resolve_devices(gpus=0)
    # under a scheduler's CUDA_VISIBLE_DEVICES the devices handed out are its entries, not 0..G-1
    monkeypatch.setenv(dev.CUDA_ENV, "5,6,7")
    assert dev.resolve_devices(gpus=2) == ("5", "6")
    assert dev.resolve_devices(devices="7") == ("7",)
    with pytest.raises(ParameterError, match="'devices'.*0 not among .*5,6,7"):
        dev.resolve_devices(devices="0")
    monkeypatch.setattr(dev, "cuda_device_count", lambda: 0)
    for kwargs in ({"gpus": 1}, {"devices": "5"}):
        with pytest.raises(ParameterError, match="CUDA sees no device"):
            dev.resolve_devices(**kwargs)


@pytest.mark.parametrize("text", ["", "0,,1", "a", "0,0", "1;2", "-1"])
def test_malformed_device_lists_are_refused(text):
    with pytest.raises(ParameterError, match="'devices'"):
        dev.parse_devices(text)


def test_round_robin_initializer_narrows_each_worker(monkeypatch):
    # what each pool worker's initializer does, one after the other in this process
    monkeypatch.delenv(dev.CUDA_ENV, raising=False)
    monkeypatch.setattr(dev, "_assigned", None)
    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(5):
        dev.init_device_worker(FAKE, counter)
        seen.append((dev.device_assignment().slot, os.environ[dev.CUDA_ENV], dev.task_device()))
    assert seen == [(k, FAKE[k % 3], "cuda:0") for k in range(5)]
    assert dev.backend_device("torch") == "cuda:0" and dev.backend_device("numba") is None


# ----------------------------------------------------------------------------- executors


@pytest.mark.parametrize("workers", [2, 4])
def test_local_pool_gives_each_worker_its_device(tmp_path, code_path, workers):
    spec = parse_spec(probe_spec(tmp_path, n_tasks=2 * workers, expect=workers), allow_code_tasks=True)
    res = run_sweep(spec, tmp_path / "out", executor=LocalExecutor(workers=workers, devices=FAKE), progress=False)
    assert res.ok
    check_round_robin(records(spec, tmp_path / "out"), FAKE, workers)
    assert os.environ.get(dev.CUDA_ENV) is None  # the coordinator's own variable untouched
    merged = load_study(merge_sweep(spec, tmp_path / "out").path)["vars"]
    assert all(str(v).startswith("cuda:0 (device ") for v in merged["task_device"][1].ravel())


def test_without_gpu_options_nothing_changes(tmp_path, code_path):
    spec = parse_spec(probe_spec(tmp_path, n_tasks=2, expect=1), allow_code_tasks=True)
    run_sweep(spec, tmp_path / "out", executor=LocalExecutor(workers=1), progress=False)
    for r in records(spec, tmp_path / "out"):
        assert (r["slot"], r["visible"], r["ordinal"], r["device"]) == (-1, -1, -1, None)
    with h5py.File(merge_sweep(spec, tmp_path / "out").path) as f:
        assert "task_device" not in f


def test_serial_executor_uses_the_device_without_narrowing(tmp_path, code_path, monkeypatch):
    # a Slurm array task given one of the node's GPUs: found in the visible list, the variable kept
    monkeypatch.setenv(dev.CUDA_ENV, "5,6")
    spec = parse_spec(probe_spec(tmp_path, n_tasks=2, expect=1), allow_code_tasks=True)
    run_sweep(spec, tmp_path / "out", executor=SerialExecutor(devices=("6",)), progress=False)
    rows = records(spec, tmp_path / "out")
    assert [(r["slot"], r["visible"], r["ordinal"], r["device"]) for r in rows] == [(0, -1, 1, "cuda:1 (device 6)")] * 2
    assert os.environ[dev.CUDA_ENV] == "5,6" and dev.device_assignment() is None  # restored after the run
    with pytest.raises(ParameterError, match="'gpus'.*one GPU"):
        SerialExecutor(devices=FAKE)


def test_torch_tasks_are_sent_to_the_given_device(tmp_path, code_path, monkeypatch):
    """A flow task on torch asks solve for the worker's GPU (refused on this CPU machine); numpy stays on the CPU."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("the fake device would be real here")
    monkeypatch.setenv(dev.CUDA_ENV, "5")
    spec = parse_spec({"sweep": {"name": "dev", "task": "flow.phase_point", "root_seed": 7},
                       "params": {"n": 4, "batch": 2, "t_end": 0.5, "n_save": 2, "dt": 0.1, "method": "euler"},
                       "grid": {"backend": ["torch", "numpy"]}})
    run_sweep(spec, tmp_path / "out", executor=SerialExecutor(devices=("5",)), progress=False)
    shards = {t.params["backend"]: read_shard(Store(tmp_path / "out").shard_path(t.task_id)) for t in plan_tasks(spec)}
    assert shards["torch"].status == "failed" and "CUDA was asked for" in shards["torch"].attrs["error"]
    assert shards["numpy"].status == "complete" and shards["numpy"].attrs["device"] == "cuda:0 (device 5)"


def test_dask_local_cluster_gives_each_worker_its_device(tmp_path, code_path):
    pytest.importorskip("distributed")
    from studies.sweep import DaskExecutor

    spec = parse_spec(probe_spec(tmp_path, n_tasks=4, expect=2), allow_code_tasks=True)
    ex = DaskExecutor(workers=2, devices=FAKE)
    try:
        res = run_sweep(spec, tmp_path / "out", executor=ex, progress=False)
    finally:
        ex.close()
    assert res.ok
    check_round_robin(records(spec, tmp_path / "out"), FAKE, 2)
    with pytest.raises(ParameterError, match="'devices'"):
        DaskExecutor(address="tcp://127.0.0.1:1", devices=FAKE)


# ----------------------------------------------------------------------------- command line


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from studies.cli.main import main

    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cli_gpus_reach_the_workers(tmp_path, code_path, monkeypatch, capsys):
    monkeypatch.setattr(dev, "cuda_device_count", lambda: 3)
    monkeypatch.setenv(dev.CUDA_ENV, ",".join(FAKE))
    raw = probe_spec(tmp_path, n_tasks=4, expect=2)
    spec_path = tmp_path / "probe.toml"
    spec_path.write_text(to_toml(raw))
    out = tmp_path / "out"
    rc, err = _cli(["sweep", "run", str(spec_path), "--out", str(out), "--gpus", "2", "--no-progress",
                    "--allow-code-tasks"], capsys)
    assert rc == 0, err
    spec = parse_spec(raw, allow_code_tasks=True)
    check_round_robin(records(spec, out), FAKE[:2], 2)


def test_cli_errors_name_the_option(tmp_path, code_path, monkeypatch, capsys):
    spec_path = tmp_path / "probe.toml"
    spec_path.write_text(to_toml(probe_spec(tmp_path, n_tasks=1, expect=1)))
    base = ["sweep", "run", str(spec_path), "--out", str(tmp_path / "out"), "--allow-code-tasks", "--no-progress"]
    monkeypatch.setattr(dev, "cuda_device_count", lambda: 0)
    rc, err = _cli(base + ["--gpus", "1"], capsys)
    assert rc == 2 and "'gpus'" in err and "CUDA sees no device" in err and len(err.strip().splitlines()) == 1
    rc, err = _cli(base + ["--cuda-cluster"], capsys)
    assert rc == 2 and "--cuda-cluster needs --executor dask" in err
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        rc, err = _cli(base + ["--executor", "dask", "--cuda-cluster"], capsys)
        assert rc == 2 and "--cuda-cluster needs dask-cuda" in err and "attnflow[cuda-cluster]" in err
    assert not (tmp_path / "out" / "shards").exists()  # refused before anything ran


# ----------------------------------------------------------------------------- Slurm


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH ")]


def test_sbatch_gres_line_and_command(tmp_path):
    plain = sbatch_script(tmp_path / "s.toml", tmp_path / "o", 6, name="g")
    assert sbatch_script(tmp_path / "s.toml", tmp_path / "o", 6, name="g", gpus_per_task=0) == plain
    assert not any("--gres" in d for d in _directives(plain)) and " --gpus" not in plain
    one = sbatch_script(tmp_path / "s.toml", tmp_path / "o", 6, name="g", gpus_per_task=1)
    assert _directives(one) == _directives(plain) + ["#SBATCH --gres=gpu:1"]
    assert one.splitlines()[-1].endswith("--no-progress --gpus 1")  # serial: the array task's one GPU
    two = sbatch_script(tmp_path / "s.toml", tmp_path / "o", 6, name="g", chunk=4, gpus_per_task=2)
    assert "#SBATCH --gres=gpu:2" in two and two.splitlines()[-1].endswith("--executor local --gpus 2")
    with pytest.raises(ParameterError, match="gpus_per_task"):
        sbatch_script(tmp_path / "s.toml", tmp_path / "o", 6, name="g", gpus_per_task=-1)


def test_submit_dry_run_writes_the_gres_line(tmp_path, capsys):
    from studies.sweep.tasks import TASKS  # noqa: F401  (demo.busy is registered there)

    spec = {"sweep": {"name": "gres", "task": "demo.busy", "root_seed": 1}, "grid": {"size": [2, 3]}}
    path = tmp_path / "gres.toml"
    path.write_text(to_toml(spec))
    rc, err = _cli(["sweep", "submit", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--gpus-per-task", "1"],
                   capsys)
    assert rc == 0, err
    text = (tmp_path / "o" / "slurm" / "gres.sbatch").read_text()
    assert "#SBATCH --gres=gpu:1" in _directives(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "o" / "slurm" / "gres.sbatch")]).returncode == 0


# ----------------------------------------------------------------------------- a real GPU


@pytest.mark.gpu
def test_tiny_flow_sweep_on_one_gpu(tmp_path, code_path):
    """A worker given one GPU sees only it, as cuda:0; torch-backend flow tasks run there and agree with the CPU."""
    import studies

    raw = probe_spec(tmp_path, n_tasks=2, expect=1)
    raw["params"]["count_cuda"] = True
    probe = parse_spec(raw, allow_code_tasks=True)
    devices = dev.resolve_devices(gpus=1)
    run_sweep(probe, tmp_path / "probe", executor=LocalExecutor(devices=devices), progress=False)
    for t in plan_tasks(probe):
        m = read_shard(Store(tmp_path / "probe").shard_path(t.task_id)).measurements
        assert (int(m["cuda_count"]), int(m["current"]), int(m["ordinal"])) == (1, 0, 0)

    spec = {"sweep": {"name": "gpu1", "task": "flow.phase_point", "root_seed": 7, "seeds": 1},
            "params": {"n": 6, "batch": 3, "t_end": 4.0, "n_save": 5, "dt": 0.1, "method": "rk4", "backend": "torch"},
            "grid": {"beta": [1.0, 4.0]}}
    path = tmp_path / "gpu1.toml"
    path.write_text(to_toml(spec))
    env = dict(os.environ, PYTHONPATH=str(Path(studies.__file__).resolve().parents[1]))
    cli = [sys.executable, "-m", "studies.cli", "sweep", "run", str(path), "--no-progress", "--merge"]
    for out, extra in (("gpu", ["--gpus", "1"]), ("cpu", [])):
        res = subprocess.run(cli + ["--out", str(tmp_path / out)] + extra, capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr
    gpu = load_study(tmp_path / "gpu" / "gpu1.h5")["vars"]
    cpu = load_study(tmp_path / "cpu" / "gpu1.h5")["vars"]
    assert all(str(v).startswith("cuda:0 (device ") for v in gpu["task_device"][1].ravel())
    assert "task_device" not in cpu
    for name in ("P", "P_err"):
        np.testing.assert_allclose(gpu[name][1], cpu[name][1], rtol=0, atol=1e-10)
