"""Running one task inside a worker: retries, per-task log, the shard.

:func:`execute_task` is the only function shipped to workers (process pool,
Dask worker, Slurm array job): it runs the registered task with its seed,
retries on exceptions, writes the shard (complete, or failed with the last
traceback) and returns a small :class:`TaskOutcome`. Output printed by the task
and log records go to ``OUT/logs/<id>.log``.

A task attempt longer than ``TaskRun.timeout`` seconds is stopped by SIGALRM
where the task runs in a process's main thread (pool workers, the serial
executor); the pool coordinator kills workers that do not stop (a compiled
kernel ignores the alarm). A failure to write (a full disk) is reported in the
outcome, never raised: the coordinator records it and goes on.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from studies.provenance import hostname, provenance, utc_now
from .shards import Store, read_shard, write_shard

__all__ = ["TaskRun", "TaskOutcome", "execute_task", "record_failure", "record_interrupted", "limit_threads", "init_worker",
           "report_progress", "ProgressWriter", "THREAD_VARS", "TaskTimeout", "timeout_message"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class TaskRun:
    """Everything a worker needs to run one task (small, picklable)."""

    task: str
    task_id: str
    index: int
    replicate: int
    seed: int
    root_seed: int
    params: dict[str, Any]
    out: str
    retries: int = 0
    threads: int | None = 1  # threads for BLAS/numba/torch in the worker; None leaves them alone
    timeout: float | None = None  # seconds per attempt; None: no limit


@dataclass(frozen=True)
class TaskOutcome:
    """What the coordinator learns about a finished task."""

    task_id: str
    index: int
    status: str  # "complete", "failed" or "interrupted"
    attempts: int
    compute_s: float
    write_s: float
    error: str = ""
    host: str = field(default_factory=hostname)
    started_at: float = float("nan")  # wall clock (time.time()) when the worker took the task
    finished_at: float = float("nan")  # ... and when its shard was written


def limit_threads(n: int | None) -> None:
    """Pin BLAS / OpenMP / numba / torch to ``n`` threads in this process (None: no change).

    Environment variables cover libraries imported later; numba and torch, if
    already imported, are set directly. One thread per worker keeps workers from
    oversubscribing the cores and makes results independent of the executor.
    """
    if n is None:
        return
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "numba" in sys.modules:
        import numba

        # Numba read NUMBA_NUM_THREADS when it was imported, and each compilation re-reads the
        # environment: a different value there, once its pool is up, fails every later compile
        # ("Cannot set NUMBA_NUM_THREADS ..."). Keep the variable at the pool size and limit
        # the threads a kernel uses instead.
        os.environ["NUMBA_NUM_THREADS"] = str(numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def init_worker(threads: int | None, devices: tuple[str, ...] | None = None, counter=None) -> None:
    """Initializer of pool workers: Ctrl-C is the coordinator's to handle, then thread limits, then the GPU.

    A terminal's Ctrl-C reaches the whole process group; a worker that raised
    KeyboardInterrupt inside a task would report it as the task's result and take
    the next one. The coordinator stops the workers itself (one shutdown path).
    With ``devices`` the worker takes the next slot of the pool's shared ``counter``
    and its device, round robin (:func:`studies.sweep.devices.init_device_worker`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with SIGINT blocked (see executors._sigint_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    limit_threads(threads)
    if devices:
        from .devices import init_device_worker

        init_device_worker(devices, counter)


class TaskTimeout(BaseException):
    """Raised in a task that ran past its timeout (a BaseException: ``except Exception`` in a task does not swallow it)."""


def timeout_message(seconds: float) -> str:
    return f"timeout: the task ran longer than {seconds:g} s (sweep.timeout)"


@contextlib.contextmanager
def _alarm(seconds: float | None):
    """SIGALRM after ``seconds`` raises TaskTimeout (main thread of a process only; elsewhere no-op)."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def ring(signum, frame):
        raise TaskTimeout(seconds)

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Log:
    """The task's log file; a write that fails (a full disk) is dropped rather than failing the task."""

    def __init__(self, path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", buffering=1)
        except OSError:
            self._fh = None

    def write(self, text: str) -> int:
        if self._fh is not None:
            try:
                return self._fh.write(text)
            except OSError:
                pass
        return len(text)

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError:
                pass

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None


_current: tuple[Store, TaskRun] | None = None
_last_report = 0.0


def report_progress(fraction: float, note: str = "") -> None:
    """Record progress of the running task (0..1) in its running marker, at most once a second.

    Shown by ``attnflow sweep status``; does nothing outside a sweep worker.
    """
    global _last_report
    if _current is None:
        return
    now = time.monotonic()
    if now - _last_report < 1.0 and fraction < 1.0:
        return
    _last_report = now
    store, run = _current
    try:
        store.mark_running(run.task_id, {"index": run.index, "progress": float(fraction), "note": note})
    except OSError:  # progress is a nicety: a full disk must not fail the task
        pass


class ProgressWriter:
    """A ``writer`` for :func:`integrators.solve` that only reports progress t / t_end."""

    def __init__(self, t_end: float, t0: float = 0.0):
        self.t0, self.t_end = float(t0), float(t_end)

    def append(self, t, x, observables) -> None:
        report_progress((float(t) - self.t0) / (self.t_end - self.t0))

    def close(self, status, stats) -> None:
        pass


@contextlib.contextmanager
def _capture(log):
    """Send prints, warnings and log records of the task to its log file."""
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        root.removeHandler(handler)


def _attrs(run: TaskRun) -> dict[str, Any]:
    from .plan import canonical_json

    return {
        "task": run.task,
        "task_id": run.task_id,
        "index": run.index,
        "replicate": run.replicate,
        "seed": run.seed,
        "root_seed": run.root_seed,
        "params": canonical_json(run.params),
    }


def _device_attrs() -> dict[str, str]:
    """``{"device": "cuda:0 (device 3)"}`` in a worker given a GPU (torch's name, then the physical id); else nothing.

    Nothing on the CPU keeps the shards of sweeps without GPU options as they were.
    """
    from .devices import device_assignment

    a = device_assignment()
    return {} if a is None else {"device": f"{a.torch_device} (device {a.device_id})"}


def execute_task(run: TaskRun) -> TaskOutcome:
    """Run one task with retries and write its shard. Never raises for task errors or failed writes."""
    global _current
    from studies.sweep.tasks import check_result, get_task

    t_start = time.time()
    provenance()  # cached per process: the git lookup is not charged to the shard write
    limit_threads(run.threads)
    store = Store(run.out)
    try:
        store.mark_running(run.task_id, {"index": run.index, "progress": 0.0})
    except OSError:
        pass  # the shard write below reports a full disk
    started = utc_now()
    data, error, tb, attempts, compute = None, "", "", 0, 0.0
    log = _Log(store.log_path(run.task_id))
    try:
        log.write(f"=== {started} task {run.task_id} (#{run.index}) {run.task} seed={run.seed} on {hostname()} pid={os.getpid()}\n")
        log.write(f"params: {run.params}\n")
        device = _device_attrs()
        if device:
            log.write(f"device: {device['device']}\n")
        for attempts in range(1, run.retries + 2):
            t0 = time.perf_counter()
            timed_out = False
            try:
                # the coordinator checked the spec (and any opt-in for module:function tasks)
                task = get_task(run.task, allow_code=True)
                _current = (store, run)
                with _alarm(run.timeout), _capture(log):
                    result = task(copy.deepcopy(run.params), run.seed)
                data = check_result(run.task, result)
                error = tb = ""
            except TaskTimeout:
                data, timed_out = None, True
                error, tb = timeout_message(run.timeout), traceback.format_exc()
                log.write(f"--- attempt {attempts} stopped after {time.perf_counter() - t0:.3f} s: {error}\n")
            except Exception as exc:  # the task's own failure: record, maybe retry
                data = None
                error = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc()
                log.write(f"--- attempt {attempts} failed after {time.perf_counter() - t0:.3f} s\n{tb}")
            finally:
                _current = None
                compute = time.perf_counter() - t0
            if data is not None or timed_out:  # a task that hung once would hang again: no retry
                break
        status = "complete" if data is not None else "failed"
        t1 = time.perf_counter()
        attrs = {**_attrs(run), "status": status, "attempts": attempts, "error": error, "traceback": tb,
                 "compute_s": compute, "started": started, "finished": utc_now(), **_device_attrs()}
        try:
            write_shard(store.shard_path(run.task_id), attrs, data)
        except Exception as exc:  # e.g. a full disk: record the failure if that still can be written
            status, error, tb = "failed", f"could not write the shard: {type(exc).__name__}: {exc}", traceback.format_exc()
            log.write(tb)
            try:
                write_shard(store.shard_path(run.task_id), {**attrs, "status": status, "error": error, "traceback": tb}, None)
            except Exception as exc2:  # not even that: the outcome carries the error to the coordinator
                error += f" (the failure could not be recorded either: {type(exc2).__name__}: {exc2})"
        write_s = time.perf_counter() - t1
        log.write(f"=== {utc_now()} {status} after {attempts} attempt(s): compute {compute:.3f} s, write {write_s:.4f} s {error}\n")
    finally:
        log.close()
    store.clear_running(run.task_id)
    return TaskOutcome(run.task_id, run.index, status, attempts, compute, write_s, error, hostname(), t_start, time.time())


def _record(run: TaskRun, status: str, error: str, tb: str, attempts: int) -> TaskOutcome:
    """Write a shard without measurements for a task the coordinator gave up on; never raises.

    Never overwrites a complete shard (the task may have finished just before
    its worker was lost). A write that fails (a full disk) is reported in the
    outcome's error.
    """
    store = Store(run.out)
    path = store.shard_path(run.task_id)
    old = read_shard(path, measurements=False)
    if old is not None and old.status == "complete":
        store.clear_running(run.task_id)
        return TaskOutcome(run.task_id, run.index, "complete", int(old.attrs.get("attempts", 1)), 0.0, 0.0)
    attrs = {**_attrs(run), "status": status, "attempts": attempts, "error": error, "traceback": tb,
             "compute_s": float("nan"), "started": "", "finished": utc_now()}
    try:
        write_shard(path, attrs, None)
    except Exception as exc:
        error += f" (could not be recorded: {type(exc).__name__}: {exc})"
    log = _Log(store.log_path(run.task_id))
    log.write(f"=== {utc_now()} {status} (recorded by the coordinator): {error}\n{tb}")
    log.close()
    try:
        store.clear_running(run.task_id)
    except OSError:
        pass
    return TaskOutcome(run.task_id, run.index, status, attempts, float("nan"), 0.0, error)


def record_failure(run: TaskRun, error: str, tb: str = "", attempts: int = 1) -> TaskOutcome:
    """Record a task that could not run to completion (its worker died, timed out): a failed shard."""
    return _record(run, "failed", error, tb, attempts)


def record_interrupted(run: TaskRun, reason: str) -> TaskOutcome:
    """Record a task stopped by an interrupted sweep (SIGINT, SIGTERM, an error): an ``interrupted`` shard.

    ``--resume`` re-runs it; ``status`` counts it as missing (interrupted).
    """
    return _record(run, "interrupted", f"interrupted: {reason}", "", 0)
