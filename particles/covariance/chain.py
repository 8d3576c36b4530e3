"""The exact finite-width Markov chain of V for the networks of :mod:`particles.networks`.

Reduction (rotation invariance). Write the tokens as X = sqrt(n) L O with L L^T = V and O
(m x n) orthonormal rows. Every weight matrix is iid N(0, 1), so O W is again iid for any
fixed O, and the law of the next V depends on V alone. One residual sub-layer

    X' = lambda X + gamma M O W / sqrt(n)          (M = A L for attention, L for a linear layer)

splits, in a frame whose first m directions span the rows of O, into
X' / sqrt(n) = [lambda L + gamma M G / sqrt(n) | gamma M H / sqrt(n)] with G (m x m) and
H (m x (n - m)) iid, so

    V' = F F^T,   F = [lambda L + gamma M G / sqrt(n),  gamma M T / sqrt(n)],

with T T^T ~ Wishart_m(n - m, I) (Bartlett factor). The chain carries a Cholesky factor of
V (:func:`chol_psd` of F F^T): no n x n matrix, no eigendecomposition, V exactly PSD.

* Attention logits: Y = X W_Q W_K^T X^T / n = L G_Q G_K^T L^T with G_Q, G_K (m x n_k) iid;
  given G_K the rows of G_Q G_K^T are iid N(0, G_K G_K^T), so G_Q G_K^T = G' T_K^T with
  T_K T_K^T ~ Wishart_m(n_k): O(m^3) per layer whatever n_k.
* MLP: the hidden pre-activations are Hpre = L_Z B (B m x n iid); the rows of
  sigma_s(Hpre) W_post have covariance (c/n) sigma sigma^T, so M = sqrt(c) L_s with
  L_s L_s^T = sigma sigma^T / n: O(m^2 n) per layer (n draws per token are unavoidable).
* LNR MLP (no residual): V' = c sigma sigma^T / n.
* H heads (value width n/H): the head blocks X_h (m x n/H) are tracked jointly through the
  (Hm x Hm) Gram matrix of the stacked blocks; the update has the same form with
  M = blockdiag(A_h L), G (Hm x Hm) and T T^T ~ Wishart_{Hm}(n/H - Hm). V = sum_h G_hh.
  Needs n/H >= Hm.

Cost per attention layer O((Hm)^3), per MLP layer O(m^2 n); the plain network costs
O(m n^2 + n^2) per layer for drawing and applying the weights.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759 (the networks);
Bartlett decomposition of the Wishart law (e.g. Muirhead, "Aspects of Multivariate
Statistical Theory", Theorem 3.2.14).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from integrators.validation import ParameterError, check_positive_int
from integrators.cuda_graph import RepeatedBlock
from particles.shared import NetworkRun, make_generator, torch_dtype

from ._algebra import psd_factor
from .models import prepare_v0

__all__ = ["FiniteWidthChain", "chol_psd", "wishart_factor"]


def wishart_factor(batch: int, k: int, dof: int, gen, dtype, device):
    """T with T T^T ~ Wishart_k(dof, I): (batch, k, k) Bartlett factor, or (batch, k, dof) if dof < k."""
    import torch

    if dof < k:
        return torch.randn(batch, k, dof, generator=gen, dtype=dtype, device=device)
    T = torch.randn(batch, k, k, generator=gen, dtype=dtype, device=device).tril_(-1)
    chi2 = torch._standard_gamma(_gamma_shapes(batch, k, dof, dtype, device), generator=gen)
    T.diagonal(dim1=-2, dim2=-1).copy_(chi2.mul_(2.0).sqrt_())
    return T


_CONSTS: dict = {}


def _gamma_shapes(batch: int, k: int, dof: int, dtype, device):
    """(batch, k) shapes (dof - i) / 2 of the Bartlett chi^2_{dof - i} = 2 Gamma((dof - i) / 2), made once."""
    import torch

    key = ("gamma", batch, k, dof, dtype, str(device))
    if key not in _CONSTS:
        alpha = (dof - torch.arange(k, dtype=dtype, device=device)) / 2.0
        _CONSTS[key] = alpha.expand(batch, k).contiguous()
    return _CONSTS[key]


def _centering(m: int, dtype, device):
    """I - 1 1^T / m (the shaped attention's centring), made once."""
    import torch

    key = ("centre", m, dtype, str(device))
    if key not in _CONSTS:
        _CONSTS[key] = torch.eye(m, dtype=dtype, device=device) - 1.0 / m
    return _CONSTS[key]


def chol_psd(G):
    """Lower-triangular L with L L^T = G for symmetric PSD G (..., r, r), vectorised over the batch.

    A Cholesky whose pivots at round-off level (below 8 r eps max_j G^{jj}) give zero
    columns, so singular G (identical tokens: G = v 1 1^T) get an exactly rank-deficient
    factor instead of an error. Written as r vectorised column steps because LAPACK's
    batched small-matrix factorisations loop over the batch (about 10x slower here).
    """
    import torch

    r = G.shape[-1]
    L = torch.zeros_like(G)
    floor = 8 * r * torch.finfo(G.dtype).eps * G.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)
    for j in range(r):
        Lj = L[..., j, :j]
        piv = G[..., j, j] - (Lj * Lj).sum(dim=-1)
        ok = piv > floor
        d = torch.where(ok, piv, torch.ones_like(piv)).sqrt()
        L[..., j, j] = torch.where(ok, d, torch.zeros_like(d))
        if j + 1 < r:
            col = (G[..., j + 1:, j] - (L[..., j + 1:, :j] * Lj[..., None, :]).sum(dim=-1)) / d[..., None]
            L[..., j + 1:, j] = torch.where(ok[..., None], col, torch.zeros_like(col))
    return L


