"""One line on stderr before Numba compiles one of our kernels (a cold on-disk cache).

Every kernel has ``cache=True``: the first run compiles (8-11 s for the attention
kernels) and later runs load the machine code from Numba's on-disk cache in a
fraction of a second. Numba fires its ``numba:compile`` event only on a cache miss,
just before compiling, so a listener on that event knows exactly when the wait
comes, without a marker file that could disagree with the cache (a new Numba
version, an edited kernel source or another ``NUMBA_CACHE_DIR`` all invalidate
the cache, and all fire the event). The notice is printed at most once per
process and only for kernels of this package; ``attnflow warmup`` compiles every
kernel ahead of time (e.g. once on a cluster's shared file system before an
array job).
"""

from __future__ import annotations

import sys
import threading

__all__ = ["NOTICE", "install_compile_notice", "is_ours"]

NOTICE = ("attnflow: compiling numba kernels, once, about 10 s (cached on disk afterwards; "
          "`attnflow warmup` compiles them all ahead of time)")

_PACKAGES = ("particles", "integrators", "studies", "attnflow")
_lock = threading.Lock()
_state = {"installed": False, "printed": False}


def is_ours(dispatcher) -> bool:
    """Whether a Numba dispatcher compiles a function of this project's packages."""
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    return module.split(".", 1)[0] in _PACKAGES


def _print_once(dispatcher) -> None:
    with _lock:
        if _state["printed"] or not is_ours(dispatcher):
            return
        _state["printed"] = True
    print(NOTICE, file=sys.stderr, flush=True)


def install_compile_notice() -> None:
    """Register the listener on Numba's ``numba:compile`` event (idempotent)."""
    with _lock:
        if _state["installed"]:
            return
        _state["installed"] = True
    from numba.core import event

    class _Notice(event.Listener):
        def on_start(self, ev) -> None:
            _print_once((ev.data or {}).get("dispatcher"))

        def on_end(self, ev) -> None:
            pass

    event.register("numba:compile", _Notice())
