"""``attnflow sweep status``: done / running / failed / missing tasks of a store.

* done: a complete shard for the task id and seed;
* failed: a failed shard (its error is listed) and no live run of the task;
* running: a running marker from a live process (on another host: assumed live);
* missing: no complete or failed shard; "interrupted" counts those whose marker
  belongs to a dead process of this host (a killed run) or whose shard says
  ``interrupted`` (a stopped run): ``--resume`` re-runs them.

Nothing is imported from the task's module: the spec comes from the store's
``spec.json`` (:func:`~studies.sweep.spec.spec_from_store`) when given a store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .plan import plan_tasks
from studies.provenance import hostname
from .runner import default_out
from .shards import Store, pid_alive, read_shard
from .spec import SweepSpec

__all__ = ["SweepStatus", "sweep_status", "format_status"]


@dataclass
class SweepStatus:
    out: Path
    total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    missing: int = 0
    interrupted: int = 0
    temporaries: int = 0
    failures: list[dict] = field(default_factory=list)
    active: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def sweep_status(spec: SweepSpec, out: str | Path | None = None) -> SweepStatus:
    """Classify every task of ``spec`` from the files under ``out``."""
    store = Store(out if out is not None else default_out(spec))
    if not store.root.is_dir():
        raise FileNotFoundError(f"no sweep store at {store.root}")
    st = SweepStatus(store.root)
    host = hostname()
    have, marked = store.shard_ids(), store.running_ids()  # one listing each, not a stat per task
    for t in plan_tasks(spec):
        st.total += 1
        shard = read_shard(store.shard_path(t.task_id), measurements=False) if t.task_id in have else None
        valid = shard is not None and shard.attrs.get("task_id") == t.task_id and int(shard.attrs.get("seed", -1)) == t.seed
        if valid and shard.status == "complete":
            st.done += 1
            continue
        info = store.running_info(t.task_id) if t.task_id in marked else None
        live = info is not None and (info.get("host") != host or pid_alive(int(info.get("pid", -1))))
        if live:
            st.running += 1
            st.active.append({"index": t.index, "task_id": t.task_id, "host": info.get("host"), "pid": info.get("pid"),
                              "progress": info.get("progress"), "seconds_since_update": round(time.time() - info.get("time", 0), 1)})
        elif valid and shard.status != "interrupted":
            st.failed += 1
            st.failures.append({"index": t.index, "task_id": t.task_id, "params": {k: t.params[k] for k in _grid_keys(spec)},
                                "error": str(shard.attrs.get("error", "")), "attempts": shard.attrs.get("attempts")})
        else:
            st.missing += 1
            st.interrupted += info is not None or valid
    st.temporaries = len(store.temporaries())
    return st


def _grid_keys(spec: SweepSpec) -> list[str]:
    return [p for a in spec.axes for p in a.coords]


def format_status(st: SweepStatus, max_lines: int = 10) -> str:
    """Human-readable summary."""
    lines = [
        f"{st.out}: {st.total} tasks: {st.done} done, {st.running} running, {st.failed} failed, {st.missing} missing"
        + (f" ({st.interrupted} interrupted)" if st.interrupted else "")
    ]
    for a in st.active[:max_lines]:
        prog = "" if a["progress"] is None else f" {100 * a['progress']:.0f}%"
        lines.append(f"  running #{a['index']} {a['task_id']} on {a['host']} pid {a['pid']}{prog}")
    for fl in st.failures[:max_lines]:
        lines.append(f"  failed  #{fl['index']} {fl['task_id']} {fl['params']}: {fl['error']}")
    hidden = max(0, len(st.failures) - max_lines)
    if hidden:
        lines.append(f"  ... and {hidden} more failed")
    if st.temporaries:
        lines.append(f"  {st.temporaries} temporary file(s) from interrupted writers (removed by the next --resume)")
    return "\n".join(lines)
