"""What the plain networks and the exact chains share: inputs, outputs, random streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..validation import ParameterError, check_choice, check_positive_int

__all__ = ["NetworkRun", "haar_frame", "layer_norm", "make_generator", "prepare_v0", "psd_factor_torch", "torch_dtype"]


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


def prepare_v0(V0, batch: int | None) -> np.ndarray:
    """Validated (batch, m, m) V0 (a single (m, m) V0 is repeated ``batch`` times)."""
    from ..covariance.models import check_covariance

    V = check_covariance(V0)
    if batch is not None:
        check_positive_int("batch", batch)
        if V.shape[0] == 1:
            V = np.repeat(V, batch, axis=0)
        elif V.shape[0] != batch:
            raise ParameterError("batch", f"V0 holds {V.shape[0]} matrices but batch={batch}")
    return V


def psd_factor_torch(V):
    """L with L L^T = V (Cholesky, or the eigen-clipped symmetric root where V is singular)."""
    from ..covariance._algebra import psd_factor

    return psd_factor(V)


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


def layer_norm(X, eps: float = 1e-5):
    """Per-token layer norm over the n features, no affine part: (x - mean) / sqrt(var + eps)."""
    mu = X.mean(dim=-1, keepdim=True)
    Xc = X - mu
    return Xc / (Xc.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
