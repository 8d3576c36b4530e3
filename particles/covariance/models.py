"""Covariance SDEs of shaped networks on symmetric m x m matrices (Ito).

Every model is

    dV = [a_SA b_SA(V) + a_ReLU b_ReLU(V)] dt + [k_lin Sigma_lin(V) + k_SA Sigma_SA(V)]^{1/2} dB,

with time t = layer / n, and differs only in its four coefficients (see
:mod:`particles.covariance._algebra` for b_SA, b_ReLU, Sigma_lin, Sigma_SA). The
coefficients below were derived from the finite networks of MODELS.md section 2
(lambda^2 + gamma^2 = 1) by expanding one layer to order 1/n:

* residual linear layer X' = lambda X + gamma X W / sqrt(n): the cross term
  lambda gamma (X W X^T + X W^T X^T) / n^{3/2} gives 2 lambda^2 gamma^2 Sigma_lin and the
  Wishart fluctuation of gamma^2 X W W^T X^T / n^2 gives gamma^4 Sigma_lin, so
  k_lin = gamma^2 (2 - gamma^2), no drift;
* shaped attention: the same, plus gamma^2 (Delta V + V Delta^T) with
  A = I + Delta / sqrt(n) + Delta_2 / n: drift gamma^2 b_SA, extra diffusion
  gamma^4 Sigma_SA (divided by the number of heads: each head's logits are independent);
* residual shaped MLP (two weight matrices W_pre, W_post): cross term 2 lambda^2 gamma^2,
  Wishart fluctuations of W_post and of the hidden layer gamma^4 each: k_lin = 2 gamma^2.
  Writing sigma_s(x) = alpha x + beta |x|, alpha, beta = (s_+ +- s_-)/2, c = 1/(alpha^2 + beta^2):
  exactly n E[dV^{ab}] = gamma^2 n beta^2/(alpha^2 + beta^2) [(2/pi)(sqrt(1-rho^2) + rho arcsin rho)
  - rho] sqrt(V^{aa} V^{bb}), which is gamma^2 b_ReLU (1 + O(n^{-1/2})): the relative correction
  is -(c_+ + c_-)/sqrt(n) (measured: tests/test_cov_one_step.py);
* block = attention then MLP: the increments add (their covariance is O(n^{-3/2})):
  k_lin = gamma^2 (2 - gamma^2) + 2 gamma^2 = gamma^2 (4 - gamma^2), as MODELS.md states;
* LNR MLP without residual, V = (c/n) sigma_s(z) sigma_s(z)^T: k_lin = 1, drift b_ReLU.

All constants of MODELS.md section 2 held against the finite networks (one-step moments at
n = 64, 256, 1024, and the exact linear closed forms); none needed correcting.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, section 4 (attention and block SDEs).
Li, Nica, Roy, "The neural covariance SDE", arXiv:2206.02768, section 3 (shaped ReLU MLP).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from integrators.spaces import SymmetricMatrices
from integrators.validation import (
    ParameterError,
    check_in_range,
    check_positive,
    check_positive_int,
)
from . import _algebra as alg

__all__ = [
    "COVARIANCE_MODELS",
    "Coefficients",
    "ResidualLinearSDE",
    "ResidualShapedMLPSDE",
    "ShapedAttentionSDE",
    "ShapedBlockSDE",
    "ShapedMLPSDE",
    "check_covariance",
    "prepare_v0",
]


@dataclass(frozen=True)
class Coefficients:
    """dV = [a_sa b_SA + a_relu b_ReLU] dt + [k_lin Sigma_lin + k_sa Sigma_SA]^{1/2} dB."""

    a_sa: float
    a_relu: float
    k_lin: float
    k_sa: float


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ParameterError(name, f"expected a finite number, got {value!r}")
    return float(value)


def _check_gamma(gamma) -> None:
    check_in_range("gamma", gamma, 0.0, 1.0, lo_open=True)


def check_covariance(V0, name: str = "V0", rtol: float = 1e-10) -> np.ndarray:
    """Validate a covariance: (m, m) or (batch, m, m), finite, symmetric, PSD, m >= 2 -> (batch, m, m).

    Symmetry and positivity are checked to ``rtol`` times the largest entry; the
    returned array is exactly symmetric.
    """
    try:
        V = np.array(V0, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ParameterError(name, f"not a numeric array ({exc})") from None
    if V.ndim == 2:
        V = V[None]
    if V.ndim != 3 or V.shape[-1] != V.shape[-2]:
        raise ParameterError(name, f"expected shape (m, m) or (batch, m, m), got {np.shape(V0)}")
    if V.shape[-1] < 2:
        raise ParameterError("m", f"need m >= 2 tokens, got m = {V.shape[-1]}")
    if V.shape[0] < 1:
        raise ParameterError(name, "empty batch")
    if not np.all(np.isfinite(V)):
        raise ParameterError(name, "contains NaN or infinite entries")
    scale = max(1.0, float(np.max(np.abs(V))))
    asym = float(np.max(np.abs(V - np.swapaxes(V, -1, -2))))
    if asym > rtol * scale:
        raise ParameterError(name, f"is not symmetric (max |V - V^T| = {asym:.3g})")
    V = 0.5 * (V + np.swapaxes(V, -1, -2))
    lo = float(np.min(np.linalg.eigvalsh(V)))
    if lo < -rtol * scale * V.shape[-1]:
        raise ParameterError(name, f"is not positive semi-definite (smallest eigenvalue {lo:.3g})")
    return V


def prepare_v0(V0, batch: int | None) -> np.ndarray:
    """Validated (batch, m, m) V0 (a single (m, m) V0 is repeated ``batch`` times)."""
    V = check_covariance(V0)
    if batch is not None:
        check_positive_int("batch", batch)
        if V.shape[0] == 1:
            V = np.repeat(V, batch, axis=0)
        elif V.shape[0] != batch:
            raise ParameterError("batch", f"V0 holds {V.shape[0]} matrices but batch={batch}")
    return V


class _CovarianceSDE:
    """Shared implementation; subclasses are frozen dataclasses with a ``coefficients`` property."""

    is_sde = True
    calculus = "ito"
    space = SymmetricMatrices()
    name = "covariance"
    tau0: float = 1.0
    c_plus: float = 0.0
    c_minus: float = 0.0

    @property
    def coefficients(self) -> Coefficients:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def observables(self) -> dict:
        """Named observables of the state V: rho, diagonal, trace, spectrum, rank (:mod:`.observables`)."""
        from .observables import COVARIANCE_OBSERVABLES

        return dict(COVARIANCE_OBSERVABLES)

    @property
    def n_noise(self) -> int:
        """Number of m x m Brownian matrices per path (W1; W2 only when there is attention)."""
        return 2 if self.coefficients.k_sa > 0 else 1

    def params(self) -> dict:
        out = {"model": self.name}
        for k, v in self.__dict__.items():
            out[k] = v
        c = self.coefficients
        out.update({"a_sa": c.a_sa, "a_relu": c.a_relu, "k_lin": c.k_lin, "k_sa": c.k_sa, "calculus": self.calculus})
        return out

    def check_state(self, x0, normalize: bool = False) -> np.ndarray:
        """Validate V0: (m, m) or (batch, m, m) symmetric PSD with m >= 2 -> (batch, m, m)."""
        if normalize:
            raise ParameterError("normalize", "covariance states are not normalised; pass normalize=False")
        return check_covariance(x0)

    def noise_shape(self, state_shape) -> tuple:
        b, m = state_shape[0], state_shape[-1]
        return (b, self.n_noise, m, m)

    # ------------------------------------------------------------------ fields
    def drift(self, t, V):
        """a_sa b_SA(V) + a_relu b_ReLU(V); V of shape (batch, m, m), numpy or torch."""
        c = self.coefficients
        out = None
        if c.a_sa:
            out = c.a_sa * alg.b_sa(V, self.tau0)
        if c.a_relu:
            r = c.a_relu * alg.b_relu(V, self.c_plus, self.c_minus)
            out = r if out is None else out + r
        return out if out is not None else 0.0 * V

    def diffusion(self, t, V, dw):
        """g(V) dW through the factorisation; dw of shape ``noise_shape`` (batch, 1 or 2, m, m)."""
        c = self.coefficients
        return alg.noise_increment(alg.psd_factor(V), V, dw, c.k_lin, c.k_sa, self.tau0)

    def numba_drift(self, t, V):
        from . import _numba_kernels as nk

        c = self.coefficients
        return nk.drift(V, c.a_sa, c.a_relu, self.tau0, self.c_plus, self.c_minus)

    def numba_diffusion(self, t, V, dw):
        from . import _numba_kernels as nk

        c = self.coefficients
        return nk.diffusion(V, dw, c.k_lin, c.k_sa, self.tau0)

    def fused_sde_step(self, stepper_name: str, backend, noise):
        """A fused one-step map for ``solve`` (see :mod:`particles.covariance._fused`), or None."""
        from ._fused import fused_sde_step

        return fused_sde_step(self, stepper_name, backend, noise)

    def covariance_tensor(self, V: np.ndarray) -> np.ndarray:
        """The full Sigma(V)^{ab,cd} (..., m, m, m, m): for tests and small m only."""
        c = self.coefficients
        out = c.k_lin * alg.sigma_lin_tensor(V)
        if c.k_sa:
            out = out + c.k_sa * alg.sigma_sa_tensor(V, self.tau0)
        return out


@dataclass(frozen=True, eq=False)
class ShapedMLPSDE(_CovarianceSDE):
    """LNR shaped-ReLU MLP without residual: dV = b_ReLU dt + Sigma_lin^{1/2} dB.

    Finite network z^{l+1} = sqrt(c/n) W_l sigma_s(z^l), s_+- = 1 + c_+-/sqrt(n),
    c = 2/(s_+^2 + s_-^2), V_l = (c/n) sigma_s(z^l) sigma_s(z^l)^T (LNR's covariance,
    which is Markov). The diagonal is a geometric Brownian motion dV^{aa} = sqrt(2) V^{aa} dB.
    """

    c_plus: float = 0.0
    c_minus: float = -1.0
    name = "shaped-mlp"

    def __post_init__(self):
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)

    @property
    def coefficients(self) -> Coefficients:
        return Coefficients(0.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True, eq=False)
class ResidualShapedMLPSDE(_CovarianceSDE):
    """Residual shaped MLP sub-block X' = lambda X + gamma sigma_s(X W_pre/sqrt n) sqrt(c/n) W_post.

    Drift gamma^2 b_ReLU, diffusion (2 gamma^2 Sigma_lin)^{1/2} (two weight matrices).
    """

    gamma: float = 1.0
    c_plus: float = 0.0
    c_minus: float = -1.0
    name = "shaped-mlp-residual"

    def __post_init__(self):
        _check_gamma(self.gamma)
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)

    @property
    def coefficients(self) -> Coefficients:
        g2 = self.gamma**2
        return Coefficients(0.0, g2, 2.0 * g2, 0.0)


@dataclass(frozen=True, eq=False)
class ResidualLinearSDE(_CovarianceSDE):
    """Residual linear layer X' = lambda X + gamma X W / sqrt(n): dV = (k Sigma_lin)^{1/2} dB, k = gamma^2 (2 - gamma^2)."""

    gamma: float = 1.0
    name = "residual-linear"

    def __post_init__(self):
        _check_gamma(self.gamma)

    @property
    def coefficients(self) -> Coefficients:
        g2 = self.gamma**2
        return Coefficients(0.0, 0.0, g2 * (2.0 - g2), 0.0)


