"""Executors: where tasks run. One interface, ``run(runs) -> iterator of TaskOutcome``.

* :class:`SerialExecutor` -- in this process, one task after the other (debugging,
  ``--task-index`` inside a scheduler's array job).
* :class:`LocalExecutor` -- a process pool (``concurrent.futures``, ``spawn``
  start method: no forked numba/torch thread pools), one thread per worker.
  The default: no set-up.
* :class:`DaskExecutor` -- ``dask.distributed``: a LocalCluster, a scheduler
  address, or any cluster object (dask-jobqueue's SLURMCluster, PBSCluster, ...;
  see :func:`jobqueue_cluster`).

Every executor yields outcomes in completion order; task exceptions are handled
in the worker (:func:`~studies.sweep.worker.execute_task`); a lost worker is
recorded as a failed task after ``retries + 1`` losses, and the rest goes on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

from integrators.validation import ParameterError, check_choice, check_positive_int

from .shards import Store, pid_alive, read_shard
from .worker import THREAD_VARS, TaskOutcome, TaskRun, execute_task, limit_threads, record_failure

__all__ = ["SerialExecutor", "LocalExecutor", "DaskExecutor", "jobqueue_cluster", "JOBQUEUE_CLUSTERS", "EXECUTORS"]

EXECUTORS = ("local", "serial", "dask")
JOBQUEUE_CLUSTERS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
    "oar": "OARCluster",
    "moab": "MoabCluster",
}


def _with_threads(runs: list[TaskRun], threads: int | None) -> list[TaskRun]:
    from dataclasses import replace

    return [r if r.threads == threads else replace(r, threads=threads) for r in runs]


class SerialExecutor:
    """Run the tasks one by one in this process (threads left as they are)."""

    name = "serial"
    workers = 1

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def run(self, runs: list[TaskRun]) -> Iterator[TaskOutcome]:
        for r in _with_threads(runs, self.threads):
            yield execute_task(r)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _thread_env(n: int | None):
    """Thread-count variables for child processes started inside the block."""
    if n is None:
        yield
        return
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(n) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, val in old.items():
            if val is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = val


class LocalExecutor:
    """A pool of worker processes on this machine.

    Parameters
    ----------
    workers : number of processes (default: the number of CPUs).
    threads_per_worker : BLAS/numba/torch threads in each worker (default 1).
    start_method : "spawn" (default) or "forkserver"; "fork" is refused because
        forked numba/torch/OpenMP thread pools can deadlock.
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int = 1, start_method: str = "spawn"):
        self.workers = check_positive_int("workers", workers if workers is not None else (os.cpu_count() or 1))
        self.threads = check_positive_int("threads_per_worker", threads_per_worker)
        self.start_method = check_choice("start_method", start_method, ("spawn", "forkserver"))

    def run(self, runs: list[TaskRun]) -> Iterator[TaskOutcome]:
        pending = {r.task_id: r for r in _with_threads(runs, self.threads)}
        losses: Counter[str] = Counter()
        fruitless = 0  # pool crashes that neither finished nor blamed any task
        while pending:
            pool = procs = None
            broken = finished = False
            try:
                with _thread_env(self.threads):
                    pool = ProcessPoolExecutor(
                        max_workers=min(self.workers, len(pending)),
                        mp_context=mp.get_context(self.start_method),
                        initializer=limit_threads,
                        initargs=(self.threads,),
                    )
                    futures = {pool.submit(execute_task, r): r for r in pending.values()}
                not_done = set(futures)
                while not_done and not broken:
                    done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                    for fut in done:
                        r = futures[fut]
                        try:
                            out = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            procs = getattr(pool, "_processes", None)  # CPython keeps the Process objects
                            continue
                        except Exception as exc:  # e.g. a result that cannot be unpickled
                            out = record_failure(r, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                        pending.pop(r.task_id, None)
                        yield out
                finished = True
            finally:
                # interrupted (Ctrl-C, generator closed): do not wait for running tasks; a broken
                # pool terminates its workers itself, and waiting makes their exit codes final
                if pool is not None:
                    pool.shutdown(wait=finished, cancel_futures=True)
            if broken:
                before = (len(pending), sum(losses.values()))
                yield from self._after_crash(pending, losses, _culprits(procs))
                fruitless = fruitless + 1 if (len(pending), sum(losses.values())) == before else 0
                if fruitless >= 3:
                    for r in list(pending.values()):
                        pending.pop(r.task_id)
                        yield record_failure(r, "the worker pool crashed 3 times without running a task (see the logs)")

    @staticmethod
    def _after_crash(pending: dict[str, TaskRun], losses: Counter, culprits: set[int] | None) -> Iterator[TaskOutcome]:
        """A worker died: blame the task it was running, re-queue the rest.

        ``culprits`` are the pids that died on their own; workers the broken pool
        terminated (SIGTERM) were innocent and their tasks are re-run without
        counting a loss. None: unknown, every dead worker's task is blamed.
        """
        for tid, r in list(pending.items()):
            store = Store(r.out)
            shard = read_shard(store.shard_path(tid), measurements=False)
            if shard is not None and shard.status == "complete":
                pending.pop(tid)  # finished just before the crash; its outcome was lost in transit
                store.clear_running(tid)
                yield TaskOutcome(tid, r.index, "complete", int(shard.attrs.get("attempts", 1)), 0.0, 0.0)
                continue
            info = store.running_info(tid)
            pid = int(info.get("pid", -1)) if info is not None else -1
            if info is None or pid_alive(pid):
                continue  # had not started: run it again
            if culprits is not None and pid not in culprits:
                store.clear_running(tid)
                continue  # stopped by the pool, not by itself
            losses[tid] += 1
            store.clear_running(tid)
            if losses[tid] > r.retries:
                pending.pop(tid)
                yield record_failure(r, f"worker process {info.get('pid')} died while running the task ({losses[tid]} time(s))", attempts=losses[tid])

    def close(self) -> None:
        pass


def _culprits(procs: dict | None) -> set[int] | None:
    """Pids of pool workers that died on their own (not terminated by the broken pool)."""
    if not procs:
        return None
    codes = {pid: p.exitcode for pid, p in procs.items()}
    own = {pid for pid, code in codes.items() if code is not None and code not in (0, -signal.SIGTERM)}
    return own or None


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ParameterError(
            "executor", "the Dask executor needs dask.distributed: pip install 'attnflow[dask]' (or dask[distributed])"
        ) from None
    return distributed


class DaskExecutor:
    """Tasks as futures on a ``dask.distributed`` cluster.

    Parameters
    ----------
    client : an existing ``distributed.Client`` (used as is, not closed).
    address : a scheduler address (``tcp://host:8786``) to connect to.
    cluster : a cluster object (``LocalCluster``, ``dask_jobqueue.SLURMCluster``, ...).
    workers : with none of the above, start a LocalCluster with this many worker
        processes (default: the number of CPUs).
    threads_per_worker : BLAS/numba/torch threads per task (default 1).
    """

    name = "dask"

    def __init__(self, client=None, *, address: str | None = None, cluster=None, workers: int | None = None,
                 threads_per_worker: int = 1):
        dd = _distributed()
        given = sum(x is not None for x in (client, address, cluster))
        if given > 1:
            raise ParameterError("executor", "give one of client, address or cluster")
        self.threads = check_positive_int("threads_per_worker", threads_per_worker)
        self._owned = []
        if client is None:
            if address is not None:
                client = dd.Client(address)
            elif cluster is not None:
                client = dd.Client(cluster)
            else:
                n = check_positive_int("workers", workers if workers is not None else (os.cpu_count() or 1))
                cluster = dd.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                    env={v: str(self.threads) for v in THREAD_VARS},
                )
                self._owned.append(cluster)
                client = dd.Client(cluster)
            self._owned.insert(0, client)
        self.client = client
        self.workers = len(client.scheduler_info().get("workers", {})) or workers or 1

    def run(self, runs: list[TaskRun]) -> Iterator[TaskOutcome]:
        dd = _distributed()
        runs = _with_threads(runs, self.threads)
        token = uuid.uuid4().hex[:8]
        futures = self.client.map(execute_task, runs, key=[f"attnflow-{r.task_id}-{token}" for r in runs], pure=False)
        by_future = dict(zip(futures, runs))
        try:
            for fut in dd.as_completed(futures):
                r = by_future[fut]
                try:
                    out = fut.result()
                except Exception as exc:  # KilledWorker, a lost connection, ...
                    out = record_failure(r, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                fut.release()
                yield out
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        for obj in self._owned:
            obj.close()
        self._owned = []


def jobqueue_cluster(kind: str, *, jobs: int, cores: int, memory: str, walltime: str | None = None,
                     queue: str | None = None, account: str | None = None):
    """A dask-jobqueue cluster (one single-threaded worker process per core), scaled to ``jobs`` jobs.

    ``kind`` is one of :data:`JOBQUEUE_CLUSTERS` (slurm, pbs, sge, lsf, htcondor, oar, moab).
    """
    check_choice("jobqueue", kind, JOBQUEUE_CLUSTERS)
    try:
        import dask_jobqueue
    except ImportError:
        raise ParameterError("jobqueue", "dask-jobqueue is not installed: pip install 'attnflow[dask]'") from None
    kwargs = {"cores": check_positive_int("cores", cores), "processes": cores, "memory": memory}
    if walltime is not None:
        kwargs["walltime"] = walltime
    if queue is not None:
        kwargs["queue"] = queue
    if account is not None:
        kwargs["account"] = account
    cluster = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[kind])(**kwargs)
    cluster.scale(jobs=check_positive_int("jobs", jobs))
    return cluster
