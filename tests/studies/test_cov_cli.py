"""``attnflow simulate`` for the covariance models, the finite networks, and the cov study at smoke size."""

import h5py
import numpy as np
import pytest

from studies.cli import main
from studies.store import read_run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_line_error(capsys, rc, *needles):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for s in needles:
        assert s in err, (s, err)


def test_simulate_shaped_block_writes_V(tmp_path):
    out = tmp_path / "run.h5"
    rc = main(["simulate", "shaped-block", "--m", "4", "--gamma", "0.35", "--tau0", "1", "--batch", "8", "--t-end",
               "0.2", "--dt", "0.01", "--n-saves", "5", "--backend", "torch", "--out", str(out)])  # fmt: skip
    assert rc == 0
    run = read_run(out)
    assert run.status == "complete" and run.state_name == "V"
    assert run.state.shape == (5, 8, 4, 4) and run.dims["V"] == ("t", "batch", "m", "m2")
    assert np.allclose(run.state, np.swapaxes(run.state, -1, -2))
    V0 = 0.8 * np.eye(4) + 0.2
    assert np.allclose(run.state[0], V0)
    assert run.params["gamma"] == 0.35 and run.params["k_lin"] == pytest.approx(0.35**2 * (4 - 0.35**2))
    assert run.attrs["n_exited"] == 0
    # the seed and the generator that turns it into the Brownian path are both on record
    from integrators import BrownianIncrements, solve
    from integrators.brownian import GENERATOR
    from particles.covariance import ShapedBlockSDE

    assert run.attrs["noise_generator"] == GENERATOR
    path = BrownianIncrements((8, 2, 4, 4), 0.01, int(run.attrs["noise_seed"]))
    again = solve(ShapedBlockSDE(0.35, 1.0), np.repeat(V0[None], 8, axis=0), 0.2, dt=0.01, method=run.attrs["integrator"],
                  brownian=path).final  # fmt: skip
    assert np.allclose(again, run.state[-1], rtol=0, atol=1e-12)


def test_simulate_from_toml_and_v0_file(tmp_path):
    V = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.1], [0.0, 0.1, 0.5]])
    np.save(tmp_path / "v0.npy", V)
    (tmp_path / "cfg.toml").write_text('v0 = "v0.npy"\ngamma = 0.5\nt-end = 0.1\ndt = 0.02\nbatch = 3\n')
    out = tmp_path / "run.h5"
    assert main(["simulate", "shaped-attention", "--config", str(tmp_path / "cfg.toml"), "--out", str(out)]) == 0
    run = read_run(out)
    assert run.state.shape[1:] == (3, 3, 3) and np.allclose(run.state[0], V)


def test_simulate_correlation_and_finite_network(tmp_path):
    assert main(["simulate", "shaped-correlation", "--rho0", "0.3", "--batch", "4", "--t-end", "0.5",
                 "--out", str(tmp_path / "c.h5")]) == 0  # fmt: skip
    run = read_run(tmp_path / "c.h5")
    assert run.state.shape[1:] == (4, 1) and np.allclose(np.tanh(run.state[0]), 0.3)
    for sim in ("chain", "plain"):
        out = tmp_path / f"{sim}.h5"
        assert main(["simulate", "finite-network", "--n", "32", "--depth", "8", "--m", "3", "--batch", "4",
                     "--simulator", sim, "--out", str(out)]) == 0  # fmt: skip
        run = read_run(out)
        assert run.state.shape == (9, 4, 3, 3)
        assert np.allclose(run.t, np.arange(9) / 32)


@pytest.mark.parametrize(
    "args, needle",
    [
        ("shaped-block --gamma 0", "gamma"),
        ("shaped-block --gamma 1.5", "gamma"),
        ("shaped-attention --tau0 0", "tau0"),
        ("shaped-block --tau0 -2", "tau0"),
        ("shaped-block --m 1", "m"),
        ("shaped-block --m 4 --rho0 -0.5", "rho0"),
        ("finite-network --n 16 --heads 3", "heads"),
        ("shaped-mlp --gamma 0.5", "gamma"),
        ("residual-linear --tau0 2", "tau0"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, needle):
    rc = main(["simulate", *args.split(), "--out", str(tmp_path / "x.h5")])
    _one_line_error(capsys, rc, needle)
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("matrix", [[[1.0, 0.5], [0.2, 1.0]], [[1.0, 2.0], [2.0, 1.0]]])
def test_bad_v0_file(tmp_path, capsys, matrix):
    np.save(tmp_path / "v0.npy", np.array(matrix))
    rc = main(["simulate", "shaped-block", "--v0", str(tmp_path / "v0.npy"), "--out", str(tmp_path / "x.h5")])
    _one_line_error(capsys, rc, "v0")


def test_cov_study_smoke(tmp_path):
    from studies.papers.cov import run

    paths = run(tmp_path, "smoke", progress=False)
    (h5,) = paths["hdf5"]
    assert len(paths["figure"]) == 3 and all(p.exists() for p in paths["figure"])
    with h5py.File(h5, "r") as f:
        law = f["law"]
        ks = law["ks_rho12"][()]
        assert ks.shape == (3,) and np.all((ks > 0) & (ks < 1))
        assert law["rho12"].shape == (3, 256) and law["rho12_moments"].shape == (3, 4)
        assert 0.0 <= f["sde"].attrs["exit_fraction"] < 0.05
        mr = f["collapse"]["mean_rho"][()]
        assert mr.shape == (3, 25) and np.allclose(mr[:, 0], 0.2)
    import xarray as xr

    ds = xr.open_dataset(h5, group="law", engine="h5netcdf")
    assert ds["ks_rho12"].dims == ("simulation",)
