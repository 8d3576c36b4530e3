"""Each model family declares its own observables (``model.observables``); the covariance set is exact."""

import h5py
import numpy as np
import pytest

from integrators import solve
from particles import NoisyAttention, SelfAttention, uniform_sphere
from particles.covariance import (
    CorrelationSDE,
    ResidualLinearSDE,
    ResidualShapedMLPSDE,
    ShapedAttentionSDE,
    ShapedBlockSDE,
    ShapedMLPSDE,
)
from particles.covariance.observables import (
    CORRELATION_OBSERVABLES,
    COVARIANCE_OBSERVABLES,
    correlations,
    diagonal,
    numerical_rank,
    spectrum,
    trace,
)
from particles.sphere.observables import OBSERVABLES
from integrators.validation import ParameterError
from studies.cli import main
from studies.store import read_run

COV_MODELS = [ShapedBlockSDE(0.35), ShapedAttentionSDE(0.35), ShapedMLPSDE(), ResidualShapedMLPSDE(0.35),
              ResidualLinearSDE(0.35)]  # fmt: skip


def _random_psd(batch: int, m: int, rank: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((batch, m, rank))
    return g @ np.swapaxes(g, -1, -2)


def test_covariance_observables_match_direct_numpy():
    m = 5
    V = _random_psd(7, m, m, seed=0)
    rho = correlations(V)
    assert rho.shape == (7, m * (m - 1) // 2)
    for b in range(7):
        k = 0
        for a in range(m):
            for c in range(a + 1, m):  # np.triu_indices(m, 1) order
                assert rho[b, k] == V[b, a, c] / np.sqrt(V[b, a, a] * V[b, c, c])
                k += 1
        np.testing.assert_array_equal(diagonal(V)[b], [V[b, i, i] for i in range(m)])
        assert trace(V)[b] == sum(V[b, i, i] for i in range(m))
        np.testing.assert_array_equal(spectrum(V)[b], np.linalg.eigvalsh(V[b]))
    assert np.all(np.abs(rho) <= 1.0)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_numerical_rank_of_low_rank_psd(rank):
    V = _random_psd(6, 4, rank, seed=rank)
    r = numerical_rank(V)
    assert r.dtype.kind == "i"
    np.testing.assert_array_equal(r, rank)
    np.testing.assert_array_equal(r, [np.linalg.matrix_rank(v, hermitian=True) for v in V])


def test_non_finite_paths_give_nan_not_an_error():
    V = _random_psd(3, 3, 3, seed=1)
    V[1, 0, 0] = np.inf
    lam = spectrum(V)
    assert np.isnan(lam[1]).all() and np.isfinite(lam[[0, 2]]).all()
    np.testing.assert_array_equal(numerical_rank(V), [3, -1, 3])


def test_each_family_declares_its_own():
    for model in COV_MODELS:
        assert model.observables == COVARIANCE_OBSERVABLES, model.name
    assert CorrelationSDE().observables == CORRELATION_OBSERVABLES
    x = np.arctanh(np.array([[0.3], [-0.5]]))
    np.testing.assert_allclose(CorrelationSDE().observables["rho"](x), [[0.3], [-0.5]])
    sa = SelfAttention(beta=1.0)
    assert sa.observables == OBSERVABLES and NoisyAttention(sa, 4.0).observables == OBSERVABLES


def test_solve_stores_covariance_observables():
    model = ShapedBlockSDE(0.35)
    V0 = 0.8 * np.eye(4) + 0.2
    sol = solve(model, np.repeat(V0[None], 3, axis=0), 0.1, dt=0.01, method="euler-maruyama", seed=1,
                save_at=6, observables=["rho", "trace", "spectrum", "rank"])  # fmt: skip
    for k, V in enumerate(sol.x):
        np.testing.assert_array_equal(sol.observables["rho"][k], correlations(V))
        np.testing.assert_array_equal(sol.observables["trace"][k], trace(V))
        np.testing.assert_array_equal(sol.observables["spectrum"][k], spectrum(V))
    np.testing.assert_allclose(sol.observables["rho"][0], 0.2)


@pytest.mark.parametrize(
    "model,x0,name",
    [
        (ShapedBlockSDE(0.35), np.eye(3)[None], "energy"),
        (ShapedBlockSDE(0.35), np.eye(3)[None], "cluster_count"),
        (SelfAttention(beta=1.0), uniform_sphere(1, 4, 3, seed=0), "rho"),
    ],
)
def test_observable_of_another_family_is_a_parameter_error(model, x0, name):
    kw = {"method": "euler-maruyama", "seed": 0} if getattr(model, "is_sde", False) else {"method": "rk4"}
    with pytest.raises(ParameterError) as exc:
        solve(model, x0, 0.1, dt=0.05, observables=[name], **kw)
    msg = str(exc.value)
    assert exc.value.parameter == "observables" and "\n" not in msg
    assert repr(name) in msg and all(own in msg for own in model.observables), msg


def test_cli_refuses_another_familys_observable(tmp_path, capsys):
    out = tmp_path / "x.h5"
    rc = main(["simulate", "shaped-block", "--observables", "energy", "--t-end", "0.1", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "observables" in err and "rho" in err, err
    assert not out.exists()


def test_cli_stores_rho_and_lists_the_models_own(tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc = main(["simulate", "shaped-block", "--m", "3", "--batch", "4", "--t-end", "0.1", "--n-saves", "6",
               "--observables", "rho,diagonal", "--out", str(out)])  # fmt: skip
    assert rc == 0
    run = read_run(out)
    assert run.dims["rho"] == ("t", "batch", "pair") and run.dims["diagonal"] == ("t", "batch", "m")
    np.testing.assert_array_equal(run.observables["rho"], correlations(run.state))
    with h5py.File(out, "r") as f:
        assert f["m"].shape == (3,)  # diagonal shares V's own axis
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["simulate", "shaped-block", "--help"])
    help_cov = " ".join(capsys.readouterr().out.split())
    assert "from: rho, diagonal, trace, spectrum, rank" in help_cov and "cluster_count" not in help_cov
    with pytest.raises(SystemExit):
        main(["simulate", "sa", "--help"])
    help_sa = " ".join(capsys.readouterr().out.split())
    assert "cluster_count" in help_sa and "spectrum" not in help_sa
