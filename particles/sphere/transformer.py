"""A finite, discrete transformer in torch, and the flows it converges to as depth grows.

L attention layers with step h = T/L; layer k uses the parameters of the
:class:`SelfAttention` field at time t_k = k h (beta, Q, K, V, heads, causal
mask, feed-forward term). With the attention term

    A_i(x) = sum_h (1/Z_{i,h}) sum_j exp(beta <Q_h x_i, K_h x_j>) V_h x_j   (+ ffn(x_i))

* **post-LN**: x_i <- LN(x_i + h A_i(x)), LN(y) = y/|y|. This is one explicit
  Euler step followed by renormalisation (a retraction), so x^(L) converges to
  the GLPR flow xdot_i = P_{x_i} A_i(x) at order 1 in h (GLPR eqs. 2.3-2.4).
* **pre-LN**: the residual stream is not normalised: z_i <- z_i + h A_i(LN(z)).
  This is explicit Euler for z' = A(z/|z|), whose solution, written z_i = r_i theta_i
  with r_i = |z_i|, obeys

      theta_i' = (1/r_i) P_{theta_i} A_i(theta),     r_i' = <theta_i, A_i(theta)>      [D]

  (r' = <z, z'>/|z| = <theta, A>, theta' = (z' - r' theta)/r). The directions follow
  the post-LN flow slowed down token by token by 1/r_i: normalisation as speed
  regulation. :class:`PreLNFlow` is this (theta, r) system as a model for
  :func:`integrators.solve`; z^(L)/|z^(L)| -> theta(T) and |z^(L)| -> r(T) at order 1.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, eqs. (2.1)-(2.4) (post-LN as a flow).
Rigollet, "The mean-field dynamics of transformers", arXiv:2512.01868 (pre-LN).
Karagodin, Ge, Polyanskiy, Rigollet, "Normalization in attention dynamics",
arXiv:2510.22026 (the decomposition x = r theta; Pre-LN as speed regulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from integrators.ops import namespace

from .attention import SelfAttention
from .geometry import sphere_tangent
from .init import check_unit
from integrators.validation import ParameterError, check_choice, check_positive, check_positive_int

__all__ = ["DiscreteTransformer", "PreLNFlow", "DirectionRadius", "NORMS"]

NORMS = ("post", "pre")


@dataclass(frozen=True, eq=False)
class DiscreteTransformer:
    """L attention layers of step h = t_end / L, post-LN or pre-LN, batched over (batch, n, d).

    Parameters
    ----------
    attention : the :class:`SelfAttention` whose parameters every layer uses (at t_k = k h);
        it must live on the sphere (``projected=True``).
    layers : number of layers L.
    t_end : depth in units of time, T = L h.
    norm : "post" (x <- LN(x + h A(x))) or "pre" (z <- z + h A(LN(z))).
    dtype : "float64" (default) or "float32".
    device : torch device.
    """

    attention: SelfAttention
    layers: int
    t_end: float = 1.0
    norm: str = "post"
    dtype: str = "float64"
    device: str = "cpu"

    def __post_init__(self):
        check_positive_int("layers", self.layers)
        check_positive("t_end", self.t_end)
        check_choice("norm", self.norm, NORMS)
        check_choice("dtype", self.dtype, ("float64", "float32"))
        if not self.attention.projected:
            raise ParameterError("attention", "the transformer's layer norm needs a field on the sphere (projected=True)")

    @property
    def h(self) -> float:
        return self.t_end / self.layers

    def _tensor(self, x):
        import torch

        dt = {"float64": torch.float64, "float32": torch.float32}[self.dtype]
        if isinstance(x, torch.Tensor):
            return x.to(dtype=dt, device=self.device)
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dt, device=self.device)

    def attend(self, t: float, x):
        """A(x) at layer time t, unprojected, (batch, n, d): torch attention per head, summed."""
        import torch

        att = self.attention
        Q, K, V = att._matrices(t, x)
        n = x.shape[-2]
        out = None
        for h in range(att.n_heads):
            q = x if Q is None else x @ Q[h].T
            k = x if K is None else x @ K[h].T
            v = x if V is None else x @ V[h].T
            if att.normalization == "sa":
                # the explicit softmax(beta q k^T) v of the authors' code, not SDPA: SDPA's fused kernel
                # sums in another order and differs from it by a few ulp per layer
                s = float(att.beta) * (q @ k.transpose(-1, -2))
                if att.causal:
                    s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
                y = torch.softmax(s, dim=-1) @ v
            else:
                # Unnormalised attention (Z_i = n): exp(beta <q_i, k_j>) [e^{-beta} for META] / n.
                s = float(att.beta) * (q @ k.transpose(-1, -2))
                if att.normalization == "usa-meta":
                    s = s - float(att.beta)
                w = torch.exp(s)
                if att.causal:
                    w = torch.tril(w)
                y = (w @ v) / n
            out = y if out is None else out + y
        if att.ffn is not None:
            out = out + att.ffn(t, x)
        return out

    def __call__(self, x0):
        """Output of the L layers: x^(L) (post-LN, unit tokens) or the residual stream z^(L) (pre-LN)."""
        return self.trajectory(x0, keep=False)[-1]

    def trajectory(self, x0, keep: bool = True):
        """[x^(0), ..., x^(L)] stacked to (L+1, batch, n, d) (only the last when ``keep`` is False).

        ``x0``: (n, d) or (batch, n, d), numpy or torch; post-LN needs unit rows,
        pre-LN takes any non-zero residual stream z^(0).
        """
        import torch

        x = self._tensor(x0)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise ParameterError("x0", f"expected shape (n, d) or (batch, n, d), got {tuple(x.shape)}")
        if self.norm == "post":
            single = "float32" in (str(getattr(x0, "dtype", "")), self.dtype)
            check_unit(x.detach().cpu().double().numpy(), name="x0", tol=1e-6 if single else 1e-8)
        out = [x]
        h = self.h
        for layer in range(self.layers):
            t = layer * h
            if self.norm == "post":
                y = x + h * self.attend(t, x)
                x = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
            else:
                theta = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
                x = x + h * self.attend(t, theta)
            if keep:
                out.append(x)
            else:
                out[0] = x
        return torch.stack(out) if keep else out


@dataclass(frozen=True)
class DirectionRadius:
    """State (..., d+1) = (theta on S^{d-1}, r > 0); the retraction renormalises theta."""

    name: str = "direction-radius"

    def tangent(self, y, v):
        xp = namespace(y)
        d = y.shape[-1] - 1
        return xp.concat([sphere_tangent(y[..., :d], v[..., :d]), v[..., d:]], axis=-1)

    def retract(self, y):
        xp = namespace(y)
        d = y.shape[-1] - 1
        th = y[..., :d]
        return xp.concat([th / xp.norm(th, axis=-1, keepdims=True), y[..., d:]], axis=-1)

    def expmap(self, y, v):
        return self.retract(y + v)

    def defect(self, y) -> float:
        xp = namespace(y)
        d = y.shape[-1] - 1
        return float(xp.max(xp.abs(xp.norm(y[..., :d], axis=-1) - 1.0)))


@dataclass(frozen=True, eq=False)
class PreLNFlow:
    """The depth limit of the pre-LN transformer, in (direction, radius) form.

        theta_i' = (1/r_i) P_{theta_i} A_i(theta),     r_i' = <theta_i, A_i(theta)>

    State y of shape (batch, n, d+1): y[..., :d] = theta (unit), y[..., d] = r (> 0).
    Build it from a residual stream z with :meth:`initial_state`; read it with :meth:`split`.

    Parameters
    ----------
    attention : the :class:`SelfAttention` field giving A (its unprojected attention
        term plus feed-forward term).
    """

    attention: SelfAttention

    is_sde = False

    @property
    def space(self) -> DirectionRadius:
        return DirectionRadius()

    @property
    def name(self) -> str:
        return f"pre-ln-{self.attention.name}"

    def params(self) -> dict:
        return {**self.attention.params(), "model": self.name}

    @staticmethod
    def initial_state(z0) -> np.ndarray:
        """(theta, r) = (z/|z|, |z|) from a residual stream (n, d) or (batch, n, d)."""
        z = np.asarray(z0, dtype=np.float64)
        z = z[None] if z.ndim == 2 else z
        r = np.linalg.norm(z, axis=-1, keepdims=True)
        if np.any(r == 0):
            raise ParameterError("z0", "a token of the residual stream is zero: its direction is undefined")
        return np.concatenate([z / r, r], axis=-1)

    @staticmethod
    def split(y):
        """(theta, r) of a state (..., d+1): shapes (..., d) and (...,)."""
        return y[..., :-1], y[..., -1]

    def check_state(self, y0, normalize: bool = False) -> np.ndarray:
        y = np.asarray(y0, dtype=np.float64)
        y = y[None] if y.ndim == 2 else y
        if y.ndim != 3 or y.shape[-1] < 3:
            raise ParameterError("y0", f"expected (batch, n, d+1) with d >= 2, got {y.shape}")
        theta = check_unit(y[..., :-1], name="y0 (directions)", normalize=normalize)
        if np.any(y[..., -1] <= 0) or not np.all(np.isfinite(y[..., -1])):
            raise ParameterError("y0", "radii y[..., d] must be finite and > 0")
        return np.concatenate([theta, y[..., -1:]], axis=-1)

    def drift(self, t: float, y):
        xp = namespace(y)
        theta, r = y[..., :-1], y[..., -1:]
        a = self.attention.attention(t, theta)
        if self.attention.ffn is not None:
            a = a + self.attention.ffn(t, theta)
        return xp.concat([sphere_tangent(theta, a) / r, xp.sum(theta * a, axis=-1, keepdims=True)], axis=-1)
