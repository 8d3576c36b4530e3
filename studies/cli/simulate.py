"""``attnflow simulate MODEL ...``: run one simulation and write it to an HDF5 file.

Plugin contract
---------------
Models come from the modules listed in :data:`SIMULATE_PLUGINS` (a module
that does not exist yet is skipped). Each exposes::

    def register_models(subparsers) -> None

which adds one sub-parser per model to ``subparsers`` (the ``attnflow simulate``
collection; ``subparsers.add_parser(name, help=..., description=...)``) and sets
``func`` with ``parser.set_defaults(func=run)``; ``run(args) -> int`` is called
with the parsed namespace. To read TOML and flags the same way as the built-in
models, declare options with :class:`studies.cli.options.Option`, add
:data:`RUN_OPTIONS` (time span, step, method, backend, seed, saving, output) with
:func:`studies.cli.options.add_options`, merge with
:func:`studies.cli.options.resolve_options`, and hand the model and initial state to
:func:`run_and_store`, which validates the run, streams it into a
:class:`studies.store.RunWriter` and prints where it wrote and a one-line
summary. Raise :class:`integrators.validation.ParameterError` (or
:class:`studies.cli.UserError`) for bad input: the CLI prints it on one line and
exits with status 2.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from integrators.registry import STEPPERS
from particles.sphere.observables import OBSERVABLES
from integrators.validation import ParameterError

from studies.cli.options import Option, choice, exit_threshold, float_list, integer, name_list, real, text

__all__ = ["register", "SIMULATE_PLUGINS", "RUN_OPTIONS", "OUTPUT_OPTIONS", "run_and_store", "save_times", "with_observables"]

SIMULATE_PLUGINS = ("studies.cli.simulate_flow", "studies.cli.simulate_cov")

#: where and how a run is written (also the finite-network command's)
OUTPUT_OPTIONS: tuple[Option, ...] = (
    Option("out", text, "run.h5", "output HDF5 file", path=True, metavar="FILE"),
    Option("group", text, "/", "group of the file that holds the run"),
    Option("overwrite", None, False, "replace an existing output file (or group)", flag=True),
    Option("compression", choice(("none", "gzip", "lzf")), "none", "compression of datasets with a chunk per save "
           "(frames of 4 KiB or more): none (default, fastest), gzip (level 4 + shuffle; 5-10% smaller float64 "
           "files, slower), lzf"),
)  # fmt: skip

RUN_OPTIONS: tuple[Option, ...] = (
    Option("config", text, None, "TOML file whose keys are these flag names; flags typed here override it", path=True,
           metavar="FILE"),
    Option("t-end", real(0.0, strict=True), 10.0, "final time T"),
    Option("dt", real(0.0, strict=True), 0.01, "step size (first trial step of adaptive methods)"),
    Option("method", text, None, "stepper: " + ", ".join(STEPPERS) + " (default: the model's, see its --help)"),
    Option("backend", text, "numpy", "numpy, numba or torch"),
    Option("dtype", text, "float64", "float64 or float32"),
    Option("device", text, None, "torch device (cpu, cuda, cuda:1); torch backend only"),
    Option("seed", integer(0), 0, "seed of the initial condition and of the noise"),
    Option("batch", integer(1), 1, "number of independent systems"),
    Option("save-times", float_list, None, "comma-separated save times (default: N equally spaced, see --n-saves)",
           metavar="T1,T2,..."),
    Option("n-saves", integer(2), 101, "number of equally spaced saves over [0, T] including both ends"),
    Option("observables", name_list, None, "comma-separated observables to measure at each save, from: "
           + ", ".join(OBSERVABLES) + " (default: energy, cluster_count, fraction_close, min_inner_product)",
           metavar="NAME,..."),  # a model family lists its own through with_observables()
    Option("states", None, True, "store the states (--no-states: only the observables)", flag=True),
    *OUTPUT_OPTIONS,
    Option("progress", None, None, "progress bar (default: when stderr is a terminal)", flag=True),
    Option("exit-threshold", exit_threshold, None, "a path exits (is stored as NaN from then on and left out of the "
           "summaries) when max |entry| of its state exceeds this; 'off': only when it becomes non-finite "
           "(default: off for the flow, 1e6 for the covariance SDEs)", metavar="X|off"),
)  # fmt: skip


def with_observables(options: Sequence[Option], names: Sequence[str], default: str) -> tuple[Option, ...]:
    """``options`` with ``--observables`` listing a model family's own observables ``names``."""
    import dataclasses

    help_ = f"comma-separated observables to measure at each save, from: {', '.join(names)} (default: {default})"
    return tuple(dataclasses.replace(o, help=help_) if o.name == "observables" else o for o in options)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="run one simulation and write it to HDF5",
        description="Run one simulation of MODEL from flags and/or a TOML file (--config) and write an HDF5 run.",
    )
    models = p.add_subparsers(dest="model", metavar="MODEL")
    models.required = True
    for mod_name in SIMULATE_PLUGINS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue  # a model family not built yet
            raise
        mod.register_models(models)


