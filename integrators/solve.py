"""The driver: the only place that loops.

``solve`` joins five separate things -- the model (vector field and noise
coefficients), the stepper, the step size (fixed, or a PI controller for
adaptive steppers), the noise (a :class:`BrownianIncrements`), and the saving
(times, states, observables, an optional streaming writer).
"""

from __future__ import annotations

import math
import time as _time
from typing import Callable, Iterable, Sequence

import numpy as np

from particles.validation import ParameterError, check_positive, check_positive_int

from .backends import get_backend
from .brownian import BrownianIncrements
from .controller import PIController
from .registry import Stepper, get_stepper
from .solution import Solution

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


def _resolve_observables(observables) -> dict[str, Callable]:
    from particles.observables import OBSERVABLES

    out: dict[str, Callable] = {}
    if observables is None:
        return out
    if isinstance(observables, dict):
        items: Iterable = observables.items()
    else:
        items = []
        for o in observables:
            if isinstance(o, str):
                if o not in OBSERVABLES:
                    raise ParameterError("observables", f"unknown observable {o!r}; known: {sorted(OBSERVABLES)}")
                items.append((o, OBSERVABLES[o]))
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
    save_states: bool = True,
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
    save_states : keep the states (False: only observables are kept).
    observables : names from :data:`particles.OBSERVABLES`, callables
        ``fn(x, model) -> (batch, ...)``, or a dict name -> callable.
    seed : seed of the Brownian path (SDEs), unless ``brownian`` is given.
    brownian : an explicit :class:`BrownianIncrements` (its ``step`` must equal dt).
    rtol, atol : tolerances of adaptive steppers.
    exit_threshold : stop (freeze and flag) a path whose max |entry| exceeds it
        or becomes non-finite.
    normalize : normalise a non-unit initial state instead of rejecting it.
    progress : show a tqdm progress bar.
    writer : optional streaming writer with ``append(t, x, observables)`` and
        ``close(status, stats)`` (see :class:`studies.store.RunWriter`).

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
    check_positive_int("max_steps", max_steps)
    x_np = model.check_state(x0, normalize=normalize)
    save_t = _save_times(save_at, t0, t_end)
    obs_fns = _resolve_observables(observables)
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
    plain = sde or stepper.adaptive or exit_threshold is not None or hook is None
    fused = None if plain else hook(model, stepper)
    # Its SDE counterpart step(t, x, h, k, exited, threshold) -> (x_new, newly_exited) draws
    # increment k of ``noise`` itself and does the exit check (kept apart: its contract differs).
    sde_hook = getattr(be, "fused_sde_step", None) if sde and not stepper.adaptive else None
    fused_sde = None if sde_hook is None else sde_hook(model, stepper, noise)
    space = model.space
    x = be.asarray(x_np)
    batch = x_np.shape[0]
    exited = np.zeros(batch, dtype=bool)
    exit_time = np.full(batch, np.nan)
    saved_x: list[np.ndarray] = []
    saved_obs: dict[str, list[np.ndarray]] = {k: [] for k in obs_fns}
    saved_t: list[float] = []

    def save(tk: float, xk) -> None:
        xn = be.to_numpy(xk)
        obs = {name: np.asarray(fn(xn, model)) for name, fn in obs_fns.items()}
        saved_t.append(tk)
        if save_states:
            saved_x.append(xn.copy())
        for name, v in obs.items():
            saved_obs[name].append(v)
        if writer is not None:
            writer.append(tk, xn if save_states else None, obs)

    controller = PIController(rtol, atol, stepper.error_order or 4) if stepper.adaptive else None
    n_steps = n_rejected = 0
    k_noise = 0
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
        if abs(save_t[0] - t0) <= 1e-12:
            save(t0, x)
            i_save = 1
        stops = list(save_t[i_save:])
        if not stops or stops[-1] < t_end - 1e-12:
            stops.append(t_end)
        h_try = dt
        for stop in stops:
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
                    n_steps += 1
                    if bar is not None:
                        bar.update(h)
                    if n_steps > max_steps:
                        raise RuntimeError(f"max_steps={max_steps} exceeded at t={t}")
                t = stop
            else:
                m = max(1, int(math.ceil((stop - t) / dt - 1e-9)))
                h = (stop - t) / m
                t_seg = t
                for j in range(m):
                    tj = t_seg + j * h
                    if fused_sde is not None:
                        x, new = fused_sde(tj, x, h, k_noise, exited, exit_threshold)
                        k_noise += 1
                        if new.any():
                            exit_time[new] = tj + h
                            exited |= new
                        n_steps += 1
                        if bar is not None:
                            bar.update(h)
                        continue
                    dw = be.asarray(noise(k_noise)) if noise is not None else None
                    k_noise += 1
                    if fused is not None:
                        x_new = fused(tj, x, h)
                    else:
                        x_new, _ = stepper.step(f, tj, x, h, space, g, dw)
                        x_new = space.retract(x_new)
                    if exit_threshold is not None or sde:
                        x_new = _handle_exits(be, x, x_new, exited, exit_time, tj + h, exit_threshold)
                    x = x_new
                    n_steps += 1
                    if n_steps > max_steps:
                        raise RuntimeError(f"max_steps={max_steps} exceeded at t={tj + h}")
                    if bar is not None:
                        bar.update(h)
                t = stop
            if i_save < len(save_t) and abs(stop - save_t[i_save]) <= 1e-9 * max(1.0, abs(stop)):
                save(save_t[i_save], x)
                i_save += 1
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
    stats = {"n_steps": n_steps, "n_rejected": n_rejected, "wall_time_s": wall}
    sol = Solution(
        t=np.asarray(saved_t),
        x=np.stack(saved_x) if save_states and saved_x else None,
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
        },
    )
    if writer is not None:
        writer.close(status, {**stats, "n_exited": int(exited.sum())})
    return sol


def _handle_exits(be, x_old, x_new, exited, exit_time, t_new, threshold):
    """Freeze paths that blew up (non-finite, or max |entry| > threshold); flag them."""
    xn = be.to_numpy(x_new)
    flat = xn.reshape(xn.shape[0], -1)
    bad = ~np.all(np.isfinite(flat), axis=1)
    if threshold is not None:
        with np.errstate(invalid="ignore"):
            bad |= np.nanmax(np.abs(flat), axis=1) > threshold
    new = bad & ~exited
    if new.any():
        exit_time[new] = t_new
        exited |= new
    if not exited.any():
        return x_new
    mask = be.asarray(exited.reshape((-1,) + (1,) * (xn.ndim - 1)).astype(xn.dtype))
    # where(mask, x_old, x_new) written arithmetically so it works for numpy and torch alike,
    # with NaNs in x_new masked out first.
    xn_clean = be.asarray(np.where(exited.reshape((-1,) + (1,) * (xn.ndim - 1)), 0.0, xn))
    return mask * x_old + (1 - mask) * xn_clean
