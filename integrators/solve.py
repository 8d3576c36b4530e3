"""The driver: the only place that loops.

``solve`` joins five separate things -- the model (vector field and noise
coefficients), the stepper, the step size (fixed, or a PI controller for
adaptive steppers), the noise (a :class:`BrownianIncrements`), and the saving
(times, states, observables, an optional streaming writer).
"""

from __future__ import annotations

import math
import time as _time
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np

from integrators.validation import ParameterError, check_positive, check_positive_int

from integrators.backends import get_backend
from integrators.brownian import BrownianIncrements
from integrators.controller import PIController
from integrators.exits import PathExits, mask_exited, masked_observable
from integrators.memory import check_memory
from integrators.registry import Stepper, get_stepper
from integrators.segments import Segments
from integrators.solution import Solution

__all__ = ["solve"]


def _save_times(save_at, t0: float, t_end: float) -> np.ndarray:
    if save_at is None:
        return np.array([t0, t_end])
    if isinstance(save_at, (int, np.integer)) and not isinstance(save_at, bool):
        return np.linspace(t0, t_end, check_positive_int("save_at", int(save_at), minimum=2))
    ts = np.asarray(save_at, dtype=np.float64).ravel()
    if ts.size == 0:
        raise ParameterError("save_at", "no save times given")
    if np.any(np.diff(ts) <= 0):
        raise ParameterError("save_at", "save times must be strictly increasing")
    if ts[0] < t0 - 1e-12 or ts[-1] > t_end + 1e-12:
        raise ParameterError("save_at", f"save times must lie in [t0, t_end] = [{t0}, {t_end}]")
    return ts


def _resolve_observables(observables, model) -> dict[str, Callable]:
    # Names are looked up in the model's own set: each model family declares its observables.
    own = dict(getattr(model, "observables", None) or {})
    out: dict[str, Callable] = {}
    if observables is None:
        return out
    if isinstance(observables, dict):
        items: Iterable = observables.items()
    else:
        own = getattr(model, "observables", None) or {}
        items = []
        for o in observables:
            if isinstance(o, str):
                if o not in own:
                    name = getattr(model, "name", type(model).__name__)
                    raise ParameterError(
                        "observables", f"{o!r} is not an observable of model {name!r}; its own: {sorted(own) or 'none'}"
                    )
                items.append((o, own[o]))
            elif callable(o):
                items.append((getattr(o, "__name__", repr(o)), o))
            else:
                raise ParameterError("observables", f"expected names or callables, got {o!r}")
    for name, fn in items:
        out[name] = fn
    return out


def _is_sde(model) -> bool:
    return bool(getattr(model, "is_sde", False))


def _match_calculus(model, stepper: Stepper):
    """Give an SDE model in the calculus its stepper is consistent with."""
    want = stepper.calculus
    have = getattr(model, "calculus", None)
    if want is None or have == want:
        return model
    convert = getattr(model, "with_calculus", None)
    if convert is None:
        raise ParameterError(
            "method", f"{stepper.name} integrates {want} SDEs but the model is {have} and cannot be converted"
        )
    return convert(want)


