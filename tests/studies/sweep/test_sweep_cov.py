"""The covariance study (finite chain vs block SDE) through the sweep machinery: run, merge, open, reject bad specs."""

from __future__ import annotations

import numpy as np
import pytest

from integrators.validation import ParameterError
from studies.sweep import SerialExecutor, merge_sweep, parse_spec, plan_tasks, run_sweep
from studies.sweep.tasks import get_task


def cov_spec(**params):
    """4 tiny cov.rho_law tasks: 2 widths x 2 seeds, 64 samples, T = 0.25."""
    return {
        "sweep": {"name": "cov_tiny", "task": "cov.rho_law", "root_seed": 7, "seeds": 2},
        "params": {"T": 0.25, "m": 3, "samples": 64, "dt": 0.05} | params,
        "grid": {"n": [8, 16]},
    }


def test_tiny_cov_sweep_runs_merges_and_opens_in_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    spec = parse_spec(cov_spec())
    assert spec.n_tasks == 4
    res = run_sweep(spec, tmp_path, executor=SerialExecutor(), progress=False)
    assert (res.completed, res.failed) == (4, 0), [o.error for o in res.outcomes]
    path = merge_sweep(spec, tmp_path).path
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert list(ds["n"].values) == [8, 16]
        ks = ds["ks_rho12"]
        assert ks.dims == ("n", "seed") and ks.shape == (2, 2)
        for name in ("ks_rho12", "ks_V11", "ks_rho12_pvalue", "ks_V11_pvalue", "sde_exit_fraction"):
            v = ds[name].values
            assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all(), name
        # a KS statistic of two samples of 64 is a multiple of 1/64
        assert np.allclose(ks.values * 64, np.round(ks.values * 64))
        # exploding SDE paths are counted, not dropped silently
        used = ds["sde_paths_used"].values
        assert np.allclose(used + ds["sde_exit_fraction"].values * 64, 64)
        assert (ds["depth"].values == np.array([[2, 2], [4, 4]])).all()  # round(T n)
        for name in ("rho12_var_chain", "rho12_var_sde", "V11_var_chain", "V11_var_sde"):
            assert (ds[name].values > 0).all(), name
        # each task is a pure function of (params, seed): re-running one reproduces the merged values
        t = plan_tasks(spec)[3]
        task = get_task("cov.rho_law")
        again = task(task.check_params(t.params, {}), t.seed)
        stored = ds.isel(n=t.point[0], seed=t.replicate)
        for name in ("ks_rho12", "rho12_mean_chain", "V11_mean_sde"):
            assert float(again[name]) == float(stored[name]), name


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"params": {"sampels": 64}}, "params.sampels"),  # unknown key
        ({"params": {"m": 3.5}}, "params.m"),  # float for an int parameter
        ({"grid": {"width": [8, 16]}}, "grid.width"),  # unknown grid dimension
    ],
)
def test_bad_cov_spec_names_the_key(changes, key):
    data = cov_spec()
    for table, entries in changes.items():
        if table == "grid":
            data["grid"] = entries
        else:
            data[table] |= entries
    with pytest.raises(ParameterError) as err:
        parse_spec(data)
    assert err.value.parameter == key
