"""Initial conditions on the sphere, all returning float64 arrays of shape (batch, n, d).

Seeds are explicit: every random constructor takes ``seed`` (an int or a
``numpy.random.Generator``) and is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from integrators.validation import ParameterError, check_in_range, check_positive_int

__all__ = [
    "uniform_sphere",
    "orthogonal",
    "equiangular",
    "hemisphere",
    "from_file",
    "check_unit",
    "random_rotation",
    "INITS",
]


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def random_rotation(d: int, seed=None) -> np.ndarray:
    """Haar-distributed orthogonal d x d matrix (QR of a Gaussian, sign-fixed)."""
    g = _rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))


def uniform_sphere(batch: int, n: int, d: int, seed=None) -> np.ndarray:
    """n iid uniform points on S^{d-1} per system: normalised Gaussians."""
    batch = check_positive_int("batch", batch)
    n = check_positive_int("n", n)
    d = check_positive_int("d", d, minimum=2)
    x = _rng(seed).standard_normal((batch, n, d))
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def orthogonal(batch: int, n: int, d: int, seed=None) -> np.ndarray:
    """Mutually orthogonal tokens (needs d >= n).

    With ``seed=None`` the tokens are the first n standard basis vectors
    (x_i = e_i, the start of GLPR Thm 6.8); otherwise a random orthonormal frame
    per system.
    """
    batch = check_positive_int("batch", batch)
    n = check_positive_int("n", n)
    d = check_positive_int("d", d, minimum=2)
    if d < n:
        raise ParameterError("d", f"orthogonal start needs d >= n, got d={d}, n={n}")
    if seed is None:
        x = np.zeros((batch, n, d))
        x[:, np.arange(n), np.arange(n)] = 1.0
        return x
    rng = _rng(seed)
    return np.stack([random_rotation(d, rng)[:n] for _ in range(batch)])


def equiangular(batch: int, n: int, d: int, g0: float, seed=None) -> np.ndarray:
    """Tokens with all pairwise inner products equal to ``g0`` (needs d >= n).

    Gram matrix G = (1 - g0) I + g0 11^T, PSD iff g0 >= -1/(n-1) (the regular
    simplex). Rows of U sqrt(w) from G = U diag(w) U^T, embedded in R^d and,
    if ``seed`` is given, randomly rotated.
    """
    batch = check_positive_int("batch", batch)
    n = check_positive_int("n", n, minimum=2)
    d = check_positive_int("d", d, minimum=2)
    check_in_range("g0", g0, -1.0 / (n - 1), 1.0)
    if d < n:
        raise ParameterError("d", f"equiangular start needs d >= n, got d={d}, n={n}")
    gram = (1 - g0) * np.eye(n) + g0 * np.ones((n, n))
    w, u = np.linalg.eigh(gram)
    rows = u * np.sqrt(np.clip(w, 0.0, None))
    base = np.zeros((n, d))
    base[:, :n] = rows
    base /= np.linalg.norm(base, axis=-1, keepdims=True)
    if seed is None:
        return np.broadcast_to(base, (batch, n, d)).copy()
    rng = _rng(seed)
    return np.stack([base @ random_rotation(d, rng).T for _ in range(batch)])


def hemisphere(batch: int, n: int, d: int, seed=None, w=None) -> np.ndarray:
    """Uniform points conditioned on <x_i, w> > 0 (default w = e_1): reflect the others."""
    x = uniform_sphere(batch, n, d, seed)
    w = np.eye(d)[0] if w is None else np.asarray(w, dtype=np.float64)
    if w.shape != (d,):
        raise ParameterError("w", f"expected shape ({d},), got {w.shape}")
    w = w / np.linalg.norm(w)
    s = np.sign(x @ w)
    s[s == 0] = 1.0
    return x * s[..., None]


def check_unit(x: np.ndarray, name: str = "x0", tol: float = 1e-8, normalize: bool = False) -> np.ndarray:
    """Validate a state of unit vectors, shape (n, d) or (batch, n, d) -> (batch, n, d).

    Non-unit rows are an error unless ``normalize=True`` is asked for explicitly.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ParameterError(name, f"expected shape (n, d) or (batch, n, d), got {x.shape}")
    if x.shape[1] < 1 or x.shape[2] < 2:
        raise ParameterError(name, f"need n >= 1 tokens of dimension d >= 2, got {x.shape}")
    # |x_i|^2 without an x-sized temporary (x * x, isfinite(x)): for an ensemble of 67 MB
    # that halves the validation, a fixed cost of every solve (issue 11)
    sq = np.einsum("...i,...i->...", x, x)
    if not np.all(np.isfinite(sq)) and not np.all(np.isfinite(x)):
        raise ParameterError(name, "contains NaN or infinite entries")
    norms = np.sqrt(sq)
    if normalize:
        if np.any(norms == 0):
            raise ParameterError(name, "a token is the zero vector and cannot be normalised")
        return x / norms[..., None]
    err = float(np.max(np.abs(norms - 1.0)))
    if err > tol:
        raise ParameterError(
            name, f"tokens must be unit vectors (max | |x_i| - 1 | = {err:.3g}); pass normalize=True to normalise them"
        )
    return x


def from_file(path: str | Path, normalize: bool = False) -> np.ndarray:
    """Load initial tokens from a ``.npy`` file of shape (n, d) or (batch, n, d)."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError("init_file", f"no such file: {p}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise ParameterError("init_file", f"{p} is not a valid .npy array ({exc})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise ParameterError("init_file", f"{p} holds dtype {arr.dtype}, not numbers")
    return check_unit(arr, name="init_file", normalize=normalize)


INITS = {
    "uniform": uniform_sphere,
    "orthogonal": orthogonal,
    "hemisphere": hemisphere,
}
