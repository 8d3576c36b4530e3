"""Backends: where the arrays live and which kernel evaluates a model.

* ``numpy`` -- the array-API reference implementation of each model, on numpy.
* ``numba`` -- numpy arrays, the model's compiled Numba kernels
  (``model.numba_drift`` / ``model.numba_diffusion``), parallel over batch and particles.
* ``torch`` -- torch tensors on any device (``device="cuda"`` for GPUs), the same
  reference implementation evaluated by torch.

A backend never changes the mathematics: tests/test_backends.py checks that all
three give the same trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from integrators.validation import ParameterError

__all__ = ["NumpyBackend", "NumbaBackend", "TorchBackend", "get_backend", "BACKENDS", "DTYPES"]

DTYPES = {"float64": np.float64, "float32": np.float32}


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ParameterError("dtype", f"unknown dtype {dtype!r}; choose float64 (default) or float32")
    return dtype


@dataclass(frozen=True)
class NumpyBackend:
    dtype: str = "float64"
    name: str = "numpy"

    @property
    def device(self) -> str:
        return "cpu"

    def asarray(self, x):
        return np.asarray(x, dtype=DTYPES[self.dtype])

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def drift(self, model):
        return model.drift

    def diffusion(self, model):
        return model.diffusion

    def synchronize(self) -> None:
        pass

    def fused_step(self, model, stepper):
        """The reference backend never fuses: every step goes through ``stepper.step``."""
        return None

    def fused_sde_step(self, model, stepper, noise):
        return None


def _model_fused_step(backend, model, stepper):
    """Ask the model for a fused one-step map (``model.fused_step(name, backend)``), if the backend allows it."""
    hook = getattr(model, "fused_step", None)
    if not backend.fused or hook is None:
        return None
    return hook(stepper.name, backend)


def _model_fused_sde_step(backend, model, stepper, noise):
    """Ask an SDE model for a fused step (``model.fused_sde_step(name, backend, noise)``), if allowed."""
    hook = getattr(model, "fused_sde_step", None)
    if not backend.fused or hook is None:
        return None
    return hook(stepper.name, backend, noise)


@dataclass(frozen=True)
class NumbaBackend(NumpyBackend):
    """numpy arrays and the model's Numba kernels.

    ``fused=True`` (default) lets ``solve`` use a model's fused one-step map
    where it offers one (``model.fused_step(stepper_name, backend)`` returns
    ``step(t, x, dt) -> retract(x + dt f)`` or None), and an SDE model's fused
    stochastic step (``model.fused_sde_step(stepper_name, backend, noise)`` returns
    ``step(t, x, dt, k, exited, threshold) -> (x_new, newly_exited)`` or None);
    ``fused=False`` forces the generic stepper. Both compute the same thing
    (tests/test_backends.py, tests/test_cov_fused.py).
    """

    name: str = "numba"
    fused: bool = True

    def fused_step(self, model, stepper):
        return _model_fused_step(self, model, stepper)

    def fused_sde_step(self, model, stepper, noise):
        return _model_fused_sde_step(self, model, stepper, noise)

    def drift(self, model):
        fn = getattr(model, "numba_drift", None)
        if fn is None:
            raise ParameterError("backend", f"{type(model).__name__} has no numba kernel; use backend='numpy' or 'torch'")
        return fn

    def diffusion(self, model):
        return getattr(model, "numba_diffusion", None) or model.diffusion


@dataclass(frozen=True)
class TorchBackend:
    """torch tensors on ``device``; ``fused`` as for :class:`NumbaBackend`.

    On CUDA (with ``fused=True``) the attention flow's field and Euler step take the GPU
    kernels of :mod:`particles.sphere._cuda_dispatch` (SDPA, Triton where installed), and an
    initial state already on the device is validated there and never copied to the host.
    """

    dtype: str = "float64"
    device: str = "cpu"
    name: str = "torch"
    fused: bool = True

    def __post_init__(self):
        import torch

        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ParameterError("device", f"{self.device!r} is not a torch device ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device", "CUDA was asked for but torch.cuda.is_available() is False")

    @property
    def _torch_dtype(self):
        import torch

        return {"float64": torch.float64, "float32": torch.float32}[self.dtype]

    def asarray(self, x):
        import torch

        if isinstance(x, torch.Tensor):
            return x.to(dtype=self._torch_dtype, device=self.device)
        return torch.as_tensor(np.asarray(x), dtype=self._torch_dtype, device=self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def host_copy(self, x) -> "HostCopy":
        """Start copying ``x`` to the host; ``.wait()`` gives the numpy array.

        On CUDA the copy goes to pinned (page-locked) memory and does not block: the host
        goes on launching the next steps while the copy engine moves the save (pageable
        copies ran at 1.5 GB/s on an H200 and took 81% of an ensemble run,
        ../shared/measurements/gpu-h200-profile.md). The stream orders the copy before any
        later in-place update of ``x``.
        """
        return HostCopy(x.detach(), self.on_cuda)

    @property
    def on_cuda(self) -> bool:
        import torch

        return torch.device(self.device).type == "cuda"

    def check_state(self, model, x0, normalize: bool = False):
        """``model.check_state``; a CUDA tensor is validated on the device and stays there."""
        from .device import check_device_state, is_device_tensor

        if is_device_tensor(x0):
            return check_device_state(model, x0, normalize, self)
        return model.check_state(x0, normalize=normalize)

    def drift(self, model):
        # On CUDA a model may offer its own device kernels (model.device_drift(backend)): the
        # attention flow takes SDPA or its Triton kernels there.
        hook = getattr(model, "device_drift", None)
        if self.on_cuda and self.fused and hook is not None:
            f = hook(self)
            if f is not None:
                return f
        return model.drift

    def diffusion(self, model):
        return model.diffusion

    def fused_step(self, model, stepper):
        return _model_fused_step(self, model, stepper)

    def fused_sde_step(self, model, stepper, noise):
        return _model_fused_sde_step(self, model, stepper, noise)

    def synchronize(self) -> None:
        import torch

        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()


class HostCopy:
    """A device-to-host copy under way (:meth:`TorchBackend.host_copy`)."""

    def __init__(self, x, cuda: bool) -> None:
        import torch

        if not cuda:
            self._array = x.numpy().copy()  # x may be updated in place by the next step
            return
        self._buffer = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
        self._buffer.copy_(x, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
        self._array = None

    def wait(self) -> np.ndarray:
        """The copied array (waits for the copy to land)."""
        if self._array is None:
            self._event.synchronize()
            self._array = self._buffer.numpy()
        return self._array


BACKENDS = ("numpy", "numba", "torch")


def get_backend(backend, dtype: str = "float64", device: str | None = None):
    """Build a backend from its name (``numpy``, ``numba``, ``torch``) or pass one through."""
    if not isinstance(backend, str):
        return backend
    _check_dtype(dtype)
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise ParameterError("device", "the numpy backend runs on the CPU only; use backend='torch'")
        return NumpyBackend(dtype)
    if backend == "numba":
        if device not in (None, "cpu"):
            raise ParameterError("device", "the numba backend runs on the CPU only; use backend='torch'")
        return NumbaBackend(dtype)
    if backend == "torch":
        return TorchBackend(dtype, device or "cpu")
    raise ParameterError("backend", f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