def _gram_factor(G, graph_safe: bool = False):
    """Cholesky factor of PSD G (B, r, r): LAPACK for r > 3 (a few calls per matrix beat r
    vectorised column steps), :func:`chol_psd` for small r and wherever LAPACK fails or meets
    a round-off pivot (singular G). ``graph_safe``: :func:`chol_psd` alone, which never asks
    the host whether a fallback is needed (what a CUDA graph can capture)."""
    import torch

    r = G.shape[-1]
    if r <= 3 or graph_safe:
        return chol_psd(G)
    L, info = torch.linalg.cholesky_ex(G)
    piv = L.diagonal(dim1=-2, dim2=-1) ** 2
    floor = 8 * r * torch.finfo(G.dtype).eps * G.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1)
    bad = (info != 0) | ~(piv.amin(dim=-1) > floor)
    if bool(bad.any()):
        L[bad] = chol_psd(G[bad])
    return L


def _row_factor(F, graph_safe: bool = False):
    """Lower-triangular R with R R^T = F F^T for F of shape (..., r, c)."""
    return _gram_factor(F @ F.transpose(-1, -2), graph_safe)


def _blockdiag(blocks):
    """(B, H, m, k) -> (B, Hm, Hk) block-diagonal (one head: the block itself, no copy)."""
    import torch

    B, H, m, k = blocks.shape
    if H == 1:
        return blocks[:, 0]
    out = blocks.new_zeros(B, H, m, H, k)
    idx = torch.arange(H, device=blocks.device)
    out[:, idx, :, idx, :] = blocks.transpose(0, 1)
    return out.reshape(B, H * m, H * k)