def save_times(opts: Mapping[str, Any], t_end: float, dt: float, sde: bool) -> np.ndarray:
    """The save times: --save-times as given, else --n-saves equally spaced (on the step grid for SDEs)."""
    if opts["save_times"] is not None:
        ts = np.asarray(opts["save_times"], dtype=float)
        if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] > t_end + 1e-12:
            raise ParameterError("save-times", f"need increasing times in [0, t-end={t_end:g}], got {ts.tolist()}")
        return ts
    if not sde:
        return np.linspace(0.0, t_end, opts["n_saves"])
    steps = round(t_end / dt)
    idx = np.unique(np.round(np.linspace(0, steps, opts["n_saves"])).astype(int))
    return idx * dt


def _validate(model, opts: Mapping[str, Any], method: str) -> None:
    """Fail on bad method / backend / dtype / device before an output file is made."""
    from integrators import get_backend, get_stepper

    stepper = get_stepper(method)
    sde = bool(getattr(model, "is_sde", False))
    if sde and stepper.kind != "sde":
        raise ParameterError("method", f"{method!r} is an ODE stepper but the model is an SDE (--kappa given)")
    if not sde and stepper.kind == "sde":
        raise ParameterError("method", f"{method!r} is an SDE stepper but the model has no noise")
    get_backend(opts["backend"], dtype=opts["dtype"], device=opts["device"])
    own = getattr(model, "observables", None) or {}
    for name in opts["observables"] or ():
        if name not in own:
            raise ParameterError("observables", f"{name!r} is not an observable of model {model.name!r}; "
                                 f"its own: {sorted(own) or 'none'}")  # fmt: skip
    if sde and abs(opts["t_end"] / opts["dt"] - round(opts["t_end"] / opts["dt"])) > 1e-9:
        raise ParameterError("t-end", f"an SDE run needs t-end to be a multiple of dt={opts['dt']:g}")


