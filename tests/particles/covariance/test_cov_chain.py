"""The exact finite-width chain against the plain torch networks, invariants, and the linear closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from particles.covariance import FiniteWidthChain
from particles.covariance.chain import chol_psd
from particles.networks import ShapedMLP, ShapedTransformer, StandardTransformer
from integrators.validation import ParameterError

V3 = np.array([[1.0, 0.3, -0.1], [0.3, 0.8, 0.2], [-0.1, 0.2, 1.2]])
IU = np.triu_indices(3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


NETWORKS = {
    "block": ShapedTransformer(16, gamma=0.8, tau0=0.7, c_plus=0.5, c_minus=-1.0),
    "attention-2-heads": ShapedTransformer(24, gamma=0.9, n_k=5, heads=2, layers="attention"),
    "block-2-heads": ShapedTransformer(24, gamma=0.9, n_k=5, heads=2, layers="block"),
    "lnr-mlp": ShapedMLP(16, c_plus=0.5, c_minus=-1.0),
    "standard-mlp": StandardTransformer(16, gamma=0.7, mlp=True),
    "linear": ShapedTransformer(16, gamma=0.7, layers="linear"),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_chain_has_the_law_of_the_plain_network(name):
    """After 2 blocks at small width (large finite-n effects), every entry of V has the same law.

    Two-sample KS on each of the 6 entries (p > 1e-3) and means within 4.5 standard errors;
    20000 networks each, fixed seeds.
    """
    net = NETWORKS[name]
    N = 20000
    p = net.run(V3, 2, seed=11, batch=N).final[:, IU[0], IU[1]]
    c = FiniteWidthChain(net).run(V3, 2, seed=12, batch=N).final[:, IU[0], IU[1]]
    z = (p.mean(0) - c.mean(0)) / np.sqrt(p.var(0) / N + c.var(0) / N)
    assert np.max(np.abs(z)) < 4.5, z
    pv = [stats.ks_2samp(p[:, j], c[:, j]).pvalue for j in range(6)]
    assert min(pv) > 1e-3, pv


def test_chain_from_given_tokens():
    """Started from the same tokens X0, the chain and the network agree in law after 3 blocks."""
    net = ShapedTransformer(24, gamma=0.9, n_k=5, heads=2, layers="attention")
    N = 20000
    X0 = net.initial_tokens(V3, batch=N, seed=3)
    p = net.run(X0=X0, depth=3, seed=21).final[:, IU[0], IU[1]]
    c = FiniteWidthChain(net).run(X0=X0, depth=3, seed=22).final[:, IU[0], IU[1]]
    assert min(stats.ks_2samp(p[:, j], c[:, j]).pvalue for j in range(6)) > 1e-3


def test_identical_tokens_stay_identical_in_the_network():
    x = torch.randn(1, 1, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X0 = x.expand(4, 3, 32).clone()
    for net in (ShapedTransformer(32, 0.6), StandardTransformer(32, 0.6, pre_ln=True, mlp=True), ShapedMLP(32)):
        V = net.run(X0=X0, depth=10, seed=1).V
        assert np.max(np.abs(V - V[..., :1, :1])) <= 1e-12 * np.max(np.abs(V)), net.name


@pytest.mark.parametrize("heads", [1, 2])
def test_rank_one_stays_rank_one_in_the_chain(heads):
    V0 = 1.3 * np.ones((3, 3))
    V = FiniteWidthChain(ShapedTransformer(48, 0.6, heads=heads)).run(V0, 20, seed=2, batch=6).V
    assert np.all(np.isfinite(V))
    assert np.max(np.abs(V - V[..., :1, :1])) <= 1e-12 * np.max(np.abs(V))


def _closed_forms(r, k, n, d):
    """MODELS.md check 2 with e^{2kT} -> (1 + 2k/n)^d, e^{-kT} -> (1 - k/n)^d."""
    up, down = (1 + 2 * k / n) ** d, (1 - k / n) ** d
    A, B = (2 * r * r + 1) / 3, (r * r - 1) / 3
    return {"V12^2": A * up + B * down, "V11 V22": A * up - 2 * B * down, "V11^2": up}


@pytest.mark.parametrize(
    "net, k",
    [(ShapedMLP(32, c_plus=0.4, c_minus=0.4), 1.0), (ShapedTransformer(32, gamma=0.6, layers="linear"), 0.36 * (2 - 0.36))],
)
def test_linear_chain_second_moments(net, k):
    """Linear case (no residual: Wishart steps, k = 1; residual linear layer: k = gamma^2 (2 - gamma^2)).

    The finite chain matches the closed forms exactly in expectation: within 3 standard errors.
    """
    r, n, d, N = 0.3, net.n, 16, 40000
    V = FiniteWidthChain(net).run(np.array([[1.0, r], [r, 1.0]]), d, seed=4, batch=N).final
    emp = {"V12^2": V[:, 0, 1] ** 2, "V11 V22": V[:, 0, 0] * V[:, 1, 1], "V11^2": V[:, 0, 0] ** 2}
    exact = _closed_forms(r, k, n, d)
    for key, x in emp.items():
        assert abs(x.mean() - exact[key]) < 3 * x.std() / math.sqrt(N), (key, x.mean(), exact[key])


def test_chain_rejects_what_it_cannot_simulate():
    with pytest.raises(ParameterError) as e:
        FiniteWidthChain(StandardTransformer(16, 0.5, pre_ln=True))
    assert e.value.parameter == "network"
    with pytest.raises(ParameterError) as e:
        FiniteWidthChain(ShapedTransformer(16, 0.5, heads=4)).run(V3, 1, seed=0, batch=2)
    assert e.value.parameter == "n"


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: ShapedTransformer(16, gamma=0.0), "gamma"),
        (lambda: ShapedTransformer(16, gamma=0.5, tau0=0.0), "tau0"),
        (lambda: ShapedTransformer(16, gamma=0.5, heads=3), "heads"),
        (lambda: ShapedTransformer(1, gamma=0.5), "n"),
        (lambda: ShapedTransformer(16, gamma=0.5, layers="conv"), "layers"),
    ],
)
def test_network_bad_parameters(make, name):
    with pytest.raises(ParameterError) as e:
        make()
    assert e.value.parameter == name


def test_network_bad_inputs():
    net = ShapedTransformer(16, 0.5)
    with pytest.raises(ParameterError) as e:
        net.run(np.array([[1.0, 0.5], [0.4, 1.0]]), 2, seed=0, batch=2)
    assert e.value.parameter == "V0"
    with pytest.raises(ParameterError) as e:
        net.run(np.eye(1), 2, seed=0, batch=2)
    assert e.value.parameter == "m"
    with pytest.raises(ParameterError) as e:
        FiniteWidthChain(net).run(np.array([[1.0, 1.5], [1.5, 1.0]]), 2, seed=0, batch=2)
    assert e.value.parameter == "V0"


def test_chol_psd_factors_psd_matrices():
    A = torch.randn(20, 6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    G = A @ A.transpose(-1, -2)
    L = chol_psd(G)
    assert torch.allclose(L @ L.transpose(-1, -2), G, atol=1e-12)
    assert torch.allclose(L, torch.linalg.cholesky(G), atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["block", "attention-2-heads"])
def test_chain_and_network_agree_at_moderate_width(name):
    """n = 64, 8 blocks, 20000 networks (plain network in chunks of 2000; a few minutes)."""
    net = {"block": ShapedTransformer(64, 0.5, c_plus=0.5), "attention-2-heads": ShapedTransformer(64, 0.8, heads=2, layers="attention")}[name]
    N = 20000
    p = np.concatenate([net.run(V3, 8, seed=31 + k, batch=2000).final for k in range(N // 2000)])[:, IU[0], IU[1]]
    c = FiniteWidthChain(net).run(V3, 8, seed=30, batch=N).final[:, IU[0], IU[1]]
    assert min(stats.ks_2samp(p[:, j], c[:, j]).pvalue for j in range(6)) > 1e-3


@pytest.mark.gpu
def test_chain_network_and_sde_on_cuda():
    """On CUDA: the chain agrees in law with the CPU chain; the torch SDE backend follows the numpy path."""
    from integrators import solve
    from particles.covariance import ShapedBlockSDE

    net = ShapedTransformer(32, gamma=0.7)
    gpu = FiniteWidthChain(net).run(V3, 4, seed=5, batch=20000, device="cuda").final[:, IU[0], IU[1]]
    cpu = FiniteWidthChain(net).run(V3, 4, seed=6, batch=20000).final[:, IU[0], IU[1]]
    assert min(stats.ks_2samp(gpu[:, j], cpu[:, j]).pvalue for j in range(6)) > 1e-3
    assert net.run(V3, 2, seed=7, batch=8, device="cuda").V.shape == (3, 8, 3, 3)
    model = ShapedBlockSDE(0.5)
    V0 = np.repeat(0.5 * V3[None], 64, axis=0)
    a = solve(model, V0, 0.2, dt=0.01, method="euler-maruyama", backend="torch", device="cuda", seed=8).final
    b = solve(model, V0, 0.2, dt=0.01, method="euler-maruyama", backend="numpy", seed=8).final
    assert np.max(np.abs(a - b)) < 1e-10
