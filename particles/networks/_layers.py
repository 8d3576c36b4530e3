"""Sub-layers of the plain networks, on token matrices X of shape (batch, m, n).

Every weight matrix is drawn fresh (iid N(0, 1), one per network in the batch) when
the layer runs and dropped afterwards: a deep network is never stored.
"""

from __future__ import annotations

import math

from particles.shared import layer_norm, shaped_relu

__all__ = ["attention", "linear", "lnr_mlp", "mlp"]


def _randn(shape, gen, like):
    import torch

    return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)


def attention(X, gen, *, lam, gamma, heads, n_k, temperature, shaped, pre_ln):
    """X' = lambda X + gamma concat_h(A_h X_in W_V^h) / sqrt(n).

    Y_h = X_in W_Q^h W_K^{hT} X_in^T / n with W_Q^h, W_K^h of shape (n, n_k);
    A_h = I + softmax(Y_h / tau) - 11^T/m (shaped) or softmax(Y_h / tau) (standard);
    W_V^h is the h-th block of n/heads columns of one (n, n) matrix.
    X_in = LN(X) with pre-LN, X otherwise.
    """
    import torch


    B, m, n = X.shape
    Xin = layer_norm(X) if pre_ln else X
    q = (Xin @ _randn((B, n, heads * n_k), gen, X)).reshape(B, m, heads, n_k).transpose(1, 2)
    k = (Xin @ _randn((B, n, heads * n_k), gen, X)).reshape(B, m, heads, n_k).transpose(1, 2)
    Y = q @ k.transpose(-1, -2) / n
    A = torch.softmax(Y / temperature, dim=-1)
    if shaped:
        A = A + torch.eye(m, dtype=X.dtype, device=X.device) - 1.0 / m
    del q, k, Y
    v = (Xin @ _randn((B, n, n), gen, X)).reshape(B, m, heads, n // heads).transpose(1, 2)
    out = (A @ v).transpose(1, 2).reshape(B, m, n)
    return lam * X + (gamma / math.sqrt(n)) * out


def mlp(X, gen, *, lam, gamma, s_plus, s_minus, c, pre_ln):
    """X' = lambda X + gamma sigma_s(X_in W_pre / sqrt(n)) sqrt(c/n) W_post, hidden width n."""

    B, _, n = X.shape
    Xin = layer_norm(X) if pre_ln else X
    H = shaped_relu((Xin @ _randn((B, n, n), gen, X)) / math.sqrt(n), s_plus, s_minus)
    out = H @ _randn((B, n, n), gen, X)
    return lam * X + (gamma * math.sqrt(c / n)) * out


def lnr_mlp(X, gen, *, s_plus, s_minus, c):
    """LNR layer on post-activations X_l = sqrt(c) sigma_s(z^l): X' = sqrt(c) sigma_s(X W / sqrt(n)).

    Then z^{l+1} = X_l W / sqrt(n) = sqrt(c/n) sigma_s(z^l) W and X X^T / n = (c/n) sigma_s(z) sigma_s(z)^T.
    """
    B, _, n = X.shape
    return math.sqrt(c) * shaped_relu((X @ _randn((B, n, n), gen, X)) / math.sqrt(n), s_plus, s_minus)


def linear(X, gen, *, lam, gamma):
    """X' = lambda X + gamma X W / sqrt(n)."""
    B, _, n = X.shape
    return lam * X + (gamma / math.sqrt(n)) * (X @ _randn((B, n, n), gen, X))
