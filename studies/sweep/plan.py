"""From a spec to its tasks: stable ids, deterministic seeds, a fixed order.

* Task id: the first 16 hex digits of SHA-256 over the canonical JSON of
  ``{"task", "params", "replicate"}`` (sorted keys, shortest float repr).
  It depends on what the task computes, not on where it sits in the grid, so a
  larger sweep contains the same ids for the points it shares with a smaller one.
* Task seed: ``SeedSequence(root_seed, spawn_key=id words)``, i.e. the child
  that ``SeedSequence(root_seed).spawn`` would give at a key derived from the
  id, folded to an int in [0, 2**63). Same root seed and same parameters: same
  seed, whatever else the sweep contains.
* Order: grid points in C order over the dimensions, replicates innermost;
  ``index = point * seeds + replicate`` (the ``--task-index`` numbering).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import SweepSpec

__all__ = ["Task", "plan_tasks", "task_id", "task_seed", "canonical_json"]


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, NaN rejected."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def task_id(task: str, params: dict[str, Any], replicate: int) -> str:
    """16 hex digits identifying (task, parameters, replicate)."""
    blob = canonical_json({"task": task, "params": params, "replicate": int(replicate)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def task_seed(root_seed: int, tid: str) -> int:
    """Seed of task ``tid``: SeedSequence(root_seed) spawned at the key given by the id."""
    key = (int(tid[:8], 16), int(tid[8:16], 16))
    words = np.random.SeedSequence(int(root_seed), spawn_key=key).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


@dataclass(frozen=True)
class Task:
    """One unit of work: a grid point and a replicate."""

    index: int
    point: tuple[int, ...]  # position on the grid (one index per dimension)
    replicate: int
    task_id: str
    seed: int
    params: dict[str, Any]


def plan_tasks(spec: SweepSpec, progress: bool = False) -> list[Task]:
    """All tasks of ``spec`` in their stable order (``progress``: a bar, for grids large enough to take a while)."""
    from tqdm.auto import tqdm

    tasks: list[Task] = []
    points = spec.points()
    if progress and spec.n_tasks >= 10_000:  # about 25 us per task
        points = tqdm(points, total=spec.n_points, unit="point", desc=f"{spec.name}: planning", leave=False,
                      dynamic_ncols=True)
    for idx, values in points:
        params = {**spec.params, **values}
        for r in range(spec.seeds):
            tid = task_id(spec.task, params, r)
            tasks.append(Task(len(tasks), idx, r, tid, task_seed(spec.root_seed, tid), params))
    ids = {t.task_id for t in tasks}
    if len(ids) != len(tasks):  # only possible if two grid points give identical parameters
        raise ValueError("two tasks of the spec have the same parameters and replicate")
    return tasks
