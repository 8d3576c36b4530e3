"""Sweep specifications (TOML): parsing and validation before any task runs.

A spec has three tables::

    [sweep]
    name = "phase-diagram"      # required: letters, digits, . _ -
    task = "flow.phase_point"   # required: a name in studies.sweep.tasks.TASKS or "module:function"
    root_seed = 20231218        # required: int >= 0; every task seed derives from it
    seeds = 4                   # replicates per grid point (default 1): the "seed" dimension
    retries = 1                 # extra attempts after a failure (default 0)
    timeout = 600               # seconds per task attempt (default: none); then the task is failed (timeout)
    description = "..."         # optional
    out = "runs/phase"          # optional default output directory

    [params]                    # fixed parameters, the same for every task
    n = 32

    [grid]                      # the product of these axes, in this order
    d = [2, 8, 32, 128]                       # a list
    beta = { start = 0.1, stop = 9.0, num = 30 }       # linspace, both ends included
    dt = { start = 0.01, stop = 1.0, num = 3, scale = "log" }   # geomspace
    k = { start = 0, stop = 10, step = 2 }    # arange: stop excluded

    [grid.zip.size]             # equal-length lists zipped into one dimension "size"
    n_tokens = [8, 16, 32]
    t_end = [10.0, 20.0, 40.0]

Every error is a :class:`~integrators.validation.ParameterError` naming the key
(``sweep.seeds``, ``grid.beta``, ``grid.zip.size.t_end``, ...). Tasks that
declare a ``validate`` (see :mod:`studies.sweep.tasks`) also have every distinct model
of the grid checked here, so ``dt = -0.1`` fails before any task runs.

``task`` is a registered name; a ``"module:function"`` task is refused unless
``allow_code_tasks`` is given. :func:`spec_from_store` rebuilds the spec a store
was run with from its ``spec.json`` without importing any task module (for
``sweep status`` and ``sweep merge``).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from integrators.validation import ParameterError

from studies.sweep.toml_writer import to_toml

__all__ = ["Axis", "SweepSpec", "load_spec", "parse_spec", "spec_from_store", "to_toml"]

_TOP = ("sweep", "params", "grid")
_SWEEP_KEYS = ("name", "task", "root_seed", "seeds", "retries", "description", "out", "timeout")
_RANGE_KEYS = ("start", "stop", "num", "step", "scale")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED = ("seed", "zip")


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid: one parameter (product axis) or several zipped ones."""

    name: str
    coords: dict[str, tuple]  # parameter -> values along this dimension
    zipped: bool

    @property
    def size(self) -> int:
        return len(next(iter(self.coords.values())))


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: the grid, the fixed parameters, seeds and the task."""

    name: str
    task: str
    root_seed: int
    seeds: int
    retries: int
    description: str
    out: str | None
    params: dict[str, Any]
    axes: tuple[Axis, ...]
    source: str | None = None
    text: str | None = None
    timeout: float | None = None  # seconds per task attempt; None: no limit
    dims: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the task's declared measurement axes (for merge)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape, without the seed dimension."""
        return tuple(a.size for a in self.axes)

    @property
    def n_points(self) -> int:
        return math.prod(self.shape)

    @property
    def n_tasks(self) -> int:
        return self.n_points * self.seeds

    def points(self) -> Iterator[tuple[tuple[int, ...], dict[str, Any]]]:
        """Grid points in C order: (multi-index, grid parameters of the point)."""
        for idx in itertools.product(*(range(a.size) for a in self.axes)):
            values: dict[str, Any] = {}
            for a, i in zip(self.axes, idx):
                for p, vals in a.coords.items():
                    values[p] = vals[i]
            yield idx, values


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: dict, allowed, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            raise ParameterError(f"{prefix}{key}", f"unknown key{_suggest(key, allowed)}; allowed: {list(allowed)}")


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, str))