@dataclass(frozen=True)
class FiniteWidthChain:
    """Exact Markov chain of V for a network of :mod:`particles.networks` (same law as ``network.run``).

    Supports :class:`~particles.networks.ShapedTransformer` (all layer kinds, any number of
    heads with n/heads >= heads * m), :class:`~particles.networks.StandardTransformer`
    without pre-LN (layer norm subtracts the feature mean, which is not rotation invariant)
    and :class:`~particles.networks.ShapedMLP`.
    """

    network: object

    def __post_init__(self):
        subs = self.network.sublayers()
        for kind, kw in subs:
            if kw.get("pre_ln"):
                raise ParameterError("network", "pre-LN is not rotation invariant: no exact chain; run the network")
        if any(k == "lnr-mlp" for k, _ in subs) and getattr(self.network, "heads", 1) != 1:
            raise ParameterError("heads", "the LNR MLP has no heads")

    @property
    def n(self) -> int:
        return self.network.n

    @property
    def heads(self) -> int:
        return getattr(self.network, "heads", 1)

    # ----------------------------------------------------------------- state
    def _v_factor(self, R, m, graph_safe=False):
        """An (m x m) factor of V = sum_h R_h R_h^T."""
        H = self.heads
        if H == 1:
            return R
        # the head blocks side by side, (B, m, H Hm), by one reshape instead of H slices and a cat
        B, k, _ = R.shape
        flat = R.reshape(B, H, m, k).transpose(1, 2).reshape(B, m, H * k)
        return _row_factor(flat, graph_safe)

    def _gram(self, R, m):
        H = self.heads
        G = R @ R.transpose(-1, -2)
        if H == 1:
            return G
        return sum(G[:, h * m:(h + 1) * m, h * m:(h + 1) * m] for h in range(H))

    def initial_factor(self, V0=None, X0=None, *, batch=None, gen, dtype, device):
        """Factor R0 (batch, Hm, Hm) of the stacked head-block Gram matrix of the input tokens."""
        import torch

        H, n = self.heads, self.n
        if X0 is not None:
            X = torch.as_tensor(np.asarray(X0) if not isinstance(X0, torch.Tensor) else X0, dtype=dtype, device=device)
            X = X[None] if X.ndim == 2 else X
            if X.ndim != 3 or X.shape[-1] != n or X.shape[1] < 2:
                raise ParameterError("X0", f"expected (batch, m >= 2, n={n}) tokens, got {tuple(X.shape)}")
            B, m, _ = X.shape
            stacked = torch.cat([X[:, :, h * (n // H):(h + 1) * (n // H)] for h in range(H)], dim=1) / math.sqrt(n)
            return _row_factor(stacked), m
        V = torch.as_tensor(prepare_v0(V0, batch), dtype=dtype, device=device)
        B, m = V.shape[0], V.shape[-1]
        L = psd_factor(V)
        if H == 1:
            return L, m
        # The plain network's input frame O is Haar: O = S^{-1/2} Z with Z (m x n) Gaussian and
        # S = Z Z^T. The stacked head blocks of Z have Gram W ~ Wishart_{Hm}(n/H), S = sum_h W_hh,
        # so the blocks of X/sqrt(n) = L O have Gram K W K^T with K = blockdiag(L S^{-1/2}): O((Hm)^3).
        T = wishart_factor(B, H * m, n // H, gen, dtype, device)
        W = T @ T.transpose(-1, -2)
        S = sum(W[:, h * m:(h + 1) * m, h * m:(h + 1) * m] for h in range(H))
        w, U = torch.linalg.eigh(S)
        K = L @ (U * w.rsqrt()[..., None, :]) @ U.transpose(-1, -2)
        return _row_factor(_blockdiag(K[:, None].expand(-1, H, -1, -1)) @ T), m

    # ---------------------------------------------------------------- layers
    def _residual(self, R, M, lam, gamma, gen, graph_safe=False):
        """F = [lam R + gamma M G / sqrt n, gamma M T / sqrt n] -> factor of F F^T."""
        import torch

        B, k, _ = R.shape
        n = self.n
        G = torch.randn(B, k, k, generator=gen, dtype=R.dtype, device=R.device)
        dof = n // self.heads - k
        g = gamma / math.sqrt(n)
        first = torch.baddbmm(R, M, G, beta=lam, alpha=g)
        # F F^T = P1 P1^T + P2 P2^T: no concatenated copy of F
        FF = torch.bmm(first, first.transpose(-1, -2))
        if dof > 0:
            MT = torch.bmm(M, wishart_factor(B, k, dof, gen, R.dtype, R.device))
            FF.baddbmm_(MT, MT.transpose(-1, -2), alpha=g * g)
        return _gram_factor(FF, graph_safe)

    def _attention(self, R, m, gen, *, lam, gamma, heads, n_k, temperature, shaped, pre_ln, graph_safe=False):
        import torch

        B = R.shape[0]
        L = self._v_factor(R, m, graph_safe)
        if n_k >= m:
            Gp = torch.randn(B, heads, m, m, generator=gen, dtype=R.dtype, device=R.device)
            TK = wishart_factor(B * heads, m, n_k, gen, R.dtype, R.device).reshape(B, heads, m, m)
            prod = Gp @ TK.transpose(-1, -2)
        else:
            GQ = torch.randn(B, heads, m, n_k, generator=gen, dtype=R.dtype, device=R.device)
            GK = torch.randn(B, heads, m, n_k, generator=gen, dtype=R.dtype, device=R.device)
            prod = GQ @ GK.transpose(-1, -2)
        Lh = L[:, None]
        Y = Lh @ prod @ Lh.transpose(-1, -2)
        A = torch.softmax(Y.div_(temperature), dim=-1)
        if shaped:
            A.add_(_centering(m, R.dtype, R.device))
        M = _blockdiag(A @ Lh)
        return self._residual(R, M, lam, gamma, gen, graph_safe)

    def _mlp_factor(self, R, m, gen, s_plus, s_minus, graph_safe=False):
        """L_s with L_s L_s^T = sigma sigma^T / n, sigma = sigma_s(L_Z B), B (m x n) iid."""
        import torch

        n = self.n
        L = self._v_factor(R, m, graph_safe)
        Bm = torch.randn(R.shape[0], m, n, generator=gen, dtype=R.dtype, device=R.device)
        H = torch.bmm(L, Bm)
        # sigma_s(x) / sqrt(n) = s x, s = s_+ / sqrt(n) or s_- / sqrt(n) by the sign of x
        # (four passes; shaped_relu and the division take six)
        S = torch.where(H > 0, H * (s_plus / math.sqrt(n)), H * (s_minus / math.sqrt(n)))
        return _row_factor(S, graph_safe)

    def _mlp(self, R, m, gen, *, lam, gamma, s_plus, s_minus, c, pre_ln, graph_safe=False):
        Ls = self._mlp_factor(R, m, gen, s_plus, s_minus, graph_safe).mul_(math.sqrt(c))
        M = _blockdiag(Ls[:, None].expand(-1, self.heads, -1, -1)) if self.heads > 1 else Ls
        return self._residual(R, M, lam, gamma, gen, graph_safe)

    def _lnr(self, R, m, gen, *, s_plus, s_minus, c, graph_safe=False):
        return self._mlp_factor(R, m, gen, s_plus, s_minus, graph_safe).mul_(math.sqrt(c))

    def _linear(self, R, m, gen, *, lam, gamma, graph_safe=False):
        L = self._v_factor(R, m, graph_safe)
        M = _blockdiag(L[:, None].expand(-1, self.heads, -1, -1)) if self.heads > 1 else L
        return self._residual(R, M, lam, gamma, gen, graph_safe)

    def step(self, R, m, gen, graph_safe: bool = False):
        """One block on the factor R (batch, Hm, Hm); ``graph_safe``: no host synchronisation."""
        fns = {"attention": self._attention, "mlp": self._mlp, "lnr-mlp": self._lnr, "linear": self._linear}
        for kind, kw in self.network.sublayers():
            R = fns[kind](R, m, gen, **kw, graph_safe=graph_safe)
        return R

    # ------------------------------------------------------------------- run
    def run(
        self,
        V0=None,
        depth: int = 1,
        *,
        seed: int,
        batch: int | None = None,
        X0=None,
        device: str = "cpu",
        dtype: str = "float64",
        record_every: int = 1,
    ) -> NetworkRun:
        """Same signature and output as ``network.run`` (the laws agree; the draws do not)."""
        import torch

        check_positive_int("depth", depth)
        check_positive_int("record_every", record_every)
        if (V0 is None) == (X0 is None):
            raise ParameterError("V0", "give exactly one of V0 and X0")
        td = torch_dtype(dtype)
        gen = make_generator(seed, device)
        R, m = self.initial_factor(V0, X0, batch=batch, gen=gen, dtype=td, device=device)
        if self.heads * m > self.n // self.heads:
            raise ParameterError("n", f"the chain needs n/heads >= heads*m: n={self.n}, heads={self.heads}, m={m}")
        rec_layers, rec_V = [0], [self._gram(R, m).cpu().numpy()]
        wall = time.perf_counter()
        # on CUDA the block is captured once in a CUDA graph and replayed (integrators.cuda_graph)
        cuda = torch.device(device).type == "cuda"
        block = RepeatedBlock(lambda S: self.step(S, m, gen, graph_safe=cuda), gen, use_graph=cuda and depth > 1)
        with torch.no_grad():
            for layer in range(1, depth + 1):
                R = block(R)
                if layer % record_every == 0 or layer == depth:
                    rec_layers.append(layer)
                    rec_V.append(self._gram(R, m).cpu().numpy())
        meta = {**self.network.params(), "simulator": "chain", "seed": seed, "dtype": dtype, "device": str(device),
                "wall_time_s": time.perf_counter() - wall, "cuda_graph": block.graphed}  # fmt: skip
        return NetworkRun(np.asarray(rec_layers), np.stack(rec_V), self.n, meta)
