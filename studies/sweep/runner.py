"""Running a sweep: choose the tasks, skip the complete ones, hand the rest to an executor.

One coordinator per output directory (:class:`~studies.sweep.lock.SweepLock`).
SIGINT and SIGTERM take one path: the first raises :class:`SweepInterrupted`
in the coordinator, further ones are ignored while it stops; the executor's
generator is closed in a ``finally`` (the local pool then kills its workers and
records their tasks as interrupted), and the call returns within seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from integrators.validation import ParameterError

from studies.errors import SweepError, UserError  # noqa: F401  (SweepError is part of this module's API)

from .plan import Task, plan_tasks
from studies.provenance import hostname, utc_now
from .shards import Store, atomic_write_text, pid_alive, read_shard
from .spec import SweepSpec
from .worker import TaskOutcome, TaskRun

__all__ = ["run_sweep", "SweepResult", "SweepError", "SweepInterrupted", "default_out", "select_tasks", "spec_summary",
           "LARGE_SWEEP"]

#: Runs of more tasks than this need ``yes=True`` (``--yes``).
LARGE_SWEEP = 100_000


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped by SIGINT or SIGTERM (raised after the workers are stopped)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.result: SweepResult | None = None
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _one_stop():
    """SIGINT and SIGTERM raise SweepInterrupted once; later ones are ignored while the sweep stops."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"stopping": False}

    def handler(signum, frame):
        if state["stopping"]:
            return  # already stopping: a second Ctrl-C must not interrupt the clean-up
        state["stopping"] = True
        raise SweepInterrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class SweepResult:
    """Counts and outcomes of one ``run_sweep`` call."""

    out: Path
    total: int
    skipped: int
    completed: int
    failed: int
    wall_s: float
    outcomes: list[TaskOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def default_out(spec: SweepSpec) -> Path:
    """``[sweep] out`` if set, else ``./sweep-<name>``."""
    return Path(spec.out) if spec.out else Path(f"sweep-{spec.name}")


def spec_summary(spec: SweepSpec) -> dict:
    """JSON-friendly description of the spec (stored with the shards and the study file)."""
    return {
        "name": spec.name,
        "task": spec.task,
        "root_seed": spec.root_seed,
        "seeds": spec.seeds,
        "retries": spec.retries,
        "timeout": spec.timeout,
        "dims": {k: list(v) for k, v in spec.dims},
        "description": spec.description,
        "params": spec.params,
        "grid": [{"dim": a.name, "zipped": a.zipped, "coords": {k: list(v) for k, v in a.coords.items()}} for a in spec.axes],
    }


def select_tasks(tasks: list[Task], index: int | None, count: int = 1) -> list[Task]:
    """Tasks ``index .. index + count - 1`` (clipped to the sweep), or all when ``index`` is None."""
    if index is None:
        return tasks
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tasks):
        raise ParameterError("task_index", f"must lie in [0, {len(tasks) - 1}] for this sweep of {len(tasks)} tasks, got {index}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ParameterError("task_count", f"expected an integer >= 1, got {count}")
    return tasks[index:index + count]


def _is_complete(store: Store, t: Task) -> bool:
    """Whether the shard of ``t`` (known to exist) is complete for this exact task and seed."""
    shard = read_shard(store.shard_path(t.task_id), measurements=False)
    if shard is None:
        return False
    a = shard.attrs
    return shard.status == "complete" and a.get("task_id") == t.task_id and int(a.get("seed", -1)) == t.seed


def run_sweep(
    spec: SweepSpec,
    out: str | Path | None = None,
    *,
    executor=None,
    resume: bool = False,
    retries: int | None = None,
    task_index: int | None = None,
    task_count: int = 1,
    progress: bool = True,
    yes: bool = False,
) -> SweepResult:
    """Run the tasks of ``spec`` (all, or ``task_index .. +task_count``) and write their shards.

    Parameters
    ----------
    spec : a validated :class:`SweepSpec` (:func:`load_spec`, :func:`parse_spec`).
    out : output directory (default :func:`default_out`).
    executor : a :class:`LocalExecutor` (default), :class:`DaskExecutor` or :class:`SerialExecutor`.
    resume : skip tasks whose shards are complete and run the others (missing,
        failed, interrupted). Without it a directory that already holds shards
        of the chosen tasks is an error, so nothing is silently recomputed.
    retries : extra attempts after a failure (default: the spec's ``retries``).
    task_index, task_count : run only these tasks (the ``--task-index`` entry
        used by scheduler array jobs).
    progress : progress bars over planning, the resume scan and the tasks.
    yes : allow more than :data:`LARGE_SWEEP` tasks.

    Raises
    ------
    SweepError : the directory is locked by another run, holds shards without
        ``resume``, or the run is large and ``yes`` is not given.
    SweepInterrupted : SIGINT or SIGTERM (raised once the workers are stopped).
    """
    from .executors import LocalExecutor
    from .lock import SweepLock

    store = Store(out if out is not None else default_out(spec))
    retries = spec.retries if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ParameterError("retries", f"expected an integer >= 0, got {retries!r}")
    count = spec.n_tasks if task_index is None else min(task_count, spec.n_tasks)
    if count > LARGE_SWEEP and not yes:
        raise SweepError(f"{spec.name} has {count:,} tasks (more than {LARGE_SWEEP:,}): pass --yes (yes=True) to run it")
    try:
        store.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create the output directory {store.root}: {exc}") from None
    # array-job runs (--task-index) share the directory with each other, not with a full run
    lock = SweepLock(store.root, shared=task_index is not None).acquire()
    try:
        with _one_stop():
            return _run_locked(spec, store, lock, executor, resume, retries, task_index, task_count, progress,
                               LocalExecutor)
    finally:
        lock.release()


def _run_locked(spec, store: Store, lock, executor, resume, retries, task_index, task_count, progress,
                LocalExecutor) -> SweepResult:
    from tqdm.auto import tqdm

    chosen = select_tasks(plan_tasks(spec, progress=progress), task_index, task_count)
    try:
        store.prepare(spec.text)
        atomic_write_text(store.root / "spec.json", json.dumps(spec_summary(spec), indent=1))
    except OSError as exc:
        raise SweepError(f"cannot write to {store.root}: {exc}") from None
    if lock.took_over:
        _log(store, f"took over the lock left by dead pid {lock.took_over.get('pid')} on {lock.took_over.get('host')}")

    # one listing of the shard directories; only the tasks that have a shard are opened
    have = store.shard_ids()
    existing = [t for t in chosen if t.task_id in have]
    scan = tqdm(existing, unit="shard", desc=f"{spec.name}: checking shards", leave=False, dynamic_ncols=True,
                disable=not progress or len(existing) < 1000)
    complete = {t.task_id for t in scan if _is_complete(store, t)}
    pending = [t for t in chosen if t.task_id not in complete]
    if existing and not resume:
        raise SweepError(
            f"{store.root} already holds {len(existing)} shard(s) of these tasks: pass --resume (resume=True) to "
            "skip the complete ones and re-run the rest, or choose another output directory"
        )
    skipped = len(chosen) - len(pending)
    store.remove_dead_temporaries()
    marked = store.running_ids()
    for t in pending:  # markers left by killed runs on this host
        if t.task_id not in marked:
            continue
        info = store.running_info(t.task_id)
        if info is not None and info.get("host") == hostname() and not pid_alive(int(info.get("pid", -1))):
            store.clear_running(t.task_id)

    runs = [TaskRun(spec.task, t.task_id, t.index, t.replicate, t.seed, spec.root_seed, t.params, str(store.root), retries,
                    timeout=spec.timeout)
            for t in pending]
    own = executor is None
    if own:
        executor = LocalExecutor(workers=max(1, min(os.cpu_count() or 1, len(runs))))
    result = SweepResult(store.root, len(chosen), skipped, 0, 0, 0.0)
    _log(store, f"start {spec.name}: {len(chosen)} task(s), {skipped} complete, {len(runs)} to run on {executor.name}")
    t0 = time.perf_counter()
    bar = tqdm(total=len(chosen), initial=skipped, unit="task", desc=spec.name, disable=not progress, dynamic_ncols=True)
    stop = threading.Event()
    if progress and runs:
        ids = {r.task_id for r in runs}
        threading.Thread(target=_watch, args=(store, ids, bar, result, stop), daemon=True).start()
    outcomes = executor.run(runs) if runs else iter(())
    ended = "end"
    try:
        for outcome in outcomes:
            result.outcomes.append(outcome)
            if outcome.status == "complete":
                result.completed += 1
            else:
                result.failed += 1
                bar.write(f"task {outcome.task_id} (#{outcome.index}) failed: {outcome.error}")
            bar.set_postfix(failed=result.failed, refresh=False)
            bar.update(1)
    except SweepInterrupted as exc:
        ended = f"interrupted by {exc}"
        exc.result = result
        raise
    except BaseException as exc:
        ended = f"stopped by {type(exc).__name__}: {exc}"
        raise
    finally:
        # close the executor's generator here, not at garbage collection: its finally stops the pool
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
        stop.set()
        bar.close()
        if own:
            executor.close()
        result.wall_s = time.perf_counter() - t0
        _log(store, f"{ended} {spec.name}: {result.completed} complete, {result.failed} failed, "
                    f"{len(runs) - result.completed - result.failed} not run, {result.wall_s:.1f} s")
    return result


def _watch(store: Store, ids: set[str], bar, result: SweepResult, stop: threading.Event, every: float = 2.0) -> None:
    """Show the progress inside running tasks (from their markers) on the task bar."""
    while not stop.wait(every):
        fractions = []
        for p in (store.root / "running").glob("*.json"):
            if p.stem in ids:
                info = store.running_info(p.stem)
                if info is not None:
                    fractions.append(float(info.get("progress") or 0.0))
        if fractions:
            bar.set_postfix_str(f"failed={result.failed}, {len(fractions)} running, "
                                f"{100 * sum(fractions) / len(fractions):.0f}% through them on average")


def _log(store: Store, message: str) -> None:
    try:
        with open(store.root / "sweep.log", "a") as fh:
            fh.write(f"{utc_now()} {hostname()}:{os.getpid()} {message}\n")
    except OSError:  # the log is a record, not a reason to stop (a full disk)
        pass
