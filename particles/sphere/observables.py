"""Observables of token configurations, each ``fn(x, model=None) -> (batch, ...)`` on numpy arrays.

Energy (GLPR eqs. 3.5, 3.11): E_beta(X) = (1/(2 beta n^2)) sum_{i,j} exp(beta <x_i, x_j>);
USA is the gradient flow xdot = n grad E and E never decreases along SA or USA
with V = I. The normalised form (META) (1/n^2) sum_{i,j} exp(beta(<x_i,x_j> - 1))
lies in (0, 1] and has plateaus at sum_q (m_q/n)^2 for clusters of sizes m_q.

Cluster counts: connected components of the graph <x_i, x_j> > 1 - delta (the
robust choice), and the authors' convention, the rank of the 0/1 matrix
[<x_i, x_j> > 0.9999].
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "gram",
    "pair_inner_products",
    "pair_histogram",
    "fraction_close_pairs",
    "cluster_count",
    "cluster_count_rank",
    "energy",
    "normalized_energy",
    "min_inner_product",
    "consensus_gap",
    "collapse_time",
    "OBSERVABLES",
]


def gram(x: np.ndarray) -> np.ndarray:
    """Pairwise inner products <x_i, x_j>, (batch, n, n)."""
    return x @ np.swapaxes(x, -1, -2)


def pair_inner_products(x: np.ndarray) -> np.ndarray:
    """Off-diagonal inner products i < j, flattened: (batch, n(n-1)/2)."""
    n = x.shape[-2]
    iu = np.triu_indices(n, k=1)
    return gram(x)[:, iu[0], iu[1]]


def pair_histogram(x: np.ndarray, model=None, bins: int = 50) -> np.ndarray:
    """Histogram (density) of the pairwise inner products over [-1, 1], (batch, bins)."""
    p = pair_inner_products(x)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    return np.stack([np.histogram(np.clip(r, -1, 1), bins=edges, density=True)[0] for r in p])


def fraction_close_pairs(x: np.ndarray, model=None, delta: float = 1e-3) -> np.ndarray:
    """P = fraction of ordered pairs i != j with <x_i, x_j> >= 1 - delta (GLPR Fig. 3), (batch,)."""
    n = x.shape[-2]
    if n < 2:
        return np.ones(x.shape[0])
    g = gram(x)
    close = (g >= 1.0 - delta).sum(axis=(-1, -2)) - n  # remove the diagonal
    return close / (n * (n - 1))


def cluster_count(x: np.ndarray, model=None, delta: float = 1e-3) -> np.ndarray:
    """Connected components of the graph <x_i, x_j> > 1 - delta, (batch,) ints."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for b, g in enumerate(gram(x)):
        out[b] = connected_components(csr_matrix(g > 1.0 - delta), directed=False)[0]
    return out


def cluster_count_rank(x: np.ndarray, model=None, threshold: float = 0.9999) -> np.ndarray:
    """Authors' convention: rank of the 0/1 matrix [<x_i, x_j> > threshold], (batch,) ints."""
    return np.array([np.linalg.matrix_rank((g > threshold).astype(float)) for g in gram(x)], dtype=np.int64)


def _beta(model, beta):
    if beta is not None:
        return float(beta)
    if model is None:
        raise ValueError("energy needs beta (pass beta= or a model with a beta)")
    field = getattr(model, "field", model)
    return float(field.beta)


def energy(x: np.ndarray, model=None, beta: float | None = None) -> np.ndarray:
    """E_beta = (1/(2 beta n^2)) sum_{i,j} exp(beta <x_i, x_j>), (batch,). Needs beta > 0."""
    b = _beta(model, beta)
    if b <= 0:
        raise ValueError("the energy E_beta is defined for beta > 0")
    n = x.shape[-2]
    return np.exp(b * gram(x)).sum(axis=(-1, -2)) / (2 * b * n * n)


def normalized_energy(x: np.ndarray, model=None, beta: float | None = None) -> np.ndarray:
    """(1/n^2) sum_{i,j} exp(beta(<x_i, x_j> - 1)) in (0, 1] (META staircase form), (batch,)."""
    b = _beta(model, beta)
    n = x.shape[-2]
    # <x_i, x_j> <= 1 on the sphere; a round-off excess times a huge beta would overflow
    return np.exp(b * (np.minimum(gram(x), 1.0) - 1.0)).sum(axis=(-1, -2)) / (n * n)


def min_inner_product(x: np.ndarray, model=None) -> np.ndarray:
    """min_{i,j} <x_i, x_j>, (batch,)."""
    return gram(x).min(axis=(-1, -2))


def consensus_gap(x: np.ndarray, model=None) -> np.ndarray:
    """1 - min_{i,j} <x_i, x_j> (decays like e^{-2t} near consensus for SA), (batch,)."""
    return 1.0 - min_inner_product(x)


def collapse_time(t: np.ndarray, fraction: np.ndarray, level: float = 1.0) -> np.ndarray:
    """First saved time at which ``fraction`` (time, batch) reaches ``level``; NaN if never.

    Use with :func:`fraction_close_pairs` saved over time.
    """
    t = np.asarray(t)
    f = np.asarray(fraction)
    hit = f >= level - 1e-12
    first = np.argmax(hit, axis=0)
    out = t[first].astype(float)
    out[~hit.any(axis=0)] = np.nan
    return out


OBSERVABLES = {
    "energy": energy,
    "normalized_energy": normalized_energy,
    "fraction_close": fraction_close_pairs,
    "cluster_count": cluster_count,
    "cluster_count_rank": cluster_count_rank,
    "min_inner_product": min_inner_product,
    "consensus_gap": consensus_gap,
    "pair_histogram": pair_histogram,
}

# Each builds (batch, n, n) Gram matrices: solve's memory check sizes them by this mark.
for _fn in OBSERVABLES.values():
    _fn.pairwise = True
del _fn