@dataclass(frozen=True, eq=False)
class ShapedAttentionSDE(_CovarianceSDE):
    """Residual shaped attention X' = lambda X + gamma A X W_V / sqrt(n), A = I + softmax(Y/tau) - 11^T/m.

    dV = gamma^2 b_SA dt + [gamma^2 (2 - gamma^2) Sigma_lin + (gamma^4 / heads) Sigma_SA]^{1/2} dB,
    tau = tau0 sqrt(n n_k). The drift is cubic in V: paths can blow up in finite time.
    """

    gamma: float = 1.0
    tau0: float = 1.0
    heads: int = 1
    name = "shaped-attention"

    def __post_init__(self):
        _check_gamma(self.gamma)
        check_positive("tau0", self.tau0)
        check_positive_int("heads", self.heads)

    @property
    def coefficients(self) -> Coefficients:
        g2 = self.gamma**2
        return Coefficients(g2, 0.0, g2 * (2.0 - g2), g2 * g2 / self.heads)


@dataclass(frozen=True, eq=False)
class ShapedBlockSDE(_CovarianceSDE):
    """Shaped transformer block (attention then residual shaped MLP, no layer norm).

    dV = gamma^2 (b_SA + b_ReLU) dt + [gamma^2 (4 - gamma^2) Sigma_lin + (gamma^4/heads) Sigma_SA]^{1/2} dB.
    """

    gamma: float = 1.0
    tau0: float = 1.0
    c_plus: float = 0.0
    c_minus: float = -1.0
    heads: int = 1
    name = "shaped-block"

    def __post_init__(self):
        _check_gamma(self.gamma)
        check_positive("tau0", self.tau0)
        _finite("c_plus", self.c_plus)
        _finite("c_minus", self.c_minus)
        check_positive_int("heads", self.heads)

    @property
    def coefficients(self) -> Coefficients:
        g2 = self.gamma**2
        return Coefficients(g2, g2, g2 * (4.0 - g2), g2 * g2 / self.heads)


#: model name -> class (the CLI's model names).
COVARIANCE_MODELS = {
    cls.name: cls for cls in (ShapedMLPSDE, ResidualShapedMLPSDE, ResidualLinearSDE, ShapedAttentionSDE, ShapedBlockSDE)
}
