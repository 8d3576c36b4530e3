"""A tiny array namespace shim so one reference implementation serves numpy and torch.

The steppers only need ``+``, ``*`` and the few reductions below; models use
:func:`namespace` to write one drift that runs on numpy arrays (numpy and numba
backends) and on torch tensors (torch backend, CPU or CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["namespace", "NumpyOps", "TorchOps", "is_torch"]


def is_torch(x: Any) -> bool:
    """True if ``x`` is a torch tensor (without importing torch when it is not loaded)."""
    mod = type(x).__module__
    return mod.startswith("torch")


class NumpyOps:
    """numpy flavour of the array namespace."""

    name = "numpy"
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    einsum = staticmethod(np.einsum)
    matmul = staticmethod(np.matmul)
    abs = staticmethod(np.abs)
    where = staticmethod(np.where)

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        return np.sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x, axis=None, keepdims=False):
        return np.max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def norm(x, axis=-1, keepdims=False):
        return np.linalg.norm(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def swap(x):
        """Swap the last two axes."""
        return np.swapaxes(x, -1, -2)

    @staticmethod
    def asarray(a, like):
        return np.asarray(a, dtype=like.dtype)

    @staticmethod
    def tril_mask(n, like):
        return np.tril(np.ones((n, n), dtype=bool))

    @staticmethod
    def concat(xs, axis=0):
        return np.concatenate(xs, axis=axis)


class TorchOps:
    """torch flavour of the array namespace."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.exp = torch.exp
        self.sqrt = torch.sqrt
        self.einsum = torch.einsum
        self.matmul = torch.matmul
        self.abs = torch.abs
        self.where = torch.where

    def sum(self, x, axis=None, keepdims=False):
        if axis is None:
            return self.torch.sum(x)
        return self.torch.sum(x, dim=axis, keepdim=keepdims)

    def max(self, x, axis=None, keepdims=False):
        if axis is None:
            return self.torch.max(x)
        return self.torch.amax(x, dim=axis, keepdim=keepdims)

    def norm(self, x, axis=-1, keepdims=False):
        return self.torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def swap(x):
        return x.transpose(-1, -2)

    def asarray(self, a, like):
        if is_torch(a):
            return a.to(dtype=like.dtype, device=like.device)
        return self.torch.as_tensor(np.asarray(a), dtype=like.dtype, device=like.device)

    def tril_mask(self, n, like):
        return self.torch.tril(self.torch.ones((n, n), dtype=self.torch.bool, device=like.device))

    def concat(self, xs, axis=0):
        return self.torch.cat(xs, dim=axis)


_NUMPY = NumpyOps()
_TORCH: TorchOps | None = None


def namespace(x: Any):
    """Return the ops namespace matching the array type of ``x``."""
    global _TORCH
    if is_torch(x):
        if _TORCH is None:
            _TORCH = TorchOps()
        return _TORCH
    return _NUMPY