def _check_out(out: Path, group: str, overwrite: bool) -> None:
    if out.is_dir():
        raise ParameterError("out", f"{out} is a directory")
    if out.exists() and group.strip("/") == "" and not overwrite:
        raise ParameterError("out", f"{out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise ParameterError("out", f"folder {out.parent} does not exist")


def run_and_store(
    model,
    x0: np.ndarray,
    opts: Mapping[str, Any],
    *,
    default_method: str,
    noise_seed: int | None,
    state_name: str = "x",
    state_dims: Sequence[str] = ("batch", "n", "d"),
    obs_dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    describe: str = "",
    default_exit_threshold: float | None = None,
) -> int:
    """Validate, solve with a streaming :class:`RunWriter`, print where it wrote and a summary.

    ``opts`` holds the resolved :data:`RUN_OPTIONS` (by dest). ``describe`` is the
    model part of the summary line (e.g. "sa n=16 d=16 beta=4").
    ``default_exit_threshold`` applies when ``--exit-threshold`` is not given.
    Returns 0, or 1 (after a one-line message on stderr) when the run failed
    (every path exited, or an ODE state went non-finite; the file says so in ``status``).
    """
    from integrators import solve

    from studies.store import RunWriter

    method = opts["method"] or default_method
    _validate(model, opts, method)
    sde = bool(getattr(model, "is_sde", False))
    ts = save_times(opts, opts["t_end"], opts["dt"], sde)
    out = Path(opts["out"])
    _check_out(out, opts["group"], opts["overwrite"])
    progress = opts["progress"] if opts["progress"] is not None else sys.stderr.isatty()
    threshold = opts.get("exit_threshold")
    threshold = default_exit_threshold if threshold is None else threshold
    threshold = None if threshold is None or math.isinf(threshold) else threshold
    all_attrs = {"t_end": opts["t_end"], "options_json": json.dumps(_jsonable(opts)), **(attrs or {}),
                 "exit_threshold": "off" if threshold is None else threshold}  # fmt: skip
    if noise_seed is not None:
        from integrators.brownian import GENERATOR

        all_attrs["noise_seed"] = noise_seed
        all_attrs["noise_generator"] = GENERATOR  # a seed reproduces a path only with the same generator
    writer = RunWriter(
        out,
        model=model,
        method=method,
        dt=opts["dt"],
        backend=opts["backend"],
        dtype=opts["dtype"],
        device=opts["device"] or "cpu",
        seed=opts["seed"],
        group=opts["group"],
        state_name=state_name,
        state_dims=state_dims,
        obs_dims=obs_dims,
        coords=coords,
        compression=opts["compression"],
        attrs=all_attrs,
        overwrite=opts["overwrite"],
    )
    try:
        # the overflow and NaN warnings of the numpy kernels say what the run's exit check reports
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            warnings.filterwarnings("ignore", message="solve: failed", category=RuntimeWarning)
            sol = solve(
                model,
                x0,
                opts["t_end"],
                dt=opts["dt"],
                method=method,
                backend=opts["backend"],
                dtype=opts["dtype"],
                device=opts["device"],
                save_at=ts,
                save_states=opts["states"],
                observables=opts["observables"] or (),
                seed=noise_seed,
                progress=progress,
                writer=writer,
                exit_threshold=threshold,
            )
    except BaseException as exc:
        if not writer.closed:  # solve validates before its loop and did not close the writer
            writer.close(f"failed: {type(exc).__name__}: {exc}", {})
            if writer.n_saved == 0 and opts["group"].strip("/") == "":
                out.unlink(missing_ok=True)
        raise
    where = f"{out}" + ("" if opts["group"].strip("/") == "" else f":{opts['group']}")
    print(f"wrote {where}")
    print(_summary_line(describe, method, opts, sol))
    if sol.status != "complete":
        print(f"attnflow simulate: error: run {sol.status} (written to {where} with that status)", file=sys.stderr)
        return 1
    return 0


def _summary_line(describe: str, method: str, opts, sol) -> str:
    s = sol.stats
    parts = [
        f"{describe} | {method}/{opts['backend']} dt={opts['dt']:g} T={opts['t_end']:g}"
        f" | {s['n_steps']} steps in {s['wall_time_s']:.3g} s, {len(sol.t)} saves"
    ]
    if s.get("max_step") and s["max_step"] < opts["dt"] * (1 - 1e-9):
        parts[0] += f" (steps of at most {s['max_step']:g} to land on the saves)"
    finals = []
    keep = ~sol.exited
    for name, v in sol.observables.items():
        last = np.asarray(v[-1])
        if last.ndim == 1 and last.shape[0] == keep.shape[0] and keep.any():
            finals.append(f"{name}={np.mean(last[keep]):.6g}")
        elif last.ndim == 0:
            finals.append(f"{name}={float(last):.6g}")
    if sol.exited.any():
        finals.append(f"exited={int(sol.exited.sum())}/{sol.exited.size}")
    if finals:
        over = "(mean over the surviving paths) " if sol.exited.any() else "(mean over batch) "
        parts.append("final " + (over if sol.exited.size > 1 else "") + " ".join(finals))
    return " | ".join(parts)


def _jsonable(opts: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in opts.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, Path):
            v = str(v)
        out[k] = v
    return out
