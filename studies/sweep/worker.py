"""Running one task inside a worker: retries, per-task log, the shard.

:func:`execute_task` is the only function shipped to workers (process pool,
Dask worker, Slurm array job): it runs the registered task with its seed,
retries on exceptions, writes the shard (complete, or failed with the last
traceback) and returns a small :class:`TaskOutcome`. Output printed by the task
and log records go to ``OUT/logs/<id>.log``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .provenance import hostname, provenance, utc_now
from .shards import Store, read_shard, write_shard

__all__ = ["TaskRun", "TaskOutcome", "execute_task", "record_failure", "limit_threads", "report_progress", "ProgressWriter", "THREAD_VARS"]

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


@dataclass(frozen=True)
class TaskOutcome:
    """What the coordinator learns about a finished task."""

    task_id: str
    index: int
    status: str  # "complete" or "failed"
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

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


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
    store.mark_running(run.task_id, {"index": run.index, "progress": float(fraction), "note": note})


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


def execute_task(run: TaskRun) -> TaskOutcome:
    """Run one task with retries and write its shard. Never raises for task errors."""
    global _current
    from studies.sweep.tasks import check_result, get_task

    t_start = time.time()
    provenance()  # cached per process: the git lookup is not charged to the shard write
    limit_threads(run.threads)
    store = Store(run.out)
    store.mark_running(run.task_id, {"index": run.index, "progress": 0.0})
    log_path = store.log_path(run.task_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = utc_now()
    data, error, tb, attempts, compute = None, "", "", 0, 0.0
    with open(log_path, "a", buffering=1) as log:
        log.write(f"=== {started} task {run.task_id} (#{run.index}) {run.task} seed={run.seed} on {hostname()} pid={os.getpid()}\n")
        log.write(f"params: {run.params}\n")
        for attempts in range(1, run.retries + 2):
            t0 = time.perf_counter()
            try:
                task = get_task(run.task)
                _current = (store, run)
                with _capture(log):
                    result = task(copy.deepcopy(run.params), run.seed)
                data = check_result(run.task, result)
                error = tb = ""
            except Exception as exc:  # the task's own failure: record, maybe retry
                data = None
                error = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc()
                log.write(f"--- attempt {attempts} failed after {time.perf_counter() - t0:.3f} s\n{tb}")
            finally:
                _current = None
                compute = time.perf_counter() - t0
            if data is not None:
                break
        status = "complete" if data is not None else "failed"
        t1 = time.perf_counter()
        attrs = {**_attrs(run), "status": status, "attempts": attempts, "error": error, "traceback": tb,
                 "compute_s": compute, "started": started, "finished": utc_now()}
        try:
            write_shard(store.shard_path(run.task_id), attrs, data)
        except Exception as exc:  # e.g. a full disk: record the failure if that still can be written
            status, error, tb = "failed", f"could not write the shard: {type(exc).__name__}: {exc}", traceback.format_exc()
            log.write(tb)
            write_shard(store.shard_path(run.task_id), {**attrs, "status": status, "error": error, "traceback": tb}, None)
        write_s = time.perf_counter() - t1
        log.write(f"=== {utc_now()} {status} after {attempts} attempt(s): compute {compute:.3f} s, write {write_s:.4f} s {error}\n")
    store.clear_running(run.task_id)
    return TaskOutcome(run.task_id, run.index, status, attempts, compute, write_s, error, hostname(), t_start, time.time())


def record_failure(run: TaskRun, error: str, tb: str = "", attempts: int = 1) -> TaskOutcome:
    """Record a task that could not run to completion (its worker died): a failed shard.

    Never overwrites a complete shard (the task may have finished before the
    worker was lost).
    """
    store = Store(run.out)
    path = store.shard_path(run.task_id)
    old = read_shard(path, measurements=False)
    if old is not None and old.status == "complete":
        return TaskOutcome(run.task_id, run.index, "complete", int(old.attrs.get("attempts", 1)), 0.0, 0.0)
    attrs = {**_attrs(run), "status": "failed", "attempts": attempts, "error": error, "traceback": tb,
             "compute_s": float("nan"), "started": "", "finished": utc_now()}
    write_shard(path, attrs, None)
    log_path = store.log_path(run.task_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"=== {utc_now()} failed (recorded by the coordinator): {error}\n{tb}")
    store.clear_running(run.task_id)
    return TaskOutcome(run.task_id, run.index, "failed", attempts, float("nan"), 0.0, error)
