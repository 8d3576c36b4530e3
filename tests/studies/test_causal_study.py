"""The causal study (issue 13 item 1, KPR arXiv:2411.04990) at its smoke size, and one paper-size point."""

from dataclasses import replace

import h5py
import numpy as np


def test_causal_smoke_writes_h5_figure_and_gallery_rows(tmp_path):
    from studies.papers.causal import QUANTILES, SETTINGS, TOL, gallery_numbers, main
    from studies.papers.gallery import check_rows

    assert main(["--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "causal.png").stat().st_size > 10_000
    with h5py.File(tmp_path / "causal.h5", "r") as f:
        assert f.attrs["status"] == "complete" and f.attrs["study"] == "causal"
        assert [s.decode() for s in f["setting"][()]] == list(SETTINGS)
        # V = I: token 1 attends to itself only, so P_{x_1}(x_1) = 0 and x_1 never moves
        assert np.max(f["x1_drift"][()]) < 1e-12
        arr, ct, q = f["arrival"][()], f["collapse_time"][()], f["max_dist_q"][()]
        betas = list(f["beta"][()])
        t = f["t"][()]
    assert np.all(arr[..., 0] == 0.0)  # token 1 starts at x_1(0)
    # the collapse time is the last arrival; quantiles of max_k dist are ordered in the quantile
    done = np.all(np.isfinite(arr), axis=-1)
    assert np.array_equal(np.isfinite(ct), done)
    assert np.allclose(ct[done], np.max(arr, axis=-1)[done])
    assert np.all(np.diff(q, axis=-2) >= -1e-15) and list(QUANTILES) == sorted(QUANTILES)
    # beta = 1 (every d, both settings): nearly every start has collapsed onto x_1(0) by t_end
    b1 = betas.index(1.0)
    assert np.isfinite(ct[:, :, b1]).mean() >= 0.9
    assert np.all(q[:, :, b1, 2, -1] < TOL) and np.all(q[:, :, b1, 2, 0] > 0.1)
    assert np.all(ct[np.isfinite(ct)] <= t[-1])
    rows = check_rows(gallery_numbers(tmp_path))
    assert len(rows) == len(SETTINGS) * (1 + 4 * len(betas))
    for r in rows:
        if r["quantity"].startswith(("largest drift", "fraction of starts collapsed")):
            assert r["ours"] is not None
        if r["quantity"].startswith("fraction") and r["ours"] is not None:
            assert 0.0 <= r["ours"] <= 1.0
    drift = [r["ours"] for r in rows if r["quantity"].startswith("largest drift")]
    assert max(drift) < 1e-12


def test_causal_plot_command_dispatches_the_study_file(tmp_path):
    from studies.figures.study import plot_study_file
    from studies.papers.causal import run

    run(tmp_path, "smoke", progress=False)
    made = plot_study_file(tmp_path / "causal.h5", tmp_path / "again.png")
    assert made == [tmp_path / "again.png"] and made[0].stat().st_size > 10_000


def test_causal_paper_size_first_point_runs_with_a_tiny_batch():
    from studies.papers.causal import SETTINGS, SIZES, _point

    sz = replace(SIZES["paper"], batch=2)
    t, m = _point(SETTINGS[0], sz.dims[0], sz.betas[0], sz, seed=7)
    assert t[-1] == sz.t_end and len(t) == sz.n_save
    assert m["arrival"].shape == (2, sz.n) and np.max(m["x1_drift"]) < 1e-12
    # d = 2, beta = 1, t up to 60: both starts have collapsed onto x_1(0)
    assert np.all(np.isfinite(m["collapse_time"]))


def test_arrival_time_is_when_the_distance_stays_below_tolerance():
    from studies.papers.causal import arrival_times

    t = np.arange(5.0)
    dist = np.array([[1.0, 1.0, 1.0], [1e-4, 1.0, 1.0], [1e-2, 1e-4, 1.0], [1e-4, 1e-4, 1.0], [1e-5, 1e-5, 1.0]])
    # column 0 dips below at t = 1 but leaves again: it arrives at t = 3; column 2 never arrives
    got = arrival_times(t, dist, tol=1e-3)
    assert got[0] == 3.0 and got[1] == 2.0 and np.isnan(got[2])
