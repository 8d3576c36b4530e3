"""Observables of token covariances V (batch, m, m), each ``fn(V, model=None) -> (batch, ...)`` on numpy arrays.

The covariance models' ``observables`` property returns :data:`COVARIANCE_OBSERVABLES`:

* ``rho``      correlations rho^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) for a < b, (batch, m(m-1)/2),
               pairs in the order of ``np.triu_indices(m, 1)`` (NOCI eq. 4.1; LNR section 3);
* ``diagonal`` V^{aa}, the squared token norms / width, (batch, m);
* ``trace``    tr V, (batch,);
* ``spectrum`` eigenvalues of V in ascending order, (batch, m);
* ``rank``     numerical rank: eigenvalues above m * eps * max|lambda| (as ``np.linalg.matrix_rank``),
               (batch,) ints; rank collapse drives it to 1.

The correlation SDE's state is x = artanh(rho) (batch, 1); its set
:data:`CORRELATION_OBSERVABLES` holds ``rho`` = tanh(x). Paths that left the
finite numbers give NaN (rank -1) instead of an error.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, section 4.
Li, Nica, Roy, "The neural covariance SDE", arXiv:2206.02768, section 3.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "correlations",
    "diagonal",
    "trace",
    "spectrum",
    "numerical_rank",
    "correlation_from_artanh",
    "COVARIANCE_OBSERVABLES",
    "COVARIANCE_OBSERVABLE_DIMS",
    "CORRELATION_OBSERVABLES",
]


def _finite_rows(V: np.ndarray) -> np.ndarray:
    return np.isfinite(V).all(axis=(-1, -2))


def correlations(V: np.ndarray, model=None) -> np.ndarray:
    """rho^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) for a < b (``np.triu_indices(m, 1)`` order), (batch, m(m-1)/2)."""
    V = np.asarray(V)
    a, b = np.triu_indices(V.shape[-1], 1)
    d = np.diagonal(V, axis1=-2, axis2=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return V[..., a, b] / np.sqrt(d[..., a] * d[..., b])


def diagonal(V: np.ndarray, model=None) -> np.ndarray:
    """V^{aa}, (batch, m)."""
    return np.diagonal(np.asarray(V), axis1=-2, axis2=-1).copy()


def trace(V: np.ndarray, model=None) -> np.ndarray:
    """tr V, (batch,)."""
    return np.trace(np.asarray(V), axis1=-2, axis2=-1)


def spectrum(V: np.ndarray, model=None) -> np.ndarray:
    """Eigenvalues of the symmetric V in ascending order, (batch, m); NaN for a non-finite V."""
    V = np.asarray(V, dtype=np.float64)
    out = np.full(V.shape[:-1], np.nan)
    ok = _finite_rows(V)
    if ok.any():
        out[ok] = np.linalg.eigvalsh(0.5 * (V[ok] + np.swapaxes(V[ok], -1, -2)))
    return out


def numerical_rank(V: np.ndarray, model=None) -> np.ndarray:
    """Eigenvalues above m * eps * max|lambda| (``np.linalg.matrix_rank``'s tolerance), (batch,) ints; -1 if not finite."""
    lam = spectrum(V)
    m = lam.shape[-1]
    scale = np.max(np.abs(lam), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        r = (lam > m * np.finfo(np.float64).eps * scale).sum(axis=-1)
    return np.where(np.isfinite(lam).all(axis=-1), r, -1).astype(np.int64)


def correlation_from_artanh(x: np.ndarray, model=None) -> np.ndarray:
    """rho = tanh(x) for the correlation SDE's state x = artanh(rho), (batch, 1)."""
    return np.tanh(np.asarray(x))


COVARIANCE_OBSERVABLES = {
    "rho": correlations,
    "diagonal": diagonal,
    "trace": trace,
    "spectrum": spectrum,
    "rank": numerical_rank,
}

#: Dimensions after time of each covariance observable in a stored run ("m" is V's own axis).
COVARIANCE_OBSERVABLE_DIMS = {
    "rho": ("batch", "pair"),
    "diagonal": ("batch", "m"),
    "trace": ("batch",),
    "spectrum": ("batch", "eigenvalue"),
    "rank": ("batch",),
}

CORRELATION_OBSERVABLES = {"rho": correlation_from_artanh}
