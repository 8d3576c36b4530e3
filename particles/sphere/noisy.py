"""The noisy self-attention flow (MF): Brownian motion on the sphere plus the attention field.

    dX_i = X[mu](X_i) dt + sqrt(2/kappa) P_{X_i} o dB_i       (Stratonovich)
         = (X[mu](X_i) - ((d-1)/kappa) X_i) dt + sqrt(2/kappa) P_{X_i} dB_i   (Ito)

At beta = 0 the drift is P_x m (m the empirical mean) and the mean-field
stationary law is proportional to exp(kappa <x, m>); the order parameter
r = |m| solves r = A_d(kappa r) with A_d(s) = I_{d/2}(s)/I_{d/2-1}(s), whose
slope at 0 is kappa/d. So the uniform law is the unique stationary state for
kappa <= d: on the circle (d = 2) the pitchfork sits at kappa = 2 (the value
MF quotes), on S^2 at kappa = 3. tests/test_noisy_flow.py checks r against
the self-consistency root.

References
----------
Rigollet, "The mean-field dynamics of transformers", arXiv:2512.01868.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .geometry import sphere_tangent

if TYPE_CHECKING:  # the field builds its noisy version (with_noise), so only annotate here
    from .attention import SelfAttention
from integrators.validation import check_choice, check_positive

__all__ = ["NoisyAttention"]


@dataclass(frozen=True, eq=False)
class NoisyAttention:
    """SDE: a :class:`SelfAttention` field plus isotropic noise of intensity sqrt(2/kappa).

    Parameters
    ----------
    field : the deterministic field (must be on the sphere).
    kappa : inverse noise temperature, > 0.
    calculus : "stratonovich" (default; P_x o dB) or "ito" (adds the drift -(d-1)/kappa x).
    """

    field: "SelfAttention"
    kappa: float
    calculus: str = "stratonovich"

    is_sde = True

    def __post_init__(self):
        check_positive("kappa", self.kappa)
        check_choice("calculus", self.calculus, ("ito", "stratonovich"))
        if not self.field.projected:
            raise ValueError("NoisyAttention is defined on the sphere: field.projected must be True")

    @property
    def space(self):
        return self.field.space

    @property
    def name(self) -> str:
        return f"noisy-{self.field.name}"

    @property
    def observables(self) -> dict:
        """The field's observables (:data:`particles.sphere.observables.OBSERVABLES`)."""
        return self.field.observables

    @property
    def sigma(self) -> float:
        return float(np.sqrt(2.0 / self.kappa))

    def params(self) -> dict:
        return {**self.field.params(), "model": self.name, "kappa": float(self.kappa), "calculus": self.calculus}

    def check_state(self, x0, normalize: bool = False):
        return self.field.check_state(x0, normalize=normalize)

    def with_calculus(self, calculus: str) -> "NoisyAttention":
        return NoisyAttention(self.field, self.kappa, calculus)

    def noise_shape(self, state_shape):
        return tuple(state_shape)

    def _ito_correction(self, x):
        d = x.shape[-1]
        return (-(d - 1) / self.kappa) * x

    def drift(self, t, x):
        f = self.field.drift(t, x)
        return f + self._ito_correction(x) if self.calculus == "ito" else f

    def numba_drift(self, t, x):
        f = self.field.numba_drift(t, x)
        return f + self._ito_correction(x) if self.calculus == "ito" else f

    def diffusion(self, t, x, dw):
        """g(x) dW = sqrt(2/kappa) P_x dW."""
        return self.sigma * sphere_tangent(x, dw)
