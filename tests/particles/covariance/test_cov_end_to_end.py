"""End to end: finite shaped transformers against the block SDE (NOCI Fig. 1), and rank collapse.

Default suite: the exact finite-width chain (same law as the plain network, tests/test_cov_chain.py).
The plain-network versions are marked slow.
"""

import math

import numpy as np
import pytest
from scipy import stats

from integrators import BrownianIncrements, solve
from particles.covariance import FiniteWidthChain, ShapedBlockSDE
from particles.networks import ShapedTransformer, StandardTransformer

GAMMA, TAU0, RHO0, N_WIDTH, DEPTH, SAMPLES = 1 / math.sqrt(8), 1.0, 0.2, 200, 150, 4096
V2 = np.array([[1.0, RHO0], [RHO0, 1.0]])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rho(V):
    return V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1])


@pytest.fixture(scope="module")
def sde_runs():
    """Block SDE at dt = 1e-2 and 1e-3 on the same (nested) Brownian path, 4096 paths, T = d/n = 0.75."""
    model = ShapedBlockSDE(GAMMA, TAU0)
    V0 = np.repeat(V2[None], SAMPLES, axis=0)
    fine = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 1e-3, seed=41)
    T = DEPTH / N_WIDTH
    coarse = solve(model, V0, T, dt=1e-2, method="euler-maruyama", brownian=fine.coarsen(10), exit_threshold=1e6)
    finer = solve(model, V0, T, dt=1e-3, method="euler-maruyama", brownian=fine, exit_threshold=1e6)
    return coarse, finer


def test_sde_exits_are_counted_and_rare(sde_runs):
    for sol in sde_runs:
        assert sol.exited.shape == (SAMPLES,)
        assert sol.exit_fraction < 0.01
        assert np.all(np.isfinite(sol.final[~sol.exited])) and np.all(np.isnan(sol.final[sol.exited]))  # masked


def test_sde_law_does_not_move_with_dt(sde_runs):
    coarse, finer = sde_runs
    ok = ~(coarse.exited | finer.exited)
    assert stats.ks_2samp(_rho(coarse.final[ok]), _rho(finer.final[ok])).statistic < 0.03


def test_finite_shaped_network_matches_the_sde(sde_runs):
    """n = 200, d = 150, gamma = 1/sqrt(8), tau0 = 1, rho0 = 0.2: KS(rho^{12}_T) < 0.03 at 4096 samples each."""
    coarse, _ = sde_runs
    net = ShapedTransformer(N_WIDTH, GAMMA, TAU0)
    V = FiniteWidthChain(net).run(V2, DEPTH, seed=42, batch=SAMPLES, record_every=DEPTH).final
    ks = stats.ks_2samp(_rho(V), _rho(coarse.final[~coarse.exited]))
    assert ks.statistic < 0.03, ks


@pytest.mark.slow
def test_plain_shaped_network_matches_the_sde(sde_runs):
    """The same with the plain torch network (real weight matrices; about an hour on 2 cores)."""
    coarse, _ = sde_runs
    net = ShapedTransformer(N_WIDTH, GAMMA, TAU0)
    parts = [net.run(V2, DEPTH, seed=100 + k, batch=512, record_every=DEPTH).final for k in range(SAMPLES // 512)]
    V = np.concatenate(parts)
    assert stats.ks_2samp(_rho(V), _rho(coarse.final[~coarse.exited])).statistic < 0.03


def _mean_offdiag_rho(V):
    m = V.shape[-1]
    iu = np.triu_indices(m, 1)
    R = V / np.sqrt(np.einsum("lbii,lbjj->lbij", V, V))
    return R[:, :, iu[0], iu[1]].mean(axis=(1, 2))


def test_rank_collapse_standard_vs_shaped():
    """Standard softmax attention (tau = sqrt(n_k)) drives mean rho above 0.99 within 150 layers;
    shaped attention keeps it within 0.1 of rho0 (attention-only residual networks, gamma = 1/sqrt(8))."""
    V0 = (1 - RHO0) * np.eye(4) + RHO0 * np.ones((4, 4))
    std = _mean_offdiag_rho(FiniteWidthChain(StandardTransformer(N_WIDTH, GAMMA)).run(V0, 150, seed=51, batch=64).V)
    shaped = _mean_offdiag_rho(
        FiniteWidthChain(ShapedTransformer(N_WIDTH, GAMMA, TAU0, layers="attention")).run(V0, 150, seed=52, batch=64).V
    )
    assert std[-1] > 0.99
    assert np.max(np.abs(shaped - RHO0)) < 0.1


def test_rank_collapse_with_pre_ln():
    """Pre-LN does not prevent the collapse (plain network: layer norm has no exact chain)."""
    V0 = (1 - RHO0) * np.eye(4) + RHO0 * np.ones((4, 4))
    rho = _mean_offdiag_rho(StandardTransformer(100, GAMMA, pre_ln=True).run(V0, 150, seed=53, batch=16, record_every=10).V)
    assert rho[-1] > 0.99
