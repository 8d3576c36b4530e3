"""Lazy Triton: kernels are built on first use, never at import, so CPU machines need no Triton.

A kernel is built once per mode: compiled for CUDA tensors, or under Triton's interpreter
(``TRITON_INTERPRET=1``) for CPU tensors -- the interpreter runs the same kernel source on
numpy, which is how the kernels are tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os

from integrators.validation import ParameterError

__all__ = ["DTYPES", "build", "check_tensor", "load_kernels", "triton_available"]

#: torch dtypes the kernels are written for
DTYPES = ("float32", "float64")

_BUILT: dict = {}


def triton_available() -> bool:
    """True when ``import triton`` works (the ``[gpu]`` extra)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _interpret(flag: bool):
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if flag else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def build(name: str, maker, interpret: bool):
    """``maker()`` (which defines and returns a ``triton.jit`` kernel), once per (name, interpret)."""
    key = (name, bool(interpret))
    if key not in _BUILT:
        if not triton_available():
            raise ParameterError("backend", "the Triton kernels need triton: pip install -e '.[gpu]'")
        with _interpret(interpret):
            _BUILT[key] = maker()
    return _BUILT[key]


def load_kernels(filename: str, interpret: bool, beside: str):
    """The module ``filename`` (in the folder of the file ``beside``; it imports triton at its top), loaded once per mode.

    Kernels that call other ``triton.jit`` functions must live at a module's top level
    (Triton resolves callees through the module's globals), and ``triton.jit`` decides at
    definition time whether it interprets; so the module is executed once for each mode,
    under its own name. ``beside``: a file whose folder holds ``filename`` (the caller's ``__file__``).
    """
    import importlib.util
    import pathlib

    where = pathlib.Path(beside)

    def maker():
        name = f"particles.{where.parent.name}._{pathlib.Path(filename).stem}_{'interp' if interpret else 'cuda'}"
        spec = importlib.util.spec_from_file_location(name, where.with_name(filename))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return build(filename, maker, interpret)


def check_tensor(x, name: str = "x") -> bool:
    """Validate a kernel input; returns True when it must run under the interpreter (CPU tensor).

    Raises ParameterError("dtype") for a dtype the kernels do not support and
    ParameterError("device") for a device that is neither CUDA nor the CPU.
    """
    dt = str(x.dtype).removeprefix("torch.")
    if dt not in DTYPES:
        raise ParameterError("dtype", f"the Triton kernels support {list(DTYPES)}, got {dt} for {name}")
    if x.device.type not in ("cuda", "cpu"):
        raise ParameterError("device", f"the Triton kernels run on CUDA (or the CPU interpreter), got {x.device}")
    return x.device.type == "cpu"


_SCALARS: dict = {}


def device_scalars(values: tuple[float, ...], like):
    """A small tensor of kernel parameters in ``like``'s dtype on its device, made once per value set.

    Triton passes Python floats to kernels as float32; float64 kernels read their real
    parameters from this tensor instead. Caching it keeps the step loop free of host-to-device
    copies (a solve calls the kernel with the same values at every step); a new value set
    (the step of the last segment differs by round-off, say) is copied from pinned memory
    without waiting, so even then the step loop never synchronises with the host.
    """
    import torch

    key = (values, like.dtype, str(like.device))
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) > 256:  # a sweep over many (dt, beta): keep the cache small
            _SCALARS.clear()
        host = torch.tensor(values, dtype=like.dtype)
        if like.device.type == "cuda":
            # torch.tensor(..., device="cuda") copies from pageable memory and waits for the copy
            # (a synchronising call under set_sync_debug_mode("error")); the caching host
            # allocator keeps the pinned block until the asynchronous copy has run
            t = host.pin_memory().to(like.device, non_blocking=True)
        else:
            t = host.to(like.device)
        _SCALARS[key] = t
    return t