def solve(
    model,
    x0,
    t_end: float,
    *,
    dt: float | None = None,
    method: str | Stepper = "rk4",
    backend="numpy",
    dtype: str = "float64",
    device: str | None = None,
    t0: float = 0.0,
    save_at: Sequence[float] | int | None = None,
    save_states: bool | str = True,
    observables=(),
    seed: int | None = None,
    brownian: BrownianIncrements | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_steps: int = 10_000_000,
    exit_threshold: float | None = None,
    normalize: bool = False,
    progress: bool = False,
    writer=None,
) -> Solution:
    """Integrate ``model`` from ``x0`` over [t0, t_end].

    Parameters
    ----------
    model : a model object (e.g. :class:`particles.SelfAttention`) with
        ``drift(t, x)``, ``space`` and ``check_state``; SDE models also
        ``diffusion(t, x, dw)``, ``noise_shape`` and ``calculus``.
    x0 : initial state, shape (batch, n, d) (or (n, d)) for particles,
        (batch, m, m) for covariances.
    t_end : final time.
    dt : step size (fixed-step methods, and SDEs), or the first trial step of
        an adaptive method.
    method : a registered stepper name (see ``integrators.STEPPERS``) or a
        :class:`Stepper`.
    backend : "numpy", "numba" or "torch" (or a backend object).
    dtype : "float64" (default) or "float32".
    device : torch device ("cpu", "cuda", "cuda:1"); torch backend only.
    save_at : save times (must include the times you want, t0 is not added),
        an int for that many equally spaced times, or None for (t0, t_end).
        For SDEs they must lie on the grid t0 + k dt.
    save_states : keep the states (False: only observables are kept; "device": keep them as
        tensors on the torch backend's device, no host copies, ``Solution.x`` a tensor).
    observables : names from ``model.observables`` (the model family's own set), callables
        ``fn(x, model) -> (batch, ...)``, or a dict name -> callable.
    seed : seed of the Brownian path (SDEs), unless ``brownian`` is given.
    brownian : an explicit :class:`BrownianIncrements` (its ``step`` must equal dt).
    rtol, atol : tolerances of adaptive steppers.
    exit_threshold : a path *exits* when its max |entry| exceeds it (None: only
        when it becomes non-finite). SDE runs, and ODE runs with a threshold, are
        checked after every step (on the torch device, without a read-back: the
        flags are read at the saves); every run is also checked at each save.
        From its exit on, a path is stored as NaN and its observables as NaN
        (integer ones -1); ``Solution.exited`` / ``exit_time`` say which and when
        (an ODE path found non-finite at a save gets that save's time). The
        run stops with ``status = "failed: ..."`` (and a RuntimeWarning) when
        every path has exited, or when an ODE run without a threshold goes
        non-finite.
    normalize : normalise a non-unit initial state instead of rejecting it.
    progress : show a tqdm progress bar.
    writer : optional streaming writer with ``append(t, x, observables)`` and
        ``close(status, stats)`` (see :class:`studies.store.RunWriter`); if it also
        has ``set_exits(exited, exit_time)`` that is called before each append.
        A writer whose ``stores_states`` is true keeps the states, so the Solution
        does not: its ``x`` is None and ``last`` holds the last saved state.

    Returns
    -------
    Solution
    """
    stepper = get_stepper(method)
    be = get_backend(backend, dtype=dtype, device=device)
    sde = _is_sde(model)
    if sde and stepper.kind != "sde":
        raise ParameterError("method", f"{stepper.name!r} is an ODE stepper but the model is an SDE")
    if not sde and stepper.kind == "sde":
        raise ParameterError("method", f"{stepper.name!r} is an SDE stepper but the model has no noise")
    if sde:
        model = _match_calculus(model, stepper)
    t0 = float(t0)
    t_end = float(t_end)
    if not t_end > t0:
        raise ParameterError("t_end", f"must be > t0 = {t0}, got {t_end}")
    if dt is None:
        if not stepper.adaptive:
            raise ParameterError("dt", f"a step size is required for the fixed-step method {stepper.name!r}")
        dt = (t_end - t0) / 100
    dt = check_positive("dt", dt)
    if dt > (t_end - t0) * (1 + 1e-12):
        # a step longer than the run would be cut to the span: refuse rather than record a dt never used
        raise ParameterError("dt", f"dt={dt:g} is longer than the time span t_end - t0 = {t_end - t0:g}")
    check_positive_int("max_steps", max_steps)
    if 0 in tuple(getattr(x0, "shape", np.shape(x0))):
        raise ParameterError("x0", f"empty state of shape {tuple(x0.shape)}: need at least one system (batch) and one token")
    # the torch backend validates a CUDA tensor on the device and keeps it there
    x_np = be.check_state(model, x0, normalize) if hasattr(be, "check_state") else model.check_state(x0, normalize=normalize)
    on_device = save_states == "device"
    if on_device and be.name != "torch":
        raise ParameterError("save_states", "'device' keeps torch tensors: use backend='torch'")
    save_t = _save_times(save_at, t0, t_end)
    obs_fns = _resolve_observables(observables, model)
    if exit_threshold is not None:
        check_positive("exit_threshold", exit_threshold)

    noise = None
    if sde:
        if brownian is None:
            if seed is None:
                raise ParameterError("seed", "an SDE needs an explicit seed (or a BrownianIncrements path)")
            brownian = BrownianIncrements(tuple(model.noise_shape(x_np.shape)), dt, int(seed), dtype=dtype)
        elif abs(brownian.step - dt) > 1e-12 * dt:
            raise ParameterError("dt", f"dt={dt} differs from the Brownian path's step {brownian.step}")
        noise = brownian
        grid = (save_t - t0) / dt
        if np.any(np.abs(grid - np.round(grid)) > 1e-9 * np.maximum(1, grid)):
            raise ParameterError("save_at", f"SDE save times must be multiples of dt={dt} after t0")

    f = be.drift(model)
    g = be.diffusion(model) if sde else None
    # Backend hook: a fused map step(t, x, h) = retract(x + h f(t, x)) for this
    # stepper (e.g. Euler + renormalise in one compiled pass per system), or None.
    # It may update x in place, so not where exit handling needs the old state.
    hook = getattr(be, "fused_step", None)
    per_step = sde or exit_threshold is not None  # else: exits are found at the saves
    plain = stepper.adaptive or per_step or hook is None
    fused = None if plain else hook(model, stepper)
    # Its SDE counterpart step(t, x, h, k, exited, threshold) -> (x_new, newly_exited) draws
    # increment k of ``noise`` itself and does the exit check (kept apart: its contract differs).
    # ``exited`` and ``newly_exited`` are backend arrays (on the torch device: no read-back per step).
    sde_hook = getattr(be, "fused_sde_step", None) if sde and not stepper.adaptive else None
    fused_sde = None if sde_hook is None else sde_hook(model, stepper, noise)
    space = model.space
    batch = x_np.shape[0]
    # a writer that stores the states takes them off our hands: keep only the last one
    streamed = writer is not None and save_states and bool(getattr(writer, "stores_states", False))
    check_memory(be, x_np, len(save_t) if save_states and not streamed else 0, obs_fns)
    x = be.asarray(x_np)
    exits = PathExits(be, batch, exit_threshold)
    torch_saves = be.name == "torch" and not obs_fns and writer is None
    # between saves, a fixed-step ODE run needs nothing from the host: on CUDA the segment
    # is one replayed CUDA graph when replaying it is the same computation (integrators.segments)
    one_step = fused if fused is not None else _plain_step(stepper, f, space)
    segments = Segments(one_step, use_graph=(getattr(be, "on_cuda", False) and fused is None and not sde and not per_step
                                             and not stepper.adaptive and bool(getattr(model, "autonomous", False))))
    exit_hook = getattr(writer, "set_exits", None)
    saved_x: list[np.ndarray] = []
    saved_obs: dict[str, list[np.ndarray]] = {k: [] for k in obs_fns}
    saved_t: list[float] = []
    last: dict = {}  # "x": the last frame; "shared": whether it is the live state's memory (see save)

    def save(tk: float, xk) -> str | None:
        """Store one save (exited paths masked); return why the run must stop, or None."""
        if torch_saves:
            # no observable or writer needs the host: check and mask on the device; the exit
            # flags are the one read-back; the frame stays there or is copied to pinned host
            # memory without waiting (the copy overlaps the next segment's steps)
            import torch

            before = exits.host()[0]
            exits.mark(exits.bad(xk), tk)
            exits.read()
            exited, exit_time = exits.host()
            rows = exits.exited.reshape((-1,) + (1,) * (xk.ndim - 1))
            frame = torch.where(rows, torch.full_like(xk, float("nan")), xk)
            saved_t.append(tk)
            if save_states:
                saved_x.append(frame if on_device else be.host_copy(frame))
            last["x"] = frame
            return _stop_reason(tk, exited & ~before, exited, exit_time)
        xn = be.to_numpy(xk)
        exits.read()
        new = exits.check_saved(xn, tk)
        exited, exit_time = exits.host()
        # observables of exited paths are computed on their initial state (any valid state
        # keeps every observable's shape and dtype) and then masked
        if exited.any():
            x_ref = x_np if isinstance(x_np, np.ndarray) else be.to_numpy(x_np)
            xv = np.where(_rows(exited, xn), x_ref.astype(xn.dtype, copy=False), xn)
        else:
            xv = xn
        obs = {name: masked_observable(np.asarray(fn(xv, model)), exited) for name, fn in obs_fns.items()}
        frame = mask_exited(xn, exited)
        # xn may share memory with the live state (fused steps update it in place): a kept
        # frame is copied; without saved states only the last frame is kept, and it gets
        # memory of its own once, when steps follow it or the run ends (detach_last)
        shared = frame is xn
        if shared and save_states:
            frame, shared = xn.copy(), False
        last["shared"] = shared
        saved_t.append(tk)
        if save_states and not streamed:
            saved_x.append(frame)
        last["x"] = frame
        for name, v in obs.items():
            saved_obs[name].append(v)
        if writer is not None:
            if exit_hook is not None:
                exit_hook(exited, exit_time)
            writer.append(tk, frame if save_states else None, obs)
        return _stop_reason(tk, new, exited, exit_time)

    def detach_last(at_end: bool) -> None:
        """Give the last frame memory of its own if it shares the live state's (see save):
        at the end a fused step may hand its state array over (``release``), else a copy."""
        if not last.pop("shared", False):
            return
        release = getattr(fused, "release", None)
        if not (at_end and release is not None and release(last["x"])):
            last["x"] = last["x"].copy()

    def _stop_reason(tk: float, new: np.ndarray, exited: np.ndarray, exit_time: np.ndarray) -> str | None:
        if not sde and new.any() and exit_threshold is None:
            return f"non-finite state at t={tk:.6g} ({int(new.sum())} of {batch} paths)"
        if exited.all():
            t_last = float(np.nanmax(exit_time))
            if exit_threshold is None:
                return f"non-finite state at t={t_last:.6g}: every path exited"
            return f"every path exited by t={t_last:.6g} (non-finite, or max |entry| > exit_threshold={exit_threshold:g})"
        return None

    controller = PIController(rtol, atol, stepper.error_order or 4) if stepper.adaptive else None
    n_steps = n_rejected = 0
    k_noise = 0
    max_step = 0.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t_end - t0, unit="t", desc=f"{stepper.name}/{be.name}", leave=False,  # times to 4 digits
                   bar_format="{l_bar}{bar}| t = {n:.4g}/{total:.4g} [{elapsed}<{remaining}]")
    wall = _time.perf_counter()
    status = "complete"
    try:
        t = t0
        i_save = 0
        failure = None
        if abs(save_t[0] - t0) <= 1e-12:
            failure = save(t0, x)
            i_save = 1
        stops = list(save_t[i_save:])
        if not stops or stops[-1] < t_end - 1e-12:
            stops.append(t_end)
        h_try = dt
        for stop in stops:
            if failure is not None:
                break
            if i_save >= len(save_t):
                detach_last(False)  # steps on past the last save
            if stepper.adaptive:
                while t < stop - 1e-12 * max(1.0, abs(stop)):
                    h = min(h_try, stop - t)
                    x_new, err = stepper.step(f, t, x, h, space, g, None)
                    accept, h_try = controller.update(be, x, x_new, err, h)
                    if not accept:
                        n_rejected += 1
                        if h_try < 1e-14 * max(1.0, abs(t)):
                            raise FloatingPointError(f"step size underflow at t={t}")
                        continue
                    x, t = space.retract(x_new), t + h
                    max_step = max(max_step, h)
                    n_steps += 1
                    if bar is not None:
                        bar.update(h)
                    if n_steps > max_steps:
                        raise RuntimeError(f"max_steps={max_steps} exceeded at t={t}")
                t = stop
            else:
                m = max(1, int(math.ceil((stop - t) / dt - 1e-9)))
                h = (stop - t) / m
                max_step = max(max_step, h)
                t_seg = t
                if not sde and not per_step:  # nothing per step: the segment is one call
                    if n_steps + m > max_steps:
                        raise RuntimeError(f"max_steps={max_steps} exceeded at t={t_seg + (max_steps - n_steps + 1) * h}")
                    x = segments.run(t_seg, x, m, h)
                    n_steps += m
                    if bar is not None:
                        bar.update(stop - t_seg)
                    m = 0  # skips the step-by-step loop below (noise, per-step exit checks)
                for j in range(m):
                    tj = t_seg + j * h
                    t_next = stop if j == m - 1 else t_seg + (j + 1) * h  # exact at the saves
                    if fused_sde is not None:
                        x, new = fused_sde(tj, x, h, k_noise, exits.exited, exit_threshold)
                        exits.mark(new, t_next)
                        k_noise += 1
                        n_steps += 1
                        if bar is not None:
                            bar.update(h)
                        continue
                    dw = be.asarray(noise(k_noise)) if noise is not None else None
                    k_noise += 1
                    x_new, _ = stepper.step(f, tj, x, h, space, g, dw)  # a fused step always runs as a segment
                    x_new = space.retract(x_new)
                    if per_step:
                        x_new = exits.step(x, x_new, t_next)
                    x = x_new
                    n_steps += 1
                    if n_steps > max_steps:
                        raise RuntimeError(f"max_steps={max_steps} exceeded at t={tj + h}")
                    if bar is not None:
                        bar.update(h)
                t = stop
            if i_save < len(save_t) and abs(stop - save_t[i_save]) <= 1e-9 * max(1.0, abs(stop)):
                failure = save(save_t[i_save], x)
                i_save += 1
        exits.read()  # exits after the last save (when it is before t_end) count too
        detach_last(True)
        if failure is not None:
            status = f"failed: {failure}"
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}: {exc}"
        if writer is not None:
            writer.close(status, {"n_steps": n_steps})
        raise
    finally:
        if bar is not None:
            bar.close()
    be.synchronize()
    wall = _time.perf_counter() - wall
    exited, exit_time = exits.host()
    stats = {"n_steps": n_steps, "n_rejected": n_rejected, "wall_time_s": wall, "max_step": max_step}
    sol = Solution(
        t=np.asarray(saved_t),
        x=_stack_saves(saved_x, on_device) if save_states and saved_x else None,
        observables={k: np.stack(v) for k, v in saved_obs.items()},
        exited=exited,
        exit_time=exit_time,
        stats=stats,
        meta={
            "method": stepper.name,
            "order": stepper.order,
            "backend": be.name,
            "device": str(getattr(be, "device", "cpu")),
            "dtype": dtype,
            "dt": dt,
            "seed": None if noise is None else int(noise.seed),
            "rtol": rtol if stepper.adaptive else None,
            "atol": atol if stepper.adaptive else None,
            "exit_threshold": exit_threshold,
            "cuda_graph": segments.graphed,
        },
        status=status,
        last=last.get("x"),
    )
    if writer is not None:
        writer.close(status, {**stats, "n_exited": int(exited.sum())})
    if status != "complete":
        warnings.warn(f"solve: {status}", RuntimeWarning, stacklevel=2)
    return sol


def _plain_step(stepper, f, space):
    """One step of ``stepper`` followed by the retraction: ``(t, x, h) -> x_new``."""

    def step(t, x, h):
        return space.retract(stepper.step(f, t, x, h, space, None, None)[0])

    return step


def _stack_saves(xs: list, on_device: bool):
    """The saved states as one array: a device tensor, or numpy (pending host copies waited for)."""
    if on_device:
        import torch

        return torch.stack(xs)
    return np.stack([x.wait() if hasattr(x, "wait") else x for x in xs])


def _rows(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (batch,) mask shaped to broadcast against ``like`` (batch, ...)."""
    return mask.reshape((-1,) + (1,) * (like.ndim - 1))
