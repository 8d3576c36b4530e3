"""The exact chain with its per-block work batched (issue 11 point 5) draws the same numbers.

The reference below is the chain's block as it was before the batching (one op per term,
H slices and a concatenation per head stack, the concatenated F, shaped_relu): run on the
same generator it must give the same factors to round-off, so the batching changed the
launches and nothing else. The graph-safe block (what a CUDA graph captures: no host
synchronisation, :func:`chol_psd` for every factor) gives the same numbers too, and on
the CPU the chain never asks for a graph.
"""

import math

import numpy as np
import pytest
import torch

from particles.covariance import FiniteWidthChain
from particles.covariance.chain import _gram_factor, chol_psd
from particles.networks import ShapedMLP, ShapedTransformer, StandardTransformer
from particles.shared import shaped_relu

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V3 = np.array([[1.0, 0.3, -0.1], [0.3, 0.8, 0.2], [-0.1, 0.2, 1.2]])
NETWORKS = {
    "block": ShapedTransformer(16, gamma=0.8, tau0=0.7, c_plus=0.3, c_minus=-0.9),
    "block-2-heads": ShapedTransformer(24, gamma=0.9, n_k=5, heads=2, layers="block"),
    "attention-wide-keys": ShapedTransformer(20, gamma=0.6, n_k=7, layers="attention"),
    "lnr-mlp": ShapedMLP(16, c_plus=0.3, c_minus=-0.9),
    "standard-mlp": StandardTransformer(16, gamma=0.7, mlp=True),
    "linear-2-heads": ShapedTransformer(24, gamma=0.7, heads=2, layers="linear"),
    "block-m8": ShapedTransformer(40, gamma=0.35, tau0=1.0),
}


# ------------------------------------------------------------- the block before batching
def _wishart(batch, k, dof, gen, dtype):
    if dof < k:
        return torch.randn(batch, k, dof, generator=gen, dtype=dtype)
    T = torch.randn(batch, k, k, generator=gen, dtype=dtype).tril(-1)
    alpha = (dof - torch.arange(k, dtype=dtype)) / 2.0
    chi2 = 2.0 * torch._standard_gamma(alpha.expand(batch, k).contiguous(), generator=gen)
    return T + torch.diag_embed(chi2.sqrt())


def _row(F):
    return _gram_factor(F @ F.transpose(-1, -2))


def _blockdiag(blocks):
    B, H, m, k = blocks.shape
    out = blocks.new_zeros(B, H, m, H, k)
    idx = torch.arange(H)
    out[:, idx, :, idx, :] = blocks.transpose(0, 1)
    return out.reshape(B, H * m, H * k)


