"""Running a sweep: choose the tasks, skip the complete ones, hand the rest to an executor."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from particles.validation import ParameterError

from studies.cli import UserError

from .plan import Task, plan_tasks
from .provenance import hostname, utc_now
from .shards import Store, atomic_write_text, pid_alive, read_shard
from .spec import SweepSpec
from .worker import TaskOutcome, TaskRun

__all__ = ["run_sweep", "SweepResult", "SweepError", "default_out", "select_tasks", "spec_summary"]


class SweepError(UserError):
    """A sweep cannot start as asked (reported to CLI users in one line)."""


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


def _is_complete(store: Store, t: Task) -> tuple[bool, bool]:
    """(shard exists, shard is complete for this exact task and seed)."""
    shard = read_shard(store.shard_path(t.task_id), measurements=False)
    if shard is None:
        return False, False
    a = shard.attrs
    same = a.get("task_id") == t.task_id and int(a.get("seed", -1)) == t.seed
    return True, shard.status == "complete" and same


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
    progress : a progress bar over tasks.
    """
    from tqdm.auto import tqdm

    from .executors import LocalExecutor

    store = Store(out if out is not None else default_out(spec))
    retries = spec.retries if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ParameterError("retries", f"expected an integer >= 0, got {retries!r}")
    chosen = select_tasks(plan_tasks(spec), task_index, task_count)
    store.prepare(spec.text)
    atomic_write_text(store.root / "spec.json", json.dumps(spec_summary(spec), indent=1))

    pending: list[Task] = []
    existing = 0
    for t in chosen:
        exists, complete = _is_complete(store, t)
        existing += exists
        if not complete:
            pending.append(t)
    if existing and not resume:
        raise SweepError(
            f"{store.root} already holds {existing} shard(s) of these tasks: pass --resume (resume=True) to "
            "skip the complete ones and re-run the rest, or choose another output directory"
        )
    skipped = len(chosen) - len(pending)
    store.remove_dead_temporaries()
    for t in pending:  # markers left by killed runs on this host
        info = store.running_info(t.task_id)
        if info is not None and info.get("host") == hostname() and not pid_alive(int(info.get("pid", -1))):
            store.clear_running(t.task_id)

    runs = [TaskRun(spec.task, t.task_id, t.index, t.replicate, t.seed, spec.root_seed, t.params, str(store.root), retries)
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
    try:
        if runs:
            for outcome in executor.run(runs):
                result.outcomes.append(outcome)
                if outcome.status == "complete":
                    result.completed += 1
                else:
                    result.failed += 1
                    bar.write(f"task {outcome.task_id} (#{outcome.index}) failed: {outcome.error}")
                bar.set_postfix(failed=result.failed, refresh=False)
                bar.update(1)
    finally:
        stop.set()
        bar.close()
        if own:
            executor.close()
        result.wall_s = time.perf_counter() - t0
        _log(store, f"end {spec.name}: {result.completed} complete, {result.failed} failed, "
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
    with open(store.root / "sweep.log", "a") as fh:
        fh.write(f"{utc_now()} {hostname()}:{os.getpid()} {message}\n")
