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

Stopping: when the generator returned by ``run`` is closed or an exception
(Ctrl-C, SIGTERM turned into :class:`~studies.sweep.runner.SweepInterrupted`)
passes through it, the local pool cancels its queued tasks, kills its worker
processes (and their children), records the tasks they were running as
``interrupted`` and shuts the pool down without waiting for running tasks.
The local pool also enforces ``TaskRun.timeout``: a worker still on one task
``timeout + 1`` s after it started (the worker's own alarm did not stop it) is
killed and the task recorded as failed (timeout).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator, Sequence

from integrators.validation import ParameterError, check_choice, check_positive_int

from .devices import parse_devices, using_device
from .shards import Store, pid_alive, read_shard
from .worker import (THREAD_VARS, TaskOutcome, TaskRun, execute_task, init_worker, record_failure, record_interrupted,
                     timeout_message)

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
    """Run the tasks one by one in this process (threads left as they are).

    ``devices``: at most one GPU id (a Slurm array task given ``--gres=gpu:1``); the tasks run
    on it, found in this process's ``CUDA_VISIBLE_DEVICES``, which is left as it is.
    """

    name = "serial"
    workers = 1

    def __init__(self, threads: int | None = None, devices: Sequence[str] | None = None):
        self.threads = threads
        self.devices = parse_devices(devices) if devices else ()
        if len(self.devices) > 1:
            raise ParameterError("gpus", f"the serial executor runs one task at a time on one GPU; got {len(self.devices)}")

    def run(self, runs: list[TaskRun]) -> Iterator[TaskOutcome]:
        with using_device(self.devices[0] if self.devices else None):
            for r in _with_threads(runs, self.threads):
                try:
                    out = execute_task(r)
                except BaseException as exc:  # Ctrl-C, SIGTERM inside the task
                    record_interrupted(r, _reason(exc))
                    raise
                yield out

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


def _spawn_all(pool: ProcessPoolExecutor, size: int) -> None:
    """Start every worker now, inside the caller's thread-count environment.

    A spawn-context pool starts its processes lazily, one per submit (the process starts, and
    copies the environment, inside ``submit``); workers started by later submits would
    inherit the coordinator's own environment, so numba and BLAS in them would size their
    pools to every core before the initializer limits them. ``size`` no-op submits in a row
    start ``size`` processes, since none is idle yet to take the next one.
    """
    for _ in range(size):
        pool.submit(os.getpid)


class LocalExecutor:
    """A pool of worker processes on this machine.

    Parameters
    ----------
    workers : number of processes (default: the number of CPUs).
    threads_per_worker : BLAS/numba/torch threads in each worker (default 1).
    start_method : "spawn" (default) or "forkserver"; "fork" is refused because
        forked numba/torch/OpenMP thread pools can deadlock.
    devices : GPU ids (``CUDA_VISIBLE_DEVICES`` entries, see
        :func:`studies.sweep.devices.resolve_devices`): worker ``k`` of the pool sets its
        ``CUDA_VISIBLE_DEVICES`` to ``devices[k mod G]`` when it starts (default workers: G).
        Not checked against CUDA here, so that the assignment can be tested on the CPU.
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads_per_worker: int = 1, start_method: str = "spawn",
                 devices: Sequence[str] | None = None):
        self.devices = parse_devices(devices) if devices else ()
        default = len(self.devices) if self.devices else (os.cpu_count() or 1)
        self.workers = check_positive_int("workers", workers if workers is not None else default)
        self.threads = check_positive_int("threads_per_worker", threads_per_worker)
        self.start_method = check_choice("start_method", start_method, ("spawn", "forkserver"))

    def _initargs(self, ctx) -> tuple:
        if not self.devices:
            return (self.threads,)
        # a fresh counter per pool: after a crash the new pool's workers take the devices from the start
        return (self.threads, self.devices, ctx.Value("i", 0))

    def run(self, runs: list[TaskRun]) -> Iterator[TaskOutcome]:
        pending = {r.task_id: r for r in _with_threads(runs, self.threads)}
        losses: Counter[str] = Counter()
        fruitless = 0  # pool crashes that neither finished nor blamed any task
        while pending:
            pool = procs = None
            broken = finished = False
            before = (len(pending), sum(losses.values()))
            size = min(self.workers, len(pending))
            queued = deque(pending.values())
            inflight: dict = {}  # future -> TaskRun; at most 2 per worker, so stopping cancels the rest at once
            started: dict[str, float] = {}  # task id -> when a worker was first seen running it
            try:
                with _thread_env(self.threads), _sigint_blocked():
                    ctx = mp.get_context(self.start_method)
                    pool = ProcessPoolExecutor(max_workers=size, mp_context=ctx, initializer=init_worker,
                                               initargs=self._initargs(ctx))
                    _spawn_all(pool, size)
                while (queued or inflight) and not broken:
                    while queued and len(inflight) < 2 * size:
                        r = queued.popleft()
                        with _sigint_blocked():  # submit may spawn a worker: it must not start with Ctrl-C live
                            inflight[pool.submit(execute_task, r)] = r
                    done, _ = wait(inflight, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                    for fut in done:
                        r = inflight.pop(fut)
                        try:
                            out = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            procs = getattr(pool, "_processes", None)  # CPython keeps the Process objects
                            continue
                        except Exception as exc:  # e.g. a result that cannot be unpickled
                            out = record_failure(r, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                        if pending.pop(r.task_id, None) is not None:  # not already recorded (timed out)
                            yield out
                    if not broken:
                        for out in self._kill_overdue(pool, inflight, started, pending):
                            yield out
                finished = True
            finally:
                if pool is not None:
                    if finished or broken:
                        # a broken pool terminates its workers itself, and waiting makes their exit codes final
                        pool.shutdown(wait=finished, cancel_futures=True)
                    else:  # stopped (Ctrl-C, SIGTERM, the generator closed, an error): do not wait for tasks
                        _stop_pool(pool, inflight, pending)
            if broken:
                yield from self._after_crash(pending, losses, _culprits(procs))
                fruitless = fruitless + 1 if (len(pending), sum(losses.values())) == before else 0
                if fruitless >= 3:
                    for r in list(pending.values()):
                        pending.pop(r.task_id)
                        yield record_failure(r, "the worker pool crashed 3 times without running a task (see the logs)")

    @staticmethod
    def _kill_overdue(pool, inflight: dict, started: dict[str, float], pending: dict[str, TaskRun]) -> Iterator[TaskOutcome]:
        """Kill the worker of any task past its timeout (plus a grace for the worker's own alarm); record it failed."""
        workers = set((getattr(pool, "_processes", None) or {}).keys())
        now = time.monotonic()
        for r in list(inflight.values()):
            if r.timeout is None or r.task_id not in pending:
                continue
            info = Store(r.out).running_info(r.task_id)
            pid = int(info.get("pid", -1)) if info is not None else -1
            if pid not in workers:
                continue  # not started yet (or its marker could not be written)
            t0 = started.setdefault(r.task_id, now)
            if now - t0 > r.timeout + _KILL_GRACE_S:
                _kill_tree(pid, signal.SIGKILL)
                pending.pop(r.task_id)
                yield record_failure(r, timeout_message(r.timeout) + f"; worker {pid} killed")

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


_POLL_S = 0.2  # how often the pool checks timeouts while waiting for results
_KILL_GRACE_S = 1.0  # after a task's timeout, the worker's own alarm has this long to stop it
_STOP_WAIT_S = 2.0  # how long a stopping pool waits for killed workers to be reaped


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread: processes started inside inherit the mask, so a Ctrl-C during
    their start-up does not print a traceback from them; the signal is not lost here (it stays pending)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                kids += [int(c) for c in fh.read().split()]
    except (OSError, ValueError):
        pass
    return kids


def _kill_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` and all its descendants (children first collected, so none is orphaned unseen)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    for p in tree:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, GeneratorExit):
        return "the sweep stopped before the task finished"
    if type(exc) is KeyboardInterrupt:
        return "SIGINT (Ctrl-C)"
    return str(exc) or type(exc).__name__


def _stop_pool(pool, inflight: dict, pending: dict[str, TaskRun]) -> None:
    """Stop a pool now: cancel queued tasks, kill the workers and their children, record running tasks as interrupted.

    Called from the ``finally`` of :meth:`LocalExecutor.run`, i.e. also while a
    signal is being handled; a second signal during it is ignored by the runner.
    """
    procs = dict(getattr(pool, "_processes", None) or {})
    for fut in inflight:
        fut.cancel()
    for pid in procs:
        _kill_tree(pid, signal.SIGKILL)  # a task has nothing to save: its shard is written atomically or not at all
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + _STOP_WAIT_S
    for proc in procs.values():
        proc.join(max(0.0, deadline - time.monotonic()))
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(max(0.0, deadline - time.monotonic()))
    for r in inflight.values():
        if r.task_id not in pending:
            continue
        info = Store(r.out).running_info(r.task_id)
        if info is not None and int(info.get("pid", -1)) in procs:
            record_interrupted(r, "the sweep was stopped (SIGINT, SIGTERM or an error) while the task ran")


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
    connect_timeout : seconds to wait for the scheduler at ``address`` (default 5);
        an unreachable one is a one-line :class:`ParameterError`.
    devices : GPU ids for the LocalCluster started here: worker ``k`` narrows its
        ``CUDA_VISIBLE_DEVICES`` to ``devices[k mod G]`` (default workers: G).
    cuda_cluster : start dask-cuda's ``LocalCUDACluster`` instead (one worker per
        device of ``devices``; the ``cuda-cluster`` extra); its workers' devices are recorded.

    The spec's per-task ``timeout`` is not enforced here: Dask runs tasks in
    worker threads, which an alarm cannot stop and the coordinator cannot kill
    (use the cluster's own limits, e.g. a jobqueue walltime).
    """

    name = "dask"

    def __init__(self, client=None, *, address: str | None = None, cluster=None, workers: int | None = None,
                 threads_per_worker: int = 1, connect_timeout: float = 5.0, devices: Sequence[str] | None = None,
                 cuda_cluster: bool = False):
        dd = _distributed()
        given = sum(x is not None for x in (client, address, cluster))
        if given > 1:
            raise ParameterError("executor", "give one of client, address or cluster")
        self.threads = check_positive_int("threads_per_worker", threads_per_worker)
        self.devices = parse_devices(devices) if devices else ()
        if (self.devices or cuda_cluster) and given:
            raise ParameterError("devices", "GPUs are given to the workers of a cluster this executor starts, "
                                            "not to a given client, address or cluster (start those with dask-cuda)")
        if cuda_cluster and not self.devices:
            raise ParameterError("devices", "the CUDA cluster needs the devices to use")
        self._owned = []
        if client is None and cuda_cluster:
            from ._dask_devices import local_cuda_cluster

            cluster = local_cuda_cluster(self.devices)
            self._owned.append(cluster)
            client = dd.Client(cluster)
            self._owned.insert(0, client)
        elif client is None:
            if address is not None:
                try:
                    client = dd.Client(address, timeout=connect_timeout)
                except (OSError, TimeoutError) as exc:  # refused, unknown host, no answer
                    raise ParameterError("scheduler", f"cannot reach the Dask scheduler at {address} within "
                                                      f"{connect_timeout:g} s ({type(exc).__name__}: {exc})") from None
            elif cluster is not None:
                client = dd.Client(cluster)
            else:
                default = len(self.devices) if self.devices else (os.cpu_count() or 1)
                n = check_positive_int("workers", workers if workers is not None else default)
                cluster = dd.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                    env={v: str(self.threads) for v in THREAD_VARS},
                )
                self._owned.append(cluster)
                client = dd.Client(cluster)
            self._owned.insert(0, client)
        if self.devices:
            from ._dask_devices import register_devices

            try:
                register_devices(client, None if cuda_cluster else self.devices)
            except BaseException:
                self.close()
                raise
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
