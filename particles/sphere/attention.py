"""The self-attention flow on the sphere: SA and USA vector fields.

    xdot_i = P_{x_i}( sum_h (1/Z_{i,h}) sum_j exp(beta <Q_h x_i, K_h x_j>) V_h x_j
                      + w(t) sigma(a(t) x_i + b(t)) ),
    Z_{i,h} = sum_k exp(beta <Q_h x_i, K_h x_k>)                   (SA)

GLPR eqs. (2.3)-(2.4) (SA), (2.7) (heads, summed), (2.8) (feed-forward); USA
(GLPR section 3.3) replaces Z by n; META writes USA as exp(beta(<.,.> - 1))/n,
the same flow with time rescaled by e^beta. With ``causal=True`` token i
attends to j <= i only, in the numerator and in Z_i (CAUSAL). With
``projected=False`` the field lives in R^d without layer norm (EMERGE, GLPR 9.1).

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, eqs. (2.3), (2.4), (2.7), (2.8), (3.3).
Geshkovski, Koubbi, Polyanskiy, Rigollet, "Dynamic metastability in the
self-attention model", arXiv:2410.06833.
Karagodin, Polyanskiy, Rigollet, "Clustering in causal attention masking", arXiv:2411.04990.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from integrators.ops import namespace
from integrators.spaces import Euclidean
from integrators.validation import ParameterError, check_choice, check_nonnegative, check_positive_int

from particles.sphere.geometry import Sphere, sphere_tangent
from particles.sphere.init import check_unit
from particles.sphere.params import PiecewiseConstant, resolve

__all__ = ["SelfAttention", "FeedForward", "NORMALIZATIONS", "ACTIVATIONS"]

#: "sa": softmax (row sums Z_i); "usa": Z_i -> n (GLPR, default USA);
#: "usa-meta": exp(beta(<.,.> - 1))/n (META's convention).
NORMALIZATIONS = ("sa", "usa", "usa-meta")
_MODE = {"sa": 0, "usa": 1, "usa-meta": 2}


def _relu(x):
    return x * (x > 0)


def _tanh(x):
    return x.tanh() if type(x).__module__.startswith("torch") else np.tanh(x)


ACTIVATIONS: dict[str, Callable] = {"relu": _relu, "tanh": _tanh}

# Above this many logits per call the reference path streams over row blocks,
# so memory stays O(block * n) instead of O(n^2).
_DENSE_LIMIT = 1 << 22


def _as_param(name: str, p: Any, ndim_single: int):
    """Normalise a parameter: None, callable, PiecewiseConstant or a constant array."""
    if p is None or isinstance(p, PiecewiseConstant) or callable(p):
        return p
    try:
        arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(name, f"expected an array, a callable of t or a PiecewiseConstant, got {type(p).__name__}") from None
    if arr.ndim == ndim_single:
        arr = arr[None]
    if arr.ndim != ndim_single + 1:
        raise ParameterError(name, f"expected shape (rows, d) or (heads, rows, d), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ParameterError(name, "contains NaN or infinite entries")
    return arr


def _heads_of(p) -> np.ndarray | None:
    """Value at t = 0 with a head axis, to check shapes up front."""
    if p is None:
        return None
    v = np.asarray(resolve(p, 0.0), dtype=np.float64)
    return v[None] if v.ndim == 2 else v


@dataclass(frozen=True, eq=False)
class FeedForward:
    """Feed-forward term w(t) sigma(a(t) x + b(t)) inside the projection (GLPR 2.8).

    Parameters
    ----------
    w : (d, m) output matrix (constant, callable of t or PiecewiseConstant).
    a : (m, d) input matrix.
    b : (m,) bias (default zero).
    activation : "relu" (default) or "tanh".
    """

    w: Any
    a: Any
    b: Any = None
    activation: str = "relu"

    def __post_init__(self):
        check_choice("activation", self.activation, ACTIVATIONS)
        w0 = np.asarray(resolve(self.w, 0.0))
        a0 = np.asarray(resolve(self.a, 0.0))
        if w0.ndim != 2 or a0.ndim != 2 or w0.shape[1] != a0.shape[0]:
            raise ParameterError("ffn", f"need w of shape (d, m) and a of shape (m, d), got {w0.shape} and {a0.shape}")
        if w0.shape[0] != a0.shape[1]:
            raise ParameterError("ffn", f"w maps to R^{w0.shape[0]} but a reads R^{a0.shape[1]}")
        if self.b is not None:
            b0 = np.asarray(resolve(self.b, 0.0))
            if b0.shape != (a0.shape[0],):
                raise ParameterError("ffn", f"b must have shape ({a0.shape[0]},), got {b0.shape}")

    @property
    def dim(self) -> int:
        return int(np.asarray(resolve(self.a, 0.0)).shape[1])

    @property
    def autonomous(self) -> bool:
        """Whether w, a and b are constant (the term ignores t)."""
        return not any(callable(p) or isinstance(p, PiecewiseConstant) for p in (self.w, self.a, self.b))

    def __call__(self, t: float, x):
        xp = namespace(x)
        w = xp.asarray(resolve(self.w, t), like=x)
        a = xp.asarray(resolve(self.a, t), like=x)
        h = x @ xp.swap(a)
        if self.b is not None:
            h = h + xp.asarray(resolve(self.b, t), like=x)
        return ACTIVATIONS[self.activation](h) @ xp.swap(w)


@dataclass(frozen=True, eq=False)
class SelfAttention:
    """SA / USA self-attention dynamics of n tokens in R^d (on S^{d-1} by default).

    Parameters
    ----------
    beta : inverse temperature (>= 0), in the exponent.
    Q, K : query/key matrices, (d_k, d) or (heads, d_k, d); None = identity.
        Constant, a callable t -> array, or a :class:`PiecewiseConstant` over layers.
    V : value matrix, (d, d) or (heads, d, d); None = identity.
    heads : number of heads when all of Q, K, V are None (identical heads).
    normalization : "sa" (softmax, default), "usa" (Z_i -> n, GLPR) or
        "usa-meta" (exp(beta(<.,.> - 1))/n, META).
    causal : token i attends to j <= i only.
    ffn : optional :class:`FeedForward` term.
    projected : True (on the sphere, layer norm) or False (R^d, no projection).

    Notes
    -----
    float64 by default: exp(beta <.,.>) overflows quickly otherwise. The SA
    reference path subtracts the row maximum (stable softmax).
    """

    beta: float = 1.0
    Q: Any = None
    K: Any = None
    V: Any = None
    heads: int = 1
    normalization: str = "sa"
    causal: bool = False
    ffn: FeedForward | None = None
    projected: bool = True
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    is_sde = False

    def __post_init__(self):
        check_nonnegative("beta", self.beta)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_positive_int("heads", self.heads)
        for name, nd in (("Q", 2), ("K", 2), ("V", 2)):
            object.__setattr__(self, name, _as_param(name, getattr(self, name), nd))
        q0, k0, v0 = _heads_of(self.Q), _heads_of(self.K), _heads_of(self.V)
        hs = {a.shape[0] for a in (q0, k0, v0) if a is not None}
        if len(hs) > 1:
            raise ParameterError("Q", f"Q, K, V disagree on the number of heads: {sorted(hs)}")
        if hs and self.heads not in (1, *hs):
            raise ParameterError("heads", f"heads={self.heads} but the matrices have {hs.pop()} heads")
        if q0 is not None and k0 is not None and q0.shape != k0.shape:
            raise ParameterError("K", f"Q has shape {q0.shape[1:]} but K has shape {k0.shape[1:]}: need the same (d_k, d)")
        dims = set()
        for nm, a in (("Q", q0), ("K", k0)):
            if a is not None:
                dims.add(a.shape[2])
        if v0 is not None:
            if v0.shape[1] != v0.shape[2]:
                raise ParameterError("V", f"V must be square (d, d) per head, got {v0.shape[1:]}")
            dims.add(v0.shape[2])
        if (q0 is None) != (k0 is None):
            other = q0 if q0 is not None else k0
            if other.shape[1] != other.shape[2]:
                raise ParameterError("Q" if q0 is None else "K", "the identity partner of a rectangular Q/K must be square")
        if len(dims) > 1:
            raise ParameterError("V", f"Q, K, V act on different dimensions d: {sorted(dims)}")
        if self.ffn is not None and dims and self.ffn.dim not in dims:
            raise ParameterError("ffn", f"feed-forward acts on R^{self.ffn.dim}, attention on R^{dims.pop()}")
        object.__setattr__(self, "_dim", dims.pop() if dims else (self.ffn.dim if self.ffn is not None else None))

    # ----------------------------------------------------------------- metadata
    @property
    def space(self):
        return Sphere() if self.projected else Euclidean()

    @property
    def name(self) -> str:
        return self.normalization

    @property
    def observables(self) -> dict:
        """Named observables of token configurations on the sphere (:data:`particles.sphere.observables.OBSERVABLES`)."""
        from .observables import OBSERVABLES

        return dict(OBSERVABLES)

    @property
    def n_heads(self) -> int:
        for p in (self.Q, self.K, self.V):
            h = _heads_of(p)
            if h is not None:
                return h.shape[0]
        return self.heads

    @property
    def mode(self) -> int:
        return _MODE[self.normalization]

    def params(self) -> dict:
        """JSON-friendly description of every parameter (for HDF5 attributes)."""

        def desc(p):
            if p is None:
                return "identity"
            if isinstance(p, PiecewiseConstant):
                return {"piecewise_constant": p.values.tolist(), "breaks": p.breaks.tolist()}
            if callable(p):
                return f"callable {getattr(p, '__name__', repr(p))}"
            return p.tolist() if p.size <= 65536 else f"array{p.shape}"

        return {
            "model": self.normalization,
            "beta": float(self.beta),
            "Q": desc(self.Q),
            "K": desc(self.K),
            "V": desc(self.V),
            "heads": self.n_heads,
            "normalization": self.normalization,
            "causal": bool(self.causal),
            "ffn": None if self.ffn is None else self.ffn.activation,
            "projected": bool(self.projected),
        }

    def check_state(self, x0, normalize: bool = False) -> np.ndarray:
        """Validate an initial state: (n, d) or (batch, n, d) unit vectors -> (batch, n, d)."""
        if self.projected:
            x = check_unit(x0, name="x0", normalize=normalize)
        else:
            x = np.asarray(x0, dtype=np.float64)
            x = x[None] if x.ndim == 2 else x
            if x.ndim != 3:
                raise ParameterError("x0", f"expected shape (n, d) or (batch, n, d), got {x.shape}")
        if self._dim is not None and x.shape[-1] != self._dim:
            raise ParameterError("x0", f"tokens have dimension {x.shape[-1]} but Q/K/V act on R^{self._dim}")
        return x

    def with_noise(self, kappa: float, calculus: str = "stratonovich"):
        """The noisy flow dX = field dt + sqrt(2/kappa) dW on the sphere (MF)."""
        from particles.sphere.noisy import NoisyAttention

        return NoisyAttention(self, kappa, calculus)

    # ------------------------------------------------------------ parameters at t
    def _matrices(self, t: float, like):
        """(Q, K, V) at time t as lists of per-head arrays in ``like``'s namespace (None = identity)."""
        xp = namespace(like)
        key = (xp.name, str(getattr(like, "dtype", "")), str(getattr(like, "device", "")))
        out = []
        for p in (self.Q, self.K, self.V):
            if p is None:
                out.append(None)
            elif callable(p):
                v = np.asarray(p(t), dtype=np.float64)
                out.append(xp.asarray(v[None] if v.ndim == 2 else v, like=like))
            else:
                ck = key + (id(p),)
                if ck not in self._cache:
                    self._cache[ck] = xp.asarray(p, like=like)
                out.append(self._cache[ck])
        return out

    # ---------------------------------------------------------------- the field
    def attention(self, t: float, x):
        """Unprojected attention term sum_h (1/Z_h) sum_j e^{beta<Q x_i, K x_j>} V x_j, shape of x."""
        xp = namespace(x)
        Q, K, V = self._matrices(t, x)
        H = self.n_heads
        out = None
        for h in range(H):
            q = x if Q is None else x @ xp.swap(Q[h])
            k = x if K is None else x @ xp.swap(K[h])
            v = x if V is None else x @ xp.swap(V[h])
            term = self._attend(q, k, v, xp)
            out = term if out is None else out + term
        return out

    def _attend(self, q, k, v, xp):
        batch, n = q.shape[0], q.shape[1]
        block = n if batch * n * n <= _DENSE_LIMIT else max(1, _DENSE_LIMIT // (batch * n))
        parts = []
        for i0 in range(0, n, block):
            i1 = min(n, i0 + block)
            s = self.beta * (q[:, i0:i1] @ xp.swap(k))
            if self.causal:
                mask = xp.tril_mask(n, s)[i0:i1]
                s = xp.where(mask, s, s * 0 - float("inf"))
            if self.normalization == "sa":
                w = xp.exp(s - xp.max(s, axis=-1, keepdims=True))
                parts.append((w @ v) / xp.sum(w, axis=-1, keepdims=True))
            else:
                if self.normalization == "usa-meta":
                    s = s - self.beta
                parts.append((xp.exp(s) @ v) / n)
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)

    @property
    def autonomous(self) -> bool:
        """Whether the field ignores t: constant Q, K, V and feed-forward term.

        :func:`integrators.solve` may then replay a CUDA graph of the step loop between saves.
        """
        constant = all(p is None or isinstance(p, np.ndarray) for p in (self.Q, self.K, self.V))
        return constant and (self.ffn is None or self.ffn.autonomous)

    def drift(self, t: float, x):
        """The vector field at time t; x of shape (batch, n, d) (numpy or torch)."""
        out = self.attention(t, x)
        if self.ffn is not None:
            out = out + self.ffn(t, x)
        return sphere_tangent(x, out) if self.projected else out

    def numba_drift(self, t: float, x: np.ndarray) -> np.ndarray:
        """Same field through the compiled Numba kernels (numpy float32/float64 input).

        With Q = K = V = I the kernels read x itself (no copies); the feed-forward
        term and the projection P_x are applied inside the kernel. Short
        sequences use a per-system kernel, long ones a streamed (flash) kernel
        that never forms the n x n matrix (see :mod:`particles.sphere._numba_kernels`).
        """
        from particles.sphere._numba_kernels import attention_numba

        Q, K, V = self._matrices(t, x)
        base = None if self.ffn is None else self.ffn(t, x)
        return attention_numba(
            x, Q, K, V, self.n_heads, float(self.beta), self.mode, bool(self.causal), base=base, project=self.projected
        )

    def fused_step(self, stepper_name: str, backend):
        """A fused one-step map ``step(t, x, dt) -> retract(x + dt f(t, x))`` or None.

        The backend hook of :func:`integrators.solve`: offered for "euler" with
        Q = K = V = I and no feed-forward term on the numba and torch backends
        (the ensemble workload); same mathematics as the generic stepper, one
        pass over memory. See :mod:`particles.sphere._fused`.
        """
        if getattr(backend, "on_cuda", False):
            # on CUDA: the Triton Euler kernel for short sequences, else the torch fused step
            from ._cuda_dispatch import cuda_fused_step

            step = cuda_fused_step(self, stepper_name, backend)
            if step is not None:
                return step
        from particles.sphere._fused import fused_step

        return fused_step(self, stepper_name, backend)

    def device_drift(self, backend):
        """``f(t, x)`` on the backend's CUDA device through SDPA or the Triton kernels, or None.

        The torch backend's hook on CUDA (:mod:`particles.sphere._cuda_dispatch`): SDPA for the
        softmax field where it has a fused kernel for the dtype, the flash-style Triton kernel for
        float64 and the USA weights; the generic array-API drift otherwise.
        """
        from ._cuda_dispatch import cuda_drift

        return cuda_drift(self)