def _check_value(label: str, v) -> Any:
    """A fixed parameter: a scalar or a (nested) list of scalars, finite."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ParameterError(label, f"must be finite, got {v}")
    if _is_scalar(v):
        return v
    if isinstance(v, list):
        return [_check_value(f"{label}[{i}]", x) for i, x in enumerate(v)]
    raise ParameterError(label, f"expected a number, string, bool or list, got {type(v).__name__}")


def _round(x: float) -> float:
    # computed grid values are rounded so 0.1 + 0.2 and a written 0.3 are the same task
    return float(f"{x:.12g}")


def _expand_range(label: str, r: dict) -> list:
    _check_keys(r, _RANGE_KEYS, f"{label}.")
    if "start" not in r or "stop" not in r:
        raise ParameterError(label, "a range needs start and stop, and num or step")
    start, stop = r["start"], r["stop"]
    for k in ("start", "stop"):
        if isinstance(r[k], bool) or not isinstance(r[k], (int, float)) or not math.isfinite(r[k]):
            raise ParameterError(f"{label}.{k}", f"expected a finite number, got {r[k]!r}")
    if ("num" in r) == ("step" in r):
        raise ParameterError(label, "give exactly one of num (inclusive linspace) or step (arange, stop excluded)")
    scale = r.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise ParameterError(f"{label}.scale", f"expected 'linear' or 'log', got {scale!r}")
    if "num" in r:
        num = r["num"]
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ParameterError(f"{label}.num", f"expected an integer >= 1, got {num!r}")
        if scale == "log":
            if start <= 0 or stop <= 0:
                raise ParameterError(label, "a log-scale range needs start > 0 and stop > 0")
            vals = np.geomspace(start, stop, num)
        else:
            vals = np.linspace(start, stop, num)
        return [_round(v) for v in vals]
    step = r["step"]
    if scale != "linear":
        raise ParameterError(f"{label}.scale", "scale applies to num ranges only")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or step == 0 or not math.isfinite(step):
        raise ParameterError(f"{label}.step", f"expected a non-zero number, got {step!r}")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return list(range(start, stop, step))
    count = max(0, math.ceil((stop - start) / step - 1e-9))
    return [_round(start + k * step) for k in range(count)]


def _axis_values(label: str, v) -> list:
    if isinstance(v, dict):
        vals = _expand_range(label, v)
    elif isinstance(v, list):
        vals = v
    else:
        raise ParameterError(label, f"a grid axis is a list of values or a range table, got {v!r}")
    if not vals:
        raise ParameterError(label, "empty list: a grid axis needs at least one value")
    kinds = set()
    for i, x in enumerate(vals):
        if not _is_scalar(x):
            raise ParameterError(f"{label}[{i}]", f"grid values are numbers, strings or bools, got {x!r}")
        _check_value(f"{label}[{i}]", x)
        kinds.add("bool" if isinstance(x, bool) else "number" if isinstance(x, (int, float)) else "str")
    if len(kinds) > 1:
        raise ParameterError(label, f"mixed value types {sorted(kinds)} on one axis")
    if len(set(vals)) != len(vals):
        raise ParameterError(label, f"repeated values {vals}: coordinates must be distinct")
    if kinds == {"number"} and any(isinstance(x, float) for x in vals):
        vals = [float(x) for x in vals]
    return list(vals)


def _parse_grid(grid: dict) -> list[tuple[str, dict[str, list], bool, dict[str, str]]]:
    if not isinstance(grid, dict):
        raise ParameterError("grid", "expected a table")
    if not grid:
        raise ParameterError("grid", "empty grid: give at least one axis (or leave out [grid] for a single point)")
    axes = []
    for key, v in grid.items():
        if key == "zip":
            if not isinstance(v, dict) or not v:
                raise ParameterError("grid.zip", "expected tables [grid.zip.NAME] of equal-length lists")
            for gname, group in v.items():
                label = f"grid.zip.{gname}"
                if not _IDENT.match(gname) or gname in _RESERVED:
                    raise ParameterError(label, "a dimension name is an identifier other than seed/zip")
                if not isinstance(group, dict) or not group:
                    raise ParameterError(label, "expected a table of equal-length lists")
                coords = {p: _axis_values(f"{label}.{p}", vals) for p, vals in group.items()}
                lengths = {p: len(c) for p, c in coords.items()}
                if len(set(lengths.values())) > 1:
                    raise ParameterError(label, f"zipped lists differ in length: {lengths}")
                axes.append((gname, coords, True, {p: f"{label}.{p}" for p in coords}))
        else:
            label = f"grid.{key}"
            if not _IDENT.match(key) or key in _RESERVED:
                raise ParameterError(label, "an axis name is an identifier other than seed/zip")
            axes.append((key, {key: _axis_values(label, v)}, False, {key: label}))
    return axes


def _int(label: str, v, minimum: int, default=None) -> int:
    if v is None:
        if default is None:
            raise ParameterError(label, "required")
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ParameterError(label, f"expected an integer >= {minimum}, got {v!r}")
    return v


def _validate_models(task, fixed: dict, axes: list[Axis], where: dict[str, str]) -> None:
    """Call ``task.validate`` once per distinct combination of the values it depends on.

    An error is re-raised naming the spec key (``grid.dt``, ``params.backend``)
    and the grid point, so the user fixes the spec before any task runs.
    """
    if task.validate is None:
        return
    keys = task.validate_keys
    relevant = [a for a in axes if keys is None or any(p in keys for p in a.coords)]
    base = dict(fixed)
    for a in axes:  # parameters the validation does not depend on: any value will do
        for p, vals in a.coords.items():
            base[p] = vals[0]
    for idx in itertools.product(*(range(a.size) for a in relevant)):
        params = dict(base)
        point = {}
        for a, i in zip(relevant, idx):
            for p, vals in a.coords.items():
                params[p] = point[p] = vals[i]
        try:
            task.validate(params)
        except ParameterError as exc:
            message = str(exc).split(": ", 1)[-1]
            at = f" (at {point})" if point and exc.parameter not in point else ""
            raise ParameterError(where.get(exc.parameter, exc.parameter), message + at) from None
        except (ValueError, TypeError) as exc:
            raise ParameterError("params", f"task {task.name!r} rejects the parameters {point or fixed}: {exc}") from None


def parse_spec(data: dict, source: str | None = None, text: str | None = None, *,
               allow_code_tasks: bool = False) -> SweepSpec:
    """Validate a parsed TOML document and build the :class:`SweepSpec`.

    ``allow_code_tasks``: accept ``task = "module:function"`` (imports that
    module); without it only registered tasks are accepted.
    """
    from studies.sweep.tasks import get_task

    if not isinstance(data, dict):
        raise ParameterError("spec", "expected a TOML document")
    _check_keys(data, _TOP, "")
    sweep = data.get("sweep")
    if not isinstance(sweep, dict):
        raise ParameterError("sweep", "missing [sweep] table (name, task, root_seed, ...)")
    _check_keys(sweep, _SWEEP_KEYS, "sweep.")
    name = sweep.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ParameterError("sweep.name", f"required: letters, digits, '.', '_', '-', got {name!r}")
    task_name = sweep.get("task")
    if not isinstance(task_name, str):
        raise ParameterError("sweep.task", f"required: a registered task name, got {task_name!r}")
    task = get_task(task_name, allow_code=allow_code_tasks)
    root_seed = _int("sweep.root_seed", sweep.get("root_seed"), 0)
    seeds = _int("sweep.seeds", sweep.get("seeds"), 1, default=1)
    retries = _int("sweep.retries", sweep.get("retries"), 0, default=0)
    description = sweep.get("description", "")
    if not isinstance(description, str):
        raise ParameterError("sweep.description", "expected a string")
    out = sweep.get("out")
    if out is not None and (not isinstance(out, str) or not out):
        raise ParameterError("sweep.out", "expected a directory path")
    timeout = sweep.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
            raise ParameterError("sweep.timeout", f"expected a number of seconds > 0, got {timeout!r}")
        timeout = float(timeout)

    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ParameterError("params", "expected a table")
    fixed = {k: _check_value(f"params.{k}", v) for k, v in params.items()}
    raw_axes = _parse_grid(data["grid"]) if "grid" in data else []

    where = {k: f"params.{k}" for k in fixed}
    seen_dims: set[str] = set()
    for dim, coords, _, labels in raw_axes:
        if dim in seen_dims:
            raise ParameterError(labels[next(iter(coords))], f"dimension {dim!r} appears twice")
        seen_dims.add(dim)
        for p, label in labels.items():
            if p in where:
                raise ParameterError(label, f"{p!r} is already set by {where[p]}")
            where[p] = label
    for dim, coords, zipped, labels in raw_axes:
        if zipped and dim in where:
            raise ParameterError(f"grid.zip.{dim}", f"dimension name {dim!r} is also a parameter name")

    # Check types against the task's defaults: fixed values, then every grid value.
    checked = task.check_params(fixed, where)
    fixed = {k: checked[k] for k in checked if k not in {p for _, c, _, _ in raw_axes for p in c}}
    axes = []
    for dim, coords, zipped, labels in raw_axes:
        new = {}
        for p, vals in coords.items():
            new[p] = tuple(task.check_params({p: v}, labels)[p] for v in vals)
        axes.append(Axis(dim, new, zipped))
    _validate_models(task, fixed, axes, where)
    text = text if text is not None else to_toml(data)  # saved with the shards, so the store is self-describing
    dims = tuple((k, tuple(v)) for k, v in sorted(task.dims.items()))
    return SweepSpec(name, task_name, root_seed, seeds, retries, description, out, fixed, tuple(axes), source, text,
                     timeout, dims)


def spec_from_store(root: str | Path) -> SweepSpec | None:
    """The spec a sweep store was last run with (``ROOT/spec.json``), or None if there is none.

    ``spec.json`` holds the checked parameters and grid (task defaults merged,
    types converted), so the task ids are those of the run; nothing is imported,
    which lets ``status`` and ``merge`` read a store whose task module is
    unknown or untrusted.
    """
    root = Path(root)
    try:
        summary = json.loads((root / "spec.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(summary, dict) or "grid" not in summary or "task" not in summary:
        return None
    axes = tuple(Axis(g["dim"], {k: tuple(v) for k, v in g["coords"].items()}, bool(g["zipped"])) for g in summary["grid"])
    text_path = root / "spec.toml"
    text = text_path.read_text() if text_path.is_file() else None
    dims = tuple((k, tuple(v)) for k, v in sorted((summary.get("dims") or {}).items()))
    return SweepSpec(summary["name"], summary["task"], int(summary["root_seed"]), int(summary["seeds"]),
                     int(summary.get("retries", 0)), summary.get("description", ""), None, dict(summary["params"]), axes,
                     str(root / "spec.json"), text, summary.get("timeout"), dims)


def load_spec(path: str | Path, *, allow_code_tasks: bool = False) -> SweepSpec:
    """Read and validate a TOML sweep spec (``allow_code_tasks``: see :func:`parse_spec`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such spec file: {p}")
    text = p.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError("spec", f"{p} is not valid TOML ({exc})") from None
    return parse_spec(data, source=str(p.resolve()), text=text, allow_code_tasks=allow_code_tasks)
