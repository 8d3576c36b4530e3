"""Token configurations and perturbation probes for the finite networks.

Conventions: X (batch, n, d), C = X X^T / d, so q = |x_i|^2 / d.
"""

from __future__ import annotations

import numpy as np
import torch

from integrators.validation import (
    ParameterError,
    check_in_range,
    check_positive,
    check_positive_int,
)

__all__ = ["PROBE_MODES", "probes", "simplex_tokens", "uneven_tokens"]

PROBE_MODES = ("isotropic", "mean", "differential")


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _frames(batch: int, d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, k, d) random orthonormal rows (Haar on the Stiefel manifold)."""
    z = torch.randn(batch, d, k, generator=gen, dtype=torch.float64)
    qmat, r = torch.linalg.qr(z)
    return (qmat * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]).transpose(-1, -2)


def simplex_tokens(batch: int, n: int, d: int, q: float, c: float, seed: int = 0) -> torch.Tensor:
    """Regular simplex: X X^T / d = q [(1 - c) I + c 1 1^T] exactly, randomly oriented.

    Rows are sqrt(q d) Cbar^{1/2} F with Cbar^{1/2} = sqrt(1 - c) I + (a / n) 1 1^T,
    a = sqrt(1 - c + n c) - sqrt(1 - c), and F (n x d) random orthonormal rows (needs d >= n).
    Near collapse (c -> 1) the token differences sqrt(q d (1 - c)) stay exact in float64.
    """
    batch = check_positive_int("batch", batch)
    n = check_positive_int("n", n, minimum=2)
    d = check_positive_int("d", d, minimum=2)
    q = check_positive("q", q)
    c = check_in_range("c", c, -1.0 / (n - 1), 1.0)
    if d < n:
        raise ParameterError("d", f"a regular simplex of n={n} tokens needs d >= n, got d={d}")
    r = np.sqrt(1.0 - c)
    a = np.sqrt(1.0 - c + n * c) - r
    root = r * torch.eye(n, dtype=torch.float64) + (a / n) * torch.ones(n, n, dtype=torch.float64)
    f = _frames(batch, d, n, _gen(seed))
    return np.sqrt(q * d) * root @ f


def uneven_tokens(batch: int, n: int, d: int, q: float, seed: int = 0, spread: float = 0.5) -> torch.Tensor:
    """A non-symmetric start: norms |x_i|^2/d spread around q, cosines uneven (in (0, 1)).

    Built as x_i = sqrt(q_i d) normalise(g_i + w_i e) with Gaussian g_i and token weights w_i,
    so pairwise cosines vary from pair to pair; q_i = q exp(spread * N(0, 1)).
    """
    batch = check_positive_int("batch", batch)
    n = check_positive_int("n", n, minimum=2)
    d = check_positive_int("d", d, minimum=2)
    if d < n + 1:
        raise ParameterError("d", f"an uneven start of n={n} tokens needs d >= n + 1, got d={d}")
    gen = _gen(seed)
    f = _frames(batch, d, n + 1, gen)
    w = 2.0 * torch.rand(batch, n, 1, generator=gen, dtype=torch.float64)
    g = torch.randn(batch, n, n, generator=gen, dtype=torch.float64) / np.sqrt(n)
    x = g @ f[:, :n] + w * f[:, n:]
    x = x / x.norm(dim=-1, keepdim=True)
    qi = check_positive("q", q) * torch.exp(spread * torch.randn(batch, n, 1, generator=gen, dtype=torch.float64))
    return x * torch.sqrt(qi * d)


def probes(batch: int, k: int, n: int, d: int, mode: str = "isotropic", seed: int = 0) -> torch.Tensor:
    """Hutchinson probes (batch, k, n, d) with E[|v|^2] = n d.

    mode "isotropic": iid N(0, 1) entries (E|Jv|^2 = ||J||_F^2);
    "mean": every token gets the same N(0, I_d) vector (the token-mean mode); "differential": isotropic minus its token mean, rescaled by
    sqrt(n / (n - 1)) (the n - 1 token-differential modes).
    """
    batch, k = check_positive_int("batch", batch), check_positive_int("k", k)
    if mode not in PROBE_MODES:
        raise ParameterError("mode", f"unknown probe mode {mode!r}; choose one of {list(PROBE_MODES)}")
    gen = _gen(seed)
    if mode == "mean":
        v = torch.randn(batch, k, 1, d, generator=gen, dtype=torch.float64)
        return v.expand(batch, k, n, d).clone()
    v = torch.randn(batch, k, n, d, generator=gen, dtype=torch.float64)
    if mode == "differential":
        v = (v - v.mean(-2, keepdim=True)) * np.sqrt(n / (n - 1))
    return v
