"""Stopping a sweep (issue 10): SIGINT or SIGTERM to the coordinator, Ctrl-C to its process group,
and a second run on a directory that a first one holds.

Each sweep runs as a CLI subprocess in a new session, so every process it starts (coordinator,
pool workers, multiprocessing's resource tracker) can be found afterwards by its session id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studies.sweep import LocalExecutor, load_study, merge_sweep, parse_spec, run_sweep, sweep_status
from studies.sweep.spec import to_toml

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

CLI = [sys.executable, "-m", "studies.cli"]
SPEC = {  # 12 tasks of 0.3 s: about 2 s on two workers
    "sweep": {"name": "sig", "task": "demo.busy", "root_seed": 5, "seeds": 4},
    "params": {"seconds": 0.3},
    "grid": {"size": [2, 3, 4]},
}


def _env() -> dict:
    import studies

    return dict(os.environ, PYTHONPATH=str(Path(studies.__file__).resolve().parents[1]))


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # state, ppid, pgrp, session
            found.append(int(d))
    return found


def _wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def measurements(path: Path) -> dict:
    """Every stored array of a study file as raw bytes (strings as tuples), timings left out."""
    st = load_study(path)
    return {k: (tuple(a.ravel()) if a.dtype == object else a.tobytes())
            for k, (_, a) in st["vars"].items() if k not in ("task_compute_s", "task_error")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sig_ref")
    spec = parse_spec(SPEC)
    assert run_sweep(spec, out, executor=LocalExecutor(workers=2), progress=False).completed == 12
    return measurements(merge_sweep(spec, out).path)


@pytest.mark.parametrize("signals, to_group, code", [
    ((signal.SIGINT,), False, 130),
    ((signal.SIGTERM,), False, 143),
    ((signal.SIGINT, signal.SIGINT, signal.SIGINT), True, 130),  # Ctrl-C pressed three times in a terminal
], ids=["sigint", "sigterm", "ctrl-c-thrice"])
def test_a_signal_stops_the_sweep_and_resume_gives_the_same_bytes(tmp_path, reference, signals, to_group, code):
    spec_file = tmp_path / "sig.toml"
    spec_file.write_text(to_toml(SPEC))
    out = tmp_path / "out"
    proc = subprocess.Popen(CLI + ["sweep", "run", str(spec_file), "--out", str(out), "--workers", "2", "--no-progress"],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(lambda: len(list(out.glob("shards/*/*.h5"))) >= 2 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        assert len(_session(proc.pid)) >= 3  # the coordinator and its two workers (and the resource tracker)
        t0 = time.monotonic()
        for sig in signals:
            (os.killpg if to_group else os.kill)(proc.pid, sig)
            time.sleep(0.1)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code
    assert "Traceback" not in err and f"interrupted by {signal.Signals(signals[0]).name}" in err
    _wait_for(lambda: not _session(proc.pid), timeout=5)  # no worker or tracker left behind

    st = sweep_status(parse_spec(SPEC), out)
    assert st.running == 0 and st.done < 12
    assert st.interrupted >= 1  # the tasks the workers were running when the signal came
    res = subprocess.run(CLI + ["sweep", "run", str(out), "--resume", "--merge", "--workers", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stderr
    assert f"{st.done} already complete, {12 - st.done} completed" in res.stdout
    assert measurements(out / "sig.h5") == reference


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    spec_file = tmp_path / "lock.toml"
    # 6 tasks of 1.2 s on one worker: the first run outlasts the second's start even on a loaded machine
    spec_file.write_text(to_toml(SPEC | {"sweep": {**SPEC["sweep"], "name": "lock", "seeds": 2}, "params": {"seconds": 1.2}}))
    out = tmp_path / "out"
    first = subprocess.Popen(CLI + ["sweep", "run", str(spec_file), "--out", str(out), "--workers", "1", "--no-progress"],
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(lambda: any((out / "running").glob("*.json")) or first.poll() is not None)
        second = subprocess.run(CLI + ["sweep", "run", str(spec_file), "--out", str(out), "--resume", "--no-progress"],
                                capture_output=True, text=True, timeout=60, env=_env())
        assert first.poll() is None, "the first run must still hold the lock"
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "locked" in second.stderr and f"pid {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.returncode == 0, err
    logs = sorted(out.glob("logs/*/*.log"))
    assert len(logs) == 6
    for log in logs:  # every task computed exactly once
        assert sum(line.startswith("=== ") and " task " in line for line in log.read_text().splitlines()) == 1

    # a lock file left by a dead process is taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "sweep.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    res = subprocess.run(CLI + ["sweep", "run", str(out), "--resume", "--no-progress"], capture_output=True, text=True,
                         timeout=60, env=_env())
    assert res.returncode == 0, res.stderr
    assert f"took over the lock left by dead pid {dead.pid}" in (out / "sweep.log").read_text()
