"""The gradient-exponent study (issue 13 item 4) at its smoke size: HDF5, figure, JSON answer."""

import json

import h5py
import numpy as np
import torch


def test_gradient_exponent_smoke_writes_h5_figure_and_answer(tmp_path):
    from studies.papers.gradient_exponent import main

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(old)
    with h5py.File(tmp_path / "gradient_exponent.h5", "r") as f:
        assert f.attrs["status"] == "complete"
        g = f["theory"]
        la = g["lambda_a"][()]
        assert np.nanmin(la) < 0 < np.nanmax(la)  # the grid spans the order-chaos line
        # (ii) is lambda_a; (i) lies above it wherever attention is present
        assert np.allclose(g["token_diff"][()], la)
        assert np.all(g["token_mean"][()] > la)
        meets = json.loads(g.attrs["meets_json"])
        assert meets["token_diff"] == "everywhere" and meets["token_mean"] == "never"
        fin = f["finite"]
        for name in ("token_mean", "token_diff", "attractor", "readout"):
            assert np.all(np.isfinite(fin[name + "_meas"][()])) and np.all(fin[name + "_meas_err"][()] > 0)
    summary = json.loads((tmp_path / "gradient_exponent.json").read_text())
    assert set(summary["candidates"]) == {"token_mean", "token_diff", "attractor", "readout"}
    assert (tmp_path / "gradient_exponent.png").stat().st_size > 10_000
