"""Signal-propagation studies: HDF5 + figures written, trainability smoke trains, sweep task, benchmark."""

import json

import h5py
import numpy as np
import pytest
import torch

from particles.signalprop import SignalPropParams, iterate_map
from particles.signalprop.trainable import TrainableTransformer
from integrators.validation import ParameterError


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _check_contract(path):
    with h5py.File(path, "r") as f:
        for key in ("model", "params_json", "seed", "package_version", "git_commit", "created", "status", "dtype"):
            assert key in f.attrs, key
        assert f.attrs["status"] == "complete"
        json.loads(f.attrs["params_json"])


def test_signalprop_study_smoke_writes_complete_hdf5_and_figures(tmp_path):
    xr = pytest.importorskip("xarray")
    from studies.papers.signalprop import main

    assert main(["--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    h5 = tmp_path / "signalprop.h5"
    _check_contract(h5)
    tr = xr.open_dataset(h5, group="trajectories", engine="h5netcdf")
    assert tr.c_finite.dims == ("setting", "d", "seed", "layer")
    assert np.all(np.isfinite(tr.c_finite.values)) and np.all(np.isfinite(tr.rms_dev_c.values))
    for plane, y in (("phase_alpha_sigma_w", "sigma_w"), ("phase_alpha_sigma_b", "sigma_b")):
        ds = xr.open_dataset(h5, group=plane, engine="h5netcdf")
        assert ds.lambda_a.dims == ("alpha", y) and ds.lambda_a_meas.dims == ("alpha_finite", f"{y}_finite")
        assert np.all(np.isfinite(ds.lambda_a.values)) and np.all(np.isfinite(ds.lambda_a_meas.values))
        # lambda_g >= lambda_a at collapse; at the attractor too on this grid
        assert np.all(ds.lambda_g.values >= ds.lambda_a.values - 1e-9)
    for fig in ("signalprop_trajectories.png", "signalprop_phase.png"):
        assert (tmp_path / fig).stat().st_size > 10_000


def test_trainability_smoke_trains_and_records_losses(tmp_path):
    xr = pytest.importorskip("xarray")
    from studies.papers.trainability import main

    assert main(["--smoke", "--out", str(tmp_path), "--no-progress", "--workers", "1"]) == 0
    _check_contract(tmp_path / "trainability.h5")
    ds = xr.open_dataset(tmp_path / "trainability.h5", group="models", engine="h5netcdf")
    curves = ds.held_out_loss.values
    assert curves.shape == (6, 4) and np.all(np.isfinite(curves))
    assert np.all(curves[:, 0] != curves[:, -1])  # the weights moved
    assert np.mean(curves[:, -1] < curves[:, 0]) >= 0.5  # and mostly for the better
    assert np.all(np.isfinite(ds.lambda_a.values)) and np.all(np.isfinite(ds.lambda_g.values))
    assert (tmp_path / "trainability.png").stat().st_size > 10_000
    import h5py

    with h5py.File(tmp_path / "trainability.h5", "r") as f:  # the smoke fit is defined (issue 13, item 5)
        assert f.attrs["fit_basis"] == "linear"
        assert np.isfinite(f.attrs["r2_quadratic"]) and np.isfinite(f.attrs["r2_quadratic_loo"])


def test_quadratic_r2_exact_and_noisy():
    from studies.papers.trainability import quadratic_r2

    rng = np.random.default_rng(0)
    a, g = rng.normal(size=40), rng.normal(size=40)
    y = 1 + a - 2 * g + 0.5 * a * g + g**2
    r2, loo = quadratic_r2(a, g, y)
    assert r2 == pytest.approx(1.0) and loo == pytest.approx(1.0)
    r2n, loon = quadratic_r2(a, g, y + rng.normal(scale=1.0, size=40))
    assert 0 < loon < r2n < 1
    assert np.isnan(quadratic_r2(a[:5], g[:5], y[:5])[0])  # fewer models than coefficients


def test_trainable_model_initialisation_follows_the_maps():
    """At initialisation the trainable model is the random reference model: (q, c) after
    4 blocks from distinct tokens (c0 ~ 0, q0 ~ 1) match the large-width map."""
    P = SignalPropParams(n=16, alpha_A=0.5, alpha_M=0.7, sigma_w=2.0, phi="tanh")
    q_fin, c_fin = [], []
    for seed in range(4):
        model = TrainableTransformer(P, vocab=16, d=512, depth=4, seed=seed, dtype=torch.float64)
        with torch.no_grad():
            x = model.hidden(torch.randperm(16, generator=torch.Generator().manual_seed(seed))[None])
        g = (x[0] @ x[0].T / 512).numpy()
        q_fin.append(np.diag(g).mean())
        c_fin.append(g[~np.eye(16, dtype=bool)].mean() / np.diag(g).mean())
    tr = iterate_map(P, 1.0, 0.0, 4)
    assert np.mean(q_fin) == pytest.approx(tr.q[-1], rel=0.05)
    assert np.mean(c_fin) == pytest.approx(tr.c[-1], abs=0.03)


def test_trainable_model_bad_input():
    P = SignalPropParams(n=4)
    with pytest.raises(ParameterError, match="vocab"):
        TrainableTransformer(P, vocab=1, d=8, depth=1)
    with pytest.raises(ParameterError, match="tokens"):
        TrainableTransformer(P, vocab=5, d=8, depth=1)(torch.zeros(2, 3, dtype=torch.long))
    from studies.papers.trainability import run

    with pytest.raises(ParameterError, match="task"):
        run("unused", "smoke", task="sorting")


def test_phase_point_is_a_registered_sweep_task():
    from studies.sweep.tasks import get_task

    task = get_task("signalprop.phase_point")
    params = dict(task.defaults, n=8, d=64, depth=6, batch=2, burn_in=4, alpha_A=0.5, alpha_M=0.5)
    res = task(params, 1)
    assert set(res) >= {"lambda_a", "lambda_g", "lambda_a_meas", "lambda_g_meas"}
    assert res["lambda_a_meas"] == pytest.approx(res["lambda_a"], abs=0.15)  # d = 64: loose


def test_benchmark_quick_ratio():
    from studies.benchmarks.bench_signalprop import run

    res = run(grid=8, finite_points=1, d=64, repeats=1)
    assert 0 < res["ratio_theory_over_finite"] < 0.05
    assert res["finite_extrapolated_s"] > 0
