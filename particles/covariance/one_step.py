"""One-step moments of a finite network at a fixed V: n E[dV | V] and n Cov[dV | V] (MODELS.md check 1).

Samples come from the exact chain (:class:`FiniteWidthChain`, checked against the plain
network in tests/test_cov_chain.py), so widths up to thousands cost O(m^3) (attention) or
O(m^2 n) (MLP) per sample. The drift estimate uses two exact, unbiased variance reductions:

* the last residual update V' = F F^T is averaged over its Gaussian and Wishart draws in
  closed form: E[V' | M] = lambda^2 V + gamma^2 M M^T (E[G G^T] + E[T T^T] = n I);
* attention logits enter with both signs (antithetic pair Y, -Y), which cancels the
  O(n^{-1/2}) fluctuation of A V A^T; the MLP term subtracts two control variates of
  exactly zero mean (see :func:`_expected_mlp`), leaving the O(n^{-1/2}) fluctuation of
  phi phi^T / n.

Without them the standard error of n E[dV] grows like sqrt(n). The covariance
n Cov[dV] is estimated from plain chain samples; standard errors by batch means.

With heads > 1 the exact one-step law also depends (at order 1/n) on how the tokens split
over the head blocks; the input frame is then Haar-random, as in ``network.run(V0, ...)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from integrators.validation import ParameterError, check_positive_int
from particles.shared import make_generator, shaped_relu, torch_dtype

from ._algebra import psd_factor
from .chain import FiniteWidthChain
from .models import check_covariance

__all__ = ["OneStepMoments", "one_step_moments"]


@dataclass
class OneStepMoments:
    """n E[dV|V] (m, m) and n Cov[dV|V] (m, m, m, m), each with a standard error of the same shape."""

    n: int
    drift: np.ndarray
    drift_se: np.ndarray
    cov: np.ndarray
    cov_se: np.ndarray


def _expected_mlp(chain, V, gen, kw):
    """Unbiased estimate of n E[V' - V | V] for a residual MLP sub-layer, (B, m, m).

    With sigma = H + phi / sqrt(n) (phi = sqrt(n) ((s_+ - 1) H^+ + (s_- - 1) H^-)), two
    control variates of exactly zero mean are subtracted: H H^T / n - V and
    (H phi^T + phi H^T) / n - kappa V, kappa = sqrt(n) (s_+ + s_- - 2)
    (E[h_a phi(h_b)] = kappa V^{ab} / 2 by the symmetry h -> -h).
    """
    import torch

    n = chain.n
    m = V.shape[-1]
    sp, sm, c, g2 = kw["s_plus"], kw["s_minus"], kw["c"], kw["gamma"] ** 2
    L = psd_factor(V)
    H = L @ torch.randn(V.shape[0], m, n, generator=gen, dtype=V.dtype, device=V.device)
    S = shaped_relu(H, sp, sm)
    phi = math.sqrt(n) * (S - H)
    kappa = math.sqrt(n) * (sp + sm - 2.0)
    SS = S @ S.transpose(-1, -2) / n
    cv1 = H @ H.transpose(-1, -2) / n - V
    Hphi = H @ phi.transpose(-1, -2) / n
    cv2 = Hphi + Hphi.transpose(-1, -2) - kappa * V
    return n * g2 * (c * SS - V - c * cv1 - (c / math.sqrt(n)) * cv2)


def _expected_attention(chain, V, gen, kw):
    """Antithetic estimate of n E[V' - V | V] for a residual attention sub-layer, (B, m, m)."""
    import torch

    n, m, H = chain.n, V.shape[-1], kw["heads"]
    B = V.shape[0]
    L = psd_factor(V)
    nk = kw["n_k"]
    if nk >= m:
        from .chain import wishart_factor

        Gp = torch.randn(B, H, m, m, generator=gen, dtype=V.dtype, device=V.device)
        TK = wishart_factor(B * H, m, nk, gen, V.dtype, V.device).reshape(B, H, m, m)
        prod = Gp @ TK.transpose(-1, -2)
    else:
        prod = torch.randn(B, H, m, nk, generator=gen, dtype=V.dtype, device=V.device) @ torch.randn(
            B, H, m, nk, generator=gen, dtype=V.dtype, device=V.device
        ).transpose(-1, -2)
    Lh = L[:, None]
    Y = Lh @ prod @ Lh.transpose(-1, -2)
    out = 0.0
    for sign in (1.0, -1.0):
        A = torch.softmax(sign * Y / kw["temperature"], dim=-1)
        if kw["shaped"]:
            A = A + torch.eye(m, dtype=V.dtype, device=V.device) - 1.0 / m
        AVA = (A @ V[:, None] @ A.transpose(-1, -2)).mean(dim=1)  # heads average: value blocks of width n/H
        out = out + 0.5 * n * kw["gamma"] ** 2 * (AVA - V)
    return out


def _batch_se(x: np.ndarray, groups: int) -> np.ndarray:
    """Standard error of the mean over axis 0 by batch means."""
    k = len(x) // groups
    means = x[: k * groups].reshape(groups, k, *x.shape[1:]).mean(axis=1)
    return means.std(axis=0, ddof=1) / math.sqrt(groups)


def one_step_moments(network, V, *, samples: int, seed: int, chunk: int = 20000, dtype: str = "float64") -> OneStepMoments:
    """Estimate n E[dV|V] and n Cov[dV|V] of one block of ``network`` at the fixed covariance V (m, m).

    Parameters
    ----------
    network : a network of :mod:`particles.networks` with an exact chain, at most one
        attention and one MLP sub-layer per block (shaped transformer, residual MLP,
        residual linear layer, LNR MLP).
    V : (m, m) symmetric PSD.
    samples : Monte-Carlo samples (split in chunks of ``chunk``).
    """
    import torch

    check_positive_int("samples", samples, minimum=40)
    chain = FiniteWidthChain(network)
    if chain.heads != 1 and any(k == "mlp" for k, _ in network.sublayers()):
        raise ParameterError("heads", "one_step_moments supports heads > 1 for attention-only networks")
    td = torch_dtype(dtype)
    V_np = np.asarray(V, dtype=np.float64)
    if V_np.ndim != 2:
        raise ParameterError("V", f"expected one (m, m) matrix, got shape {V_np.shape}")
    V_np = check_covariance(V_np, name="V")[0]
    V0 = torch.as_tensor(V_np, dtype=td)
    m = V0.shape[-1]
    gen = make_generator(seed, "cpu")
    n = network.n
    drifts, incs = [], []
    done = 0
    with torch.no_grad():
        while done < samples:
            b = min(chunk, samples - done)
            Vb = V0.expand(b, m, m).contiguous()
            # covariance: plain chain samples of one block
            R, _ = chain.initial_factor(np.repeat(V_np[None], b, axis=0), gen=gen, dtype=td, device="cpu")
            R = chain.step(R, m, gen)
            incs.append((chain._gram(R, m) - Vb).numpy() * math.sqrt(n))
            # drift: variance-reduced conditional expectations, sub-layer by sub-layer
            est = torch.zeros_like(Vb)
            cur = Vb
            subs = network.sublayers()
            for i, (kind, kw) in enumerate(subs):
                if kind == "attention":
                    est = est + _expected_attention(chain, cur, gen, kw)
                elif kind == "mlp":
                    est = est + _expected_mlp(chain, cur, gen, kw)
                elif kind == "linear":
                    pass  # E[V' | V] = V exactly
                elif kind == "lnr-mlp":
                    kw2 = dict(kw, gamma=1.0)
                    est = est + _expected_mlp(chain, cur, gen, kw2)
                if i + 1 < len(subs):  # the next sub-layer sees a sampled intermediate covariance
                    Rc = psd_factor(cur)
                    Rc = {"attention": chain._attention, "mlp": chain._mlp, "linear": chain._linear}[kind](Rc, m, gen, **kw)
                    cur = Rc @ Rc.transpose(-1, -2)
            drifts.append(est.numpy())
            done += b
    D = np.concatenate(drifts)
    X = np.concatenate(incs)
    groups = min(50, len(D) // 2)
    Xc = X - X.mean(axis=0)
    prods = np.einsum("sab,scd->sabcd", Xc, Xc)
    return OneStepMoments(
        n=n,
        drift=D.mean(axis=0),
        drift_se=_batch_se(D, groups),
        cov=prods.mean(axis=0) * len(X) / (len(X) - 1),
        cov_se=_batch_se(prods, groups),
    )
