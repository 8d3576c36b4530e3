"""Pieces the finite networks and the exact chains share: the record of a run over depth,
torch dtypes, seeded generators, Haar frames, layer norm and the shaped ReLU.

Both :mod:`particles.networks` (plain finite networks) and :mod:`particles.covariance`
(the exact finite-width chains that shadow them) build on this module, so neither
imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from integrators.validation import ParameterError, check_choice

__all__ = ["NetworkRun", "haar_frame", "layer_norm", "make_generator", "shaped_relu", "torch_dtype"]


@dataclass
class NetworkRun:
    """Covariances V = X X^T / n recorded over depth.

    Attributes
    ----------
    layers : (n_rec,) block index of each record (0 = input).
    V : (n_rec, batch, m, m) covariances, numpy.
    n : width; ``t = layers / n`` is the SDE time.
    meta : what ran (network parameters, seed, simulator, wall time).
    """

    layers: np.ndarray
    V: np.ndarray
    n: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def t(self) -> np.ndarray:
        return self.layers / self.n

    @property
    def final(self) -> np.ndarray:
        return self.V[-1]

    def rho(self, a: int = 0, b: int = 1) -> np.ndarray:
        """rho^{ab} = V^{ab}/sqrt(V^{aa} V^{bb}), shape (n_rec, batch)."""
        V = self.V
        return V[..., a, b] / np.sqrt(V[..., a, a] * V[..., b, b])


def torch_dtype(dtype: str):
    import torch

    check_choice("dtype", dtype, ("float64", "float32"))
    return {"float64": torch.float64, "float32": torch.float32}[dtype]


def make_generator(seed: int, device):
    import torch

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError("seed", f"expected a non-negative integer seed, got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def haar_frame(batch: int, m: int, n: int, gen, dtype, device):
    """(batch, m, n) matrices with orthonormal rows, Haar distributed (QR of a Gaussian, signs fixed)."""
    import torch

    if m > n:
        raise ParameterError("n", f"width n={n} must be at least the number of tokens m={m}")
    G = torch.randn(batch, n, m, generator=gen, dtype=dtype, device=device)
    Q, R = torch.linalg.qr(G)
    sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (Q * sign[:, None, :]).transpose(-1, -2)


def shaped_relu(H, s_plus: float, s_minus: float):
    """sigma_s(x) = s_+ max(x, 0) + s_- min(x, 0)."""
    return s_plus * H.clamp(min=0) + s_minus * H.clamp(max=0)


def layer_norm(X, eps: float = 1e-5):
    """Per-token layer norm over the n features, no affine part: (x - mean) / sqrt(var + eps)."""
    mu = X.mean(dim=-1, keepdim=True)
    Xc = X - mu
    return Xc / (Xc.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
