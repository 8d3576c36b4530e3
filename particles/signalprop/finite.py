"""Finite random transformers of the reference model, in torch, with forward-mode tangents.

Each block draws fresh Gaussian weights (W_q, W_k, W_v, W_1, b_1, W_2) on the fly;
nothing is stored across blocks. Every batch entry is an independent network.
Tangents (Jacobian-vector products) are propagated alongside the state with the
same weights, so E||J||_F^2 is estimated by Hutchinson probes and each gradient mode
can be followed separately.

Two ways to draw a weight matrix W (d_in x d_out, iid N(0, std^2)) applied to rows R:

* ``"explicit"``: draw W and multiply (O(m d_in d_out) work, d_in d_out random numbers);
* ``"projected"`` (default): with R^T = Q_r R_r (thin QR, Q_r with orthonormal columns),
  R W = R_r^T (Q_r^T W) and Q_r^T W has iid N(0, std^2) entries, so R W is drawn
  exactly in law as R_r^T Z with Z (m x d_out) iid. Each weight acts once per block
  (on the stacked state and tangent rows), so the joint law of everything the
  block computes is that of the explicit network, at O(m^2 (d_in + d_out)) cost.
  This makes d = 4096 networks cheap; the two samplers agree in law (tested).

References
----------
MODELS.md section 3 (reference model); Cowsik et al., arXiv:2403.02579, section 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from integrators.validation import ParameterError, check_choice, check_positive_int
from .config import SignalPropParams

__all__ = ["PHI_TORCH", "SAMPLINGS", "FiniteRun", "RandomTransformer"]

SAMPLINGS = ("projected", "explicit")

PHI_TORCH = {
    "erf": (torch.erf, lambda h: (2.0 / math.sqrt(math.pi)) * torch.exp(-h * h)),
    "tanh": (torch.tanh, lambda h: 1.0 - torch.tanh(h) ** 2),
    "relu": (torch.relu, lambda h: (h > 0).to(h.dtype)),
}


class _Draws:
    """Fresh Gaussian weights per call; optionally records them (explicit) or replays them."""

    def __init__(self, gen: torch.Generator | None, sampling: str, replay: list | None = None, record: bool = False):
        self.gen, self.sampling = gen, sampling
        self.replay = None if replay is None else list(replay)
        self.recorded: list[torch.Tensor] = []
        self.record = record

    def _randn(self, shape, like: torch.Tensor) -> torch.Tensor:
        if self.replay is not None:
            return self.replay.pop(0)
        z = torch.randn(shape, generator=self.gen, dtype=like.dtype, device=like.device)
        if self.record:
            self.recorded.append(z)
        return z

    def linear(self, rows: torch.Tensor, d_out: int, std: float) -> torch.Tensor:
        """rows (B, m, d_in) times a fresh (d_in, d_out) Gaussian matrix with entries N(0, std^2)."""
        b, m, d_in = rows.shape
        if self.sampling == "explicit" or m >= d_in or self.replay is not None:
            return rows @ (std * self._randn((b, d_in, d_out), rows))
        _, rr = torch.linalg.qr(rows.transpose(-1, -2))
        return rr.transpose(-1, -2) @ (std * self._randn((b, m, d_out), rows))

    def bias(self, b: int, d_out: int, std: float, like: torch.Tensor) -> torch.Tensor:
        return std * self._randn((b, 1, d_out), like)


@dataclass(frozen=True)
class FiniteRun:
    """Measurements of a batch of finite networks (numpy arrays).

    q, p, qmp : (depth + 1, batch) at block inputs; q - p computed from centred
        tokens (sum_i |x_i - xbar|^2 / ((n - 1) d)), accurate near collapse.
    q_att, p_att, qmp_att : (depth, batch) after each attention sublayer.
    tangent_sq : (depth + 1, batch, K) |dX|^2 / (n d) of each tangent at block inputs.
    tangent_sq_att : (depth, batch, K) after each attention sublayer.
    gram : (depth + 1, batch, n, n) X X^T / d if recorded, else None.
    x : (batch, n, d) final state (torch tensor); dx : (batch, K, n, d) or None.
    """

    q: np.ndarray
    p: np.ndarray
    qmp: np.ndarray
    q_att: np.ndarray
    p_att: np.ndarray
    qmp_att: np.ndarray
    tangent_sq: np.ndarray
    tangent_sq_att: np.ndarray
    gram: np.ndarray | None
    x: torch.Tensor
    dx: torch.Tensor | None

    @property
    def c(self) -> np.ndarray:
        return self.p / self.q

    @property
    def one_minus_c(self) -> np.ndarray:
        return self.qmp / self.q


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d = x.shape[-2:]
    sq = (x * x).sum(-1)
    q = sq.mean(-1) / d
    xbar = x.mean(-2, keepdim=True)
    qmp = ((x - xbar) ** 2).sum((-1, -2)) / ((n - 1) * d)
    return q, q - qmp, qmp


class RandomTransformer:
    """A stack of random reference-model blocks of width d (see :mod:`.config`).

    Parameters
    ----------
    params : the hyperparameters (n is taken from the input).
    d : width of the residual stream.
    d_mlp : hidden width of the MLP (default d).
    sampling : "projected" (default) or "explicit" weights, see the module docstring.
    dtype, device : torch dtype (default float64) and device.
    """

    def __init__(
        self,
        params: SignalPropParams,
        d: int,
        d_mlp: int | None = None,
        sampling: str = "projected",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ):
        if not isinstance(params, SignalPropParams):
            raise ParameterError("params", f"expected SignalPropParams, got {type(params).__name__}")
        self.params = params
        self.d = check_positive_int("d", d, minimum=2)
        self.d_mlp = self.d if d_mlp is None else check_positive_int("d_mlp", d_mlp)
        self.sampling = check_choice("sampling", sampling, SAMPLINGS)
        self.dtype, self.device = dtype, torch.device(device)

    # -- sublayers ---------------------------------------------------------------
    def _norm(self, x, dx):
        if not self.params.layer_norm:
            return x, dx
        norm = x.norm(dim=-1, keepdim=True)
        xhat = x / norm
        scale = math.sqrt(self.d) / norm
        u = xhat * math.sqrt(self.d)
        if dx is None:
            return u, None
        xh = xhat[:, None]
        du = (dx - xh * (dx * xh).sum(-1, keepdim=True)) * scale[:, None]
        return u, du

    @staticmethod
    def _stack(u, du):
        b, _, d = u.shape
        if du is None:
            return u, 0
        return torch.cat([u[:, None], du], dim=1).reshape(b, -1, d), du.shape[1]

    @staticmethod
    def _split(rows, b, k, n):
        out = rows.reshape(b, k + 1, n, rows.shape[-1])
        return out[:, 0], (out[:, 1:] if k else None)

    def _attention(self, x, dx, draws: _Draws):
        pr, d = self.params, self.d
        b, n, _ = x.shape
        u, du = self._norm(x, dx)
        rows, k = self._stack(u, du)
        std_qk = math.sqrt(pr.sigma_A / d)
        q, dq = self._split(draws.linear(rows, d, std_qk), b, k, n)
        kk, dk = self._split(draws.linear(rows, d, std_qk), b, k, n)
        v, dv = self._split(draws.linear(rows, d, pr.sigma_V / math.sqrt(d)), b, k, n)
        a = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out = a @ v
        dout = None
        if dx is not None:
            ds = (dq @ kk[:, None].transpose(-1, -2) + q[:, None] @ dk.transpose(-1, -2)) / math.sqrt(d)
            da = a[:, None] * (ds - (a[:, None] * ds).sum(-1, keepdim=True))
            dout = da @ v[:, None] + a[:, None] @ dv
        return out, dout

    def _mlp(self, y, dy, draws: _Draws):
        pr = self.params
        b, n, _ = y.shape
        u, du = self._norm(y, dy)
        rows, k = self._stack(u, du)
        h, dh = self._split(draws.linear(rows, self.d_mlp, pr.sigma_w / math.sqrt(self.d)), b, k, n)
        h = h + draws.bias(b, self.d_mlp, pr.sigma_b, h)
        phi, dphi = PHI_TORCH[pr.phi]
        act = phi(h)
        dact = None if dh is None else dphi(h)[:, None] * dh
        rows2, _ = self._stack(act, dact)
        return self._split(draws.linear(rows2, self.d, pr.sigma_2 / math.sqrt(self.d_mlp)), b, k, n)

    def block(self, x, dx, draws: _Draws):
        """One block: returns (y, dy, x', dx') (tangents None when dx is None)."""
        pr = self.params
        y, dy = x, dx
        if pr.alpha_A > 0:
            att, datt = self._attention(x, dx, draws)
            y = pr.beta_A * x + pr.alpha_A * att
            dy = None if dx is None else pr.beta_A * dx + pr.alpha_A * datt
        elif pr.beta_A != 1.0:
            y, dy = pr.beta_A * x, (None if dx is None else pr.beta_A * dx)
        xn, dxn = y, dy
        if pr.alpha_M > 0:
            m, dm = self._mlp(y, dy, draws)
            xn = pr.beta_M * y + pr.alpha_M * m
            dxn = None if dy is None else pr.beta_M * dy + pr.alpha_M * dm
        elif pr.beta_M != 1.0:
            xn, dxn = pr.beta_M * y, (None if dy is None else pr.beta_M * dy)
        return y, dy, xn, dxn

    # -- driver --------------------------------------------------------------------
    def _as_tensor(self, a, name: str, ndim: int) -> torch.Tensor:
        t = torch.as_tensor(a, dtype=self.dtype, device=self.device)
        if t.ndim != ndim or t.shape[-1] != self.d:
            raise ParameterError(name, f"expected shape with {ndim} axes ending in d={self.d}, got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ParameterError(name, "contains NaN or infinite entries")
        return t

    def run(self, x0, depth: int, seed: int, tangents=None, record_gram: bool = False) -> FiniteRun:
        """Push x0 (batch, n, d) and optional tangents (batch, K, n, d) through ``depth`` blocks.

        ``seed`` fixes every weight of every block (drawn in a fixed order).
        """
        x = self._as_tensor(x0, "x0", 3)
        if x.shape[1] != self.params.n:
            raise ParameterError("x0", f"expected n={self.params.n} tokens, got {x.shape[1]}")
        if x.shape[1] < 2:
            raise ParameterError("x0", "need at least n = 2 tokens")
        dx = None if tangents is None else self._as_tensor(tangents, "tangents", 4)
        if dx is not None and (dx.shape[0] != x.shape[0] or dx.shape[2] != x.shape[1]):
            raise ParameterError("tangents", f"expected shape (batch, K, n, d) = ({x.shape[0]}, K, {x.shape[1]}, {self.d})")
        depth = check_positive_int("depth", depth, minimum=0)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed))
        draws = _Draws(gen, self.sampling)
        nd = self.params.n * self.d

        def tsq(t):
            return (t * t).sum((-1, -2)) / nd if t is not None else torch.zeros(x.shape[0], 0, dtype=self.dtype)

        rec = {k: [] for k in ("q", "p", "qmp", "q_att", "p_att", "qmp_att", "t", "t_att", "gram")}

        def log(state, tang, suffix):
            q, p, qmp = _stats(state)
            rec["q" + suffix].append(q)
            rec["p" + suffix].append(p)
            rec["qmp" + suffix].append(qmp)
            rec["t" + suffix].append(tsq(tang))
            if record_gram and not suffix:
                rec["gram"].append(state @ state.transpose(-1, -2) / self.d)

        with torch.no_grad():
            log(x, dx, "")
            for _ in range(depth):
                y, dy, x, dx = self.block(x, dx, draws)
                log(y, dy, "_att")
                log(x, dx, "")

        def arr(key, shape_tail=()):
            if not rec[key]:
                return np.empty((0, x.shape[0]) + shape_tail)
            return torch.stack(rec[key]).cpu().numpy()

        k = 0 if dx is None else dx.shape[1]
        return FiniteRun(
            arr("q"), arr("p"), arr("qmp"), arr("q_att"), arr("p_att"), arr("qmp_att"),
            arr("t", (k,)), arr("t_att", (k,)), arr("gram") if record_gram else None, x, dx,
        )
