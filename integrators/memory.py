"""Size checks before a run allocates: a one-line error instead of an allocation traceback."""

from __future__ import annotations

import os

import numpy as np

from integrators.validation import ParameterError

__all__ = ["available_bytes", "check_fits", "check_memory", "check_state_size", "STATE_COPIES"]

#: live copies of the state during a step: the state, up to four stages, a trial
#: state and the retraction's temporaries (rk4 / dopri5 need about this many)
STATE_COPIES = 8
#: pairwise observables (those a model marks ``fn.pairwise = True``, e.g. the sphere's)
#: build (batch, n, n) Gram matrices and a temporary or two of that size
_PAIRWISE_COPIES = 3


def available_bytes() -> int | None:
    """Memory the OS can give this process now (MemAvailable), or None when unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_fits(name: str, nbytes: float, what: str, available: int | None = None) -> None:
    """Raise ParameterError(name, ...) when ``nbytes`` exceed the available memory."""
    avail = available_bytes() if available is None else available
    if avail is not None and nbytes > avail:
        raise ParameterError(name, f"{what} needs about {_gib(nbytes)} but only {_gib(avail)} of memory are available")


def check_memory(backend, x0: np.ndarray, kept_saves: int, observables: dict) -> None:
    """Refuse a run whose state, kept saves or pairwise observables cannot fit in memory.

    ``x0`` is the (batch, ...) initial state on the host, ``kept_saves`` how many
    saved states the Solution keeps, ``observables`` name -> callable.
    """
    itemsize = np.dtype(np.float32 if backend.dtype == "float32" else np.float64).itemsize
    state = int(np.prod(x0.shape)) * itemsize
    on_gpu = str(getattr(backend, "device", "cpu")).startswith("cuda")
    if on_gpu:
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(backend.device))
        check_fits("x0", STATE_COPIES * state, f"integrating a state of shape {x0.shape}", free)
        host = (kept_saves + 2) * state
    else:
        host = (STATE_COPIES + kept_saves) * state
    name, what = "x0", f"a state of shape {x0.shape}" + (f" with {kept_saves} saved copies" if kept_saves else "")
    if len(x0.shape) >= 3 and any(getattr(fn, "pairwise", False) for fn in observables.values()):
        n = x0.shape[-2]
        host += _PAIRWISE_COPIES * x0.shape[0] * n * n * 8
        name, what = "observables", f"pairwise observables of {x0.shape[0]} system(s) of n={n} tokens (n x n each)"
    check_fits(name, host, what)


def check_state_size(name: str, shape: tuple[int, ...], itemsize: int = 8) -> None:
    """Refuse, before it is drawn, an initial state of ``shape`` too large to integrate in memory."""
    nbytes = float(np.prod(np.asarray(shape, dtype=np.float64))) * itemsize
    check_fits(name, STATE_COPIES * nbytes, f"integrating a state of shape {tuple(shape)}")
