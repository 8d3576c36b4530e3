"""The registry of sweep tasks: what one grid point of a study computes.

Contract
--------
A task is a function ``fn(params: dict, seed: int) -> dict[str, array]``:

* ``params`` holds every parameter of the point (the task's defaults, the
  spec's fixed ``[params]`` and the grid values), JSON scalars or lists;
* ``seed`` is a non-negative int below 2**63 derived from the sweep's root seed
  and the task id (:func:`studies.sweep.plan.task_seed`); all randomness of the
  task must come from it (``np.random.default_rng(seed)``), so a task is a pure
  function of ``(params, seed)``;
* the result maps measurement names (``[A-Za-z_][A-Za-z0-9_]*``) to numbers or
  small numeric/bool arrays. The merged study file puts each measurement on the
  grid dimensions, the ``seed`` dimension, then its own axes.

Registering a task is one line, from any module listed in :data:`TASK_MODULES`
(or any module imported before the sweep starts)::

    TASKS["cov.rho_law"] = my_fn                                   # no checks
    register_task("cov.rho_law", my_fn, defaults={"n": 64, "gamma": 0.35}, dims={"rho": ("sample",)})

or as a decorator ``@register_task("cov.rho_law", defaults=...)``. With
``defaults`` the spec is checked before any task runs: unknown keys are
rejected, values must have the default's type (an int is accepted for a float
default and converted, so ``beta = 4`` and ``beta = 4.0`` are the same task).
``dims`` names the extra axes of measurements (default ``<name>_dim<k>``); a
measurement named like one of those axes and equal in every task (a time grid)
becomes that axis' coordinate. ``validate(params)`` (optional) raises a
``ParameterError`` for parameters that would only fail when the task runs (a
negative step, an unknown backend); the spec check calls it once per distinct
combination of ``validate_keys`` (default: every parameter) before any task runs.

A spec may also name an importable function as ``task = "package.module:function"``:
that runs code named by a file, so it is refused unless the caller opts in
(``get_task(name, allow_code=True)``, ``attnflow sweep run --allow-code-tasks``).
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from integrators.validation import ParameterError

__all__ = ["TASKS", "TASK_MODULES", "TaskDef", "register_task", "get_task", "is_code_task", "check_result",
           "MEASUREMENT_NAME", "CODE_TASK_FLAG"]

#: The command-line flag that allows ``module:function`` tasks.
CODE_TASK_FLAG = "--allow-code-tasks"

#: Modules imported on first lookup; each registers its tasks into TASKS.
TASK_MODULES = (
    "studies.papers.phase_diagram",
    "studies.papers.metastability",
    "studies.papers.collapse",
    "studies.papers.high_dim",
    "studies.papers.signalprop",
    "studies.papers.cov",
    "studies.papers.discrete_vs_flow",
)

MEASUREMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TaskDef:
    """A registered task: the function and what the sweep needs to know about it.

    Attributes
    ----------
    name : registry name.
    fn : ``fn(params, seed) -> dict[str, array]``.
    defaults : parameter name -> default value; None means "do not check the
        parameters" (the function receives exactly what the spec gives).
    dims : measurement name -> names of its own axes.
    validate : ``validate(params)`` raises ``ParameterError`` for parameters the
        task would reject when it runs (called at spec-check time), or None.
    validate_keys : the parameters ``validate`` depends on (None: all of them);
        each distinct combination of their values is validated once.
    """

    name: str
    fn: Callable[[dict, int], Mapping[str, Any]]
    defaults: Mapping[str, Any] | None = None
    dims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    validate: Callable[[dict], None] | None = None
    validate_keys: tuple[str, ...] | None = None

    def __call__(self, params: dict, seed: int) -> Mapping[str, Any]:
        return self.fn(params, seed)

    def check_params(self, params: Mapping[str, Any], where: Mapping[str, str]) -> dict[str, Any]:
        """Defaults merged with ``params``, types checked; ``where[key]`` names a key in errors."""
        if self.defaults is None:
            return dict(params)
        out = dict(self.defaults)
        for key, value in params.items():
            label = where.get(key, key)
            if key not in self.defaults:
                raise ParameterError(label, f"unknown parameter of task {self.name!r}; known: {sorted(self.defaults)}")
            out[key] = _coerce(label, value, self.defaults[key])
        return out


def _coerce(label: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (int -> float allowed), else ParameterError."""
    if default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ParameterError(label, f"expected {type(default).__name__} (like the default {default!r}), got {value!r}")
    return value


