"""The m = 2 correlation SDE of the shaped MLP, integrated in x = artanh(rho).

For a model dV = a b_ReLU(V) dt + (k Sigma_lin(V))^{1/2} dB (no attention), Ito's formula
applied to rho = V^{12} / sqrt(V^{11} V^{22}) closes on rho:

    d rho = [a nu(rho) - k rho (1 - rho^2) / 2] dt + sqrt(k) (1 - rho^2) dW,

(LNR, a = k = 1). In x = artanh(rho) the noise is additive:

    dx = [a nu(rho) / (1 - rho^2) + k rho / 2] dt + sqrt(k) dW,   rho = tanh(x),

which keeps |rho| < 1 for any step size. The term nu(rho)/(1 - rho^2) stays bounded as
rho -> 1 and repels from rho = -1 (nu(-1) = (c_+ - c_-)^2 / 2).

References
----------
Li, Nica, Roy, "The neural covariance SDE", arXiv:2206.02768, section 3 (the correlation SDE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from integrators.ops import is_torch

from integrators.spaces import Euclidean
from integrators.validation import ParameterError, check_positive
from .models import _finite

__all__ = ["CorrelationSDE", "correlation_sde"]


@dataclass(frozen=True, eq=False)
class CorrelationSDE:
    """x = artanh(rho) of two tokens: dx = [a nu(rho)/(1 - rho^2) + k rho/2] dt + sqrt(k) dW.

    Parameters
    ----------
    c_plus, c_minus : shaped-ReLU constants (nu depends on c_+ - c_- only).
    drift_scale : a (1 for LNR's MLP, gamma^2 for a residual MLP sub-block).
    k : diffusion multiplier of Sigma_lin (1 for LNR, 2 gamma^2 for a residual MLP).

    Notes
    -----
    State shape (batch, 1): x = artanh(rho). Use :func:`correlation_sde` to build it from a
    matrix model, ``np.arctanh`` / ``np.tanh`` to convert.
    """

    c_plus: float = 0.0
    c_minus: float = -1.0
    drift_scale: float = 1.0
    k: float = 1.0

    is_sde = True
    calculus = "ito"
    space = Euclidean()
    name = "shaped-correlation"

    def __post_init__(self):
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)
        if _finite("drift_scale", self.drift_scale) < 0:
            raise ParameterError("drift_scale", f"must be >= 0, got {self.drift_scale}")
        check_positive("k", self.k)

    @property
    def observables(self) -> dict:
        """Named observables of the state x = artanh(rho): ``rho`` = tanh(x) (:mod:`.observables`)."""
        from .observables import CORRELATION_OBSERVABLES

        return dict(CORRELATION_OBSERVABLES)

    def params(self) -> dict:
        return {"model": self.name, "c_plus": self.c_plus, "c_minus": self.c_minus,
                "drift_scale": self.drift_scale, "k": self.k, "calculus": self.calculus}  # fmt: skip

    def check_state(self, x0, normalize: bool = False) -> np.ndarray:
        """x0 = artanh(rho0): a number, (batch,) or (batch, 1) finite values -> (batch, 1)."""
        if normalize:
            raise ParameterError("normalize", "the correlation state is not normalised; pass normalize=False")
        x = np.array(x0, dtype=np.float64)
        if x.ndim == 0:
            x = x.reshape(1, 1)
        elif x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != 1:
            raise ParameterError("x0", f"expected artanh(rho0) of shape (batch,) or (batch, 1), got {np.shape(x0)}")
        if not np.all(np.isfinite(x)):
            raise ParameterError("x0", "artanh(rho0) must be finite (|rho0| < 1)")
        return x

    def noise_shape(self, state_shape) -> tuple:
        return tuple(state_shape)

    @property
    def _cnu(self) -> float:
        return (self.c_plus - self.c_minus) ** 2 / (2.0 * math.pi)

    def drift(self, t, x):
        """Drift in x = artanh(rho), shape (batch, 1), numpy or torch (same formula as the numba kernel)."""
        if is_torch(x):
            import torch

            cosh, tanh, atan2, where = torch.cosh, torch.tanh, torch.atan2, torch.where
        else:
            cosh, tanh, atan2, where = np.cosh, np.tanh, np.arctan2, np.where
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            s = 1.0 / cosh(x)
            r = tanh(x)
            u = s / where(r > 0, r, r * 0 + 1.0)
            u2 = u * u
            series = self._cnu * r * u * u2 * (1.0 / 3.0 - u2 / 5.0 + u2 * u2 / 7.0)
            direct = self._cnu * (s - r * atan2(s, r))
            ratio = where((r > 0) & (s < 1e-3 * r), series, direct) / (s * s)
            ratio = where(x > 700.0, x * 0, ratio)  # rho -> 1: nu / (1 - rho^2) -> 0
        return self.drift_scale * ratio + 0.5 * self.k * r

    def numba_drift(self, t, x):
        from ._numba_kernels import correlation_drift

        return correlation_drift(x, self.drift_scale, self.k, self._cnu)

    def diffusion(self, t, x, dw):
        return math.sqrt(self.k) * dw


def correlation_sde(model) -> CorrelationSDE:
    """The m = 2 correlation SDE of a matrix model without attention (ShapedMLPSDE, residual MLP, linear)."""
    c = model.coefficients
    if c.a_sa or c.k_sa:
        raise ParameterError("model", f"{model.name} has attention terms: its correlation does not close on rho")
    return CorrelationSDE(getattr(model, "c_plus", 0.0), getattr(model, "c_minus", 0.0), c.a_relu, c.k_lin)