def _reference_block(net, R, m, gen):
    n, H = net.n, getattr(net, "heads", 1)

    def v_factor(R):
        return R if H == 1 else _row(torch.cat([R[:, h * m:(h + 1) * m, :] for h in range(H)], dim=-1))

    def residual(R, M, lam, gamma):
        B, k, _ = R.shape
        G = torch.randn(B, k, k, generator=gen, dtype=R.dtype)
        parts = [lam * R + (gamma / math.sqrt(n)) * (M @ G)]
        if n // H - k > 0:
            parts.append((gamma / math.sqrt(n)) * (M @ _wishart(B, k, n // H - k, gen, R.dtype)))
        return _row(torch.cat(parts, dim=-1))

    def mlp_factor(R, s_plus, s_minus):
        Bm = torch.randn(R.shape[0], m, n, generator=gen, dtype=R.dtype)
        return _row(shaped_relu(v_factor(R) @ Bm, s_plus, s_minus) / math.sqrt(n))

    for kind, kw in net.sublayers():
        if kind == "attention":
            B, L = R.shape[0], v_factor(R)
            hh, nk = kw["heads"], kw["n_k"]
            if nk >= m:
                Gp = torch.randn(B, hh, m, m, generator=gen, dtype=R.dtype)
                prod = Gp @ _wishart(B * hh, m, nk, gen, R.dtype).reshape(B, hh, m, m).transpose(-1, -2)
            else:
                GQ = torch.randn(B, hh, m, nk, generator=gen, dtype=R.dtype)
                prod = GQ @ torch.randn(B, hh, m, nk, generator=gen, dtype=R.dtype).transpose(-1, -2)
            Lh = L[:, None]
            A = torch.softmax(Lh @ prod @ Lh.transpose(-1, -2) / kw["temperature"], dim=-1)
            if kw["shaped"]:
                A = A + torch.eye(m, dtype=R.dtype) - 1.0 / m
            R = residual(R, _blockdiag(A @ Lh), kw["lam"], kw["gamma"])
        elif kind == "lnr-mlp":
            R = math.sqrt(kw["c"]) * mlp_factor(R, kw["s_plus"], kw["s_minus"])
        else:
            M = math.sqrt(kw["c"]) * mlp_factor(R, kw["s_plus"], kw["s_minus"]) if kind == "mlp" else v_factor(R)
            M = _blockdiag(M[:, None].expand(-1, H, -1, -1)) if H > 1 else M
            R = residual(R, M, kw["lam"], kw["gamma"])
    return R


# ------------------------------------------------------------------------------ tests
def _start(net, seed):
    m = 8 if net.n == 40 else 3
    V = V3 if m == 3 else 0.8 * np.eye(8) + 0.2
    chain = FiniteWidthChain(net)
    gen = torch.Generator().manual_seed(seed)
    R, m = chain.initial_factor(V, batch=40, gen=gen, dtype=torch.float64, device="cpu")
    return chain, R, m, gen


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_batched_block_draws_the_numbers_of_the_unbatched_block(name):
    net = NETWORKS[name]
    chain, R, m, gen = _start(net, 4)
    ref_gen = torch.Generator().manual_seed(0)
    ref_gen.set_state(gen.get_state())
    ref = R.clone()
    for _ in range(4):
        R = chain.step(R, m, gen)
        ref = _reference_block(net, ref, m, ref_gen)
        V, Vref = R @ R.transpose(-1, -2), ref @ ref.transpose(-1, -2)
        assert torch.max(torch.abs(V - Vref)) <= 1e-12 * torch.max(torch.abs(Vref))
    assert torch.equal(gen.get_state(), ref_gen.get_state())  # the same draws, no more, no fewer


@pytest.mark.parametrize("name", ["block", "block-2-heads", "block-m8"])
def test_graph_safe_block_gives_the_same_numbers(name):
    net = NETWORKS[name]
    chain, R, m, gen = _start(net, 5)
    gen2 = torch.Generator().manual_seed(0)
    gen2.set_state(gen.get_state())
    Rg = R.clone()
    for _ in range(3):
        R = chain.step(R, m, gen)
        Rg = chain.step(Rg, m, gen2, graph_safe=True)
    V, Vg = R @ R.transpose(-1, -2), Rg @ Rg.transpose(-1, -2)
    assert torch.max(torch.abs(V - Vg)) <= 1e-12 * torch.max(torch.abs(V))


def test_graph_safe_factor_handles_singular_grams():
    x = torch.randn(6, 5, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    G = x @ x.transpose(-1, -2)  # rank one: LAPACK fails, chol_psd gives the rank-one factor
    L = _gram_factor(G, graph_safe=True)
    assert torch.allclose(L @ L.transpose(-1, -2), G, atol=1e-13) and torch.equal(L, chol_psd(G))


def test_cpu_runs_never_capture_a_graph():
    net = NETWORKS["block"]
    assert FiniteWidthChain(net).run(V3, 3, seed=1, batch=4).meta["cuda_graph"] is False
    assert net.run(V3, 2, seed=1, batch=2).meta["cuda_graph"] is False


@pytest.mark.gpu
def test_cuda_graph_chain_keeps_the_law():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    net = ShapedTransformer(64, gamma=0.5, tau0=1.0)
    V0 = 0.8 * np.eye(4) + 0.2
    cpu = FiniteWidthChain(net).run(V0, 6, seed=1, batch=20000).final
    run = FiniteWidthChain(net).run(V0, 6, seed=2, batch=20000, device="cuda")
    gpu = run.final
    assert np.all(np.isfinite(gpu)) and np.all(np.linalg.eigvalsh(gpu)[:, 0] > -1e-10)
    z = (cpu.mean(0) - gpu.mean(0)) / np.sqrt(cpu.var(0) / 20000 + gpu.var(0) / 20000)
    assert np.max(np.abs(z)) < 5, (z, run.meta["cuda_graph"])