TASKS: dict[str, TaskDef | Callable] = {}


def register_task(name: str, fn: Callable | None = None, *, defaults: Mapping[str, Any] | None = None, dims=None,
                  validate: Callable[[dict], None] | None = None, validate_keys=None):
    """Register ``fn`` under ``name`` (usable as a decorator when ``fn`` is omitted)."""

    def add(f: Callable) -> Callable:
        TASKS[name] = TaskDef(name, f, None if defaults is None else dict(defaults), {k: tuple(v) for k, v in (dims or {}).items()},
                              validate, None if validate_keys is None else tuple(validate_keys))
        return f

    return add if fn is None else add(fn)


_loaded = False


def _load_modules() -> None:
    global _loaded
    if _loaded:
        return
    for mod in TASK_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a missing dependency inside the module is a real error
                raise
    _loaded = True


def is_code_task(name: str) -> bool:
    """Whether ``name`` is a ``module:function`` reference (code named by the spec) rather than a registered task."""
    return isinstance(name, str) and ":" in name


def get_task(name: str, allow_code: bool = False) -> TaskDef:
    """The task registered as ``name``, or (with ``allow_code``) the function at ``"package.module:function"``.

    A ``module:function`` name imports that module and calls that function with
    the spec's parameters: arbitrary code chosen by whoever wrote the spec, so
    it is refused unless ``allow_code`` is given.
    """
    if not isinstance(name, str) or not name:
        raise ParameterError("sweep.task", f"expected a task name, got {name!r}")
    if is_code_task(name):
        if not allow_code:
            raise ParameterError("sweep.task", f"{name!r} names code to import and run, not a registered task; "
                                               f"pass {CODE_TASK_FLAG} to `sweep run` to allow it")
        mod_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ParameterError("sweep.task", f"cannot import {name!r} ({exc})") from None
        if isinstance(fn, TaskDef):
            return fn
        for td in TASKS.values():  # a registered function keeps its defaults and dims
            if isinstance(td, TaskDef) and td.fn is fn:
                return td
        return TaskDef(name, fn)
    if name not in TASKS:  # import the task modules only when needed (workers start faster)
        _load_modules()
    if name not in TASKS:
        raise ParameterError("sweep.task", f"unknown task {name!r}; registered: {sorted(TASKS)}")
    t = TASKS[name]
    return t if isinstance(t, TaskDef) else TaskDef(name, t)


def check_result(task: str, result: Any) -> dict[str, np.ndarray]:
    """Validate a task's return value: a dict of names to numeric or bool arrays."""
    if not isinstance(result, Mapping):
        raise TypeError(f"task {task!r} returned {type(result).__name__}, expected a dict of arrays")
    out: dict[str, np.ndarray] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not MEASUREMENT_NAME.match(key) or key.startswith("task_") or key == "seed":
            raise ValueError(f"task {task!r}: bad measurement name {key!r} (letters, digits, _; not seed or task_*)")
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"task {task!r}: measurement {key!r} has dtype {arr.dtype}; only numbers and bools are stored")
        out[key] = arr
    return out


# ----------------------------------------------------------------------------- demo tasks
# Small tasks with known cost, for the benchmark, the tests and for trying the machinery.


@register_task("demo.busy", defaults={"seconds": 0.05, "size": 4, "scale": 1.0})
def busy(params: dict, seed: int) -> dict[str, np.ndarray]:
    """Hold one CPU for ``seconds`` (GIL held, like real compute), return ``size`` seeded normals."""
    stop = time.perf_counter() + params["seconds"]
    k = 0
    while time.perf_counter() < stop:
        k += 1
    x = params["scale"] * np.random.default_rng(seed).standard_normal(params["size"])
    return {"x": x, "mean": x.mean()}


@register_task("demo.flaky", defaults={"marker_dir": "", "failures": 1, "crash": False})
def flaky(params: dict, seed: int) -> dict[str, np.ndarray]:
    """Fail the first ``failures`` attempts (counted in files under ``marker_dir``), then succeed.

    A stand-in for transient failures to exercise retries: an exception, or with
    ``crash = true`` the death of the worker process itself (SIGKILL, like the
    kernel's out-of-memory killer).
    """
    d = Path(params["marker_dir"])
    d.mkdir(parents=True, exist_ok=True)
    count = len(list(d.glob(f"{seed}-*")))
    (d / f"{seed}-{count}").touch()
    if count < params["failures"]:
        if params["crash"]:
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"transient failure {count + 1} of {params['failures']}")
    return {"value": np.random.default_rng(seed).random()}
