"""Hyperparameters of the reference transformer of geometric signal propagation.

The reference model (MODELS.md section 3; Cowsik, Nebabu, Qi, Ganguli,
arXiv:2403.02579, section 2) acts on n tokens X in R^{n x d} (rows):

    U = LN(X),  LN(x) = sqrt(d) x / |x|           (RMS pre-norm, no gain)
    Attn(X) = softmax_rows(U W_q^T (U W_k^T)^T / sqrt(d)) U W_v^T
    Y = beta_A X + alpha_A Attn(X)
    MLP(Y) = W_2 phi(W_1 LN(Y) + b_1)
    X' = beta_M Y + alpha_M MLP(Y)

with Var(W_q), Var(W_k) = sigma_A / d (each logit has variance sigma_A^2),
Var(W_v) = sigma_V^2 / d, Var(W_1) = sigma_w^2 / d, Var(b_1) = sigma_b^2,
Var(W_2) = sigma_2^2 / d_mlp.

Conventions the spec marks [U] are options here, with documented defaults:

* ``residual="norm_preserving"`` (default): beta = sqrt(1 - alpha^2), so the
  residual stream has a finite fixed-point norm q*; ``"plain"``: beta = 1.
* ``layer_norm=True`` (default): the pre-norm LN above; ``False``: U = X.
* ``phi`` in {"erf", "tanh", "relu"} (default "erf", which has closed-form
  kernels).

The paper's own typeset choice for these conventions could not be read from
the sources available when this module was written (only the abstract and
section titles of arXiv:2403.02579 were reachable), so the defaults follow
MODELS.md section 3.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from integrators.validation import (
    ParameterError,
    check_choice,
    check_in_range,
    check_nonnegative,
    check_positive_int,
)

__all__ = ["PHIS", "RESIDUALS", "SignalPropParams"]

PHIS = ("erf", "tanh", "relu")
RESIDUALS = ("norm_preserving", "plain")


@dataclass(frozen=True)
class SignalPropParams:
    """Initialisation hyperparameters of the reference transformer (one block type).

    Parameters
    ----------
    n : number of tokens (>= 2).
    alpha_A, alpha_M : residual-branch strengths of attention and MLP, in [0, 1].
        ``alpha_A = 0`` removes attention, ``alpha_M = 0`` removes the MLP.
    sigma_A : standard deviation of each attention logit (>= 0).
    sigma_V : value weights have variance sigma_V^2 / d (>= 0).
    sigma_w, sigma_b : first MLP layer weight / bias standard deviations (>= 0).
    sigma_2 : second MLP layer weights have variance sigma_2^2 / d_mlp (>= 0).
    phi : MLP nonlinearity, one of ``PHIS``.
    residual : ``"norm_preserving"`` (beta = sqrt(1 - alpha^2)) or ``"plain"`` (beta = 1).
    layer_norm : pre-norm (RMS, no gain) before each sublayer.

    References
    ----------
    MODELS.md section 3 (reference model); Cowsik et al., arXiv:2403.02579, section 2.
    """

    n: int = 16
    alpha_A: float = 0.5
    alpha_M: float = 0.5
    sigma_A: float = 1.0
    sigma_V: float = 1.0
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    sigma_2: float = 1.0
    phi: str = "erf"
    residual: str = "norm_preserving"
    layer_norm: bool = True

    name = "cowsik"

    def __post_init__(self):
        object.__setattr__(self, "n", check_positive_int("n", self.n, minimum=2))
        for key in ("alpha_A", "alpha_M"):
            object.__setattr__(self, key, check_in_range(key, getattr(self, key), 0.0, 1.0))
        for key in ("sigma_A", "sigma_V", "sigma_w", "sigma_b", "sigma_2"):
            object.__setattr__(self, key, check_nonnegative(key, getattr(self, key)))
        check_choice("phi", self.phi, PHIS)
        check_choice("residual", self.residual, RESIDUALS)
        if not isinstance(self.layer_norm, bool):
            raise ParameterError("layer_norm", f"expected True or False, got {self.layer_norm!r}")

    @property
    def beta_A(self) -> float:
        """Skip-path weight of the attention sublayer."""
        return 1.0 if self.residual == "plain" else math.sqrt(1.0 - self.alpha_A**2)

    @property
    def beta_M(self) -> float:
        """Skip-path weight of the MLP sublayer."""
        return 1.0 if self.residual == "plain" else math.sqrt(1.0 - self.alpha_M**2)

    def params(self) -> dict:
        """JSON-friendly dict of every parameter."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.params(), sort_keys=True)

    def replace(self, **changes) -> SignalPropParams:
        """A copy with some parameters changed (validated again)."""
        values = self.params()
        unknown = set(changes) - set(values)
        if unknown:
            raise ParameterError(min(unknown), f"not a parameter of {type(self).__name__}")
        values.update(changes)
        return type(self)(**values)
