"""``attnflow info`` and ``attnflow plot`` on every file the project writes: runs (flow, covariance),
sweep shards, merged study files (the study's own figure) and generic sweeps."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from studies.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png_ok(path: Path, min_bytes: int = 20_000) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > min_bytes, path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    assert np.ptp(img[..., :3]) > 0.5  # not a blank canvas


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    from studies.papers.phase_diagram import run
    from studies.sweep import SerialExecutor

    out = tmp_path_factory.mktemp("study")
    paths = run(out, "smoke", executor=SerialExecutor(), progress=False)
    return paths["hdf5"][0]


def test_info_on_a_merged_study(smoke_study, capsys):
    assert main(["info", str(smoke_study)]) == 0
    text = capsys.readouterr().out
    assert "merged sweep 'phase_diagram'" in text and "task flow.phase_point" in text
    assert "12: 12 complete, 0 failed, 0 missing" in text
    assert "qkv=2 [identity, random]" in text and "beta=3 [1, 5, 9]" in text and "d=2 [2, 8]" in text
    assert "dims (qkv, d, beta, seed, t)" in text and "studies.papers.phase_diagram.plot" in text


def test_plot_a_merged_study_draws_the_studys_figure(smoke_study, tmp_path, capsys, monkeypatch):
    import studies.papers.phase_diagram as pd

    called = []
    real = pd.plot
    monkeypatch.setattr(pd, "plot", lambda f, fig: called.append(Path(f)) or real(f, fig))
    png = tmp_path / "study.png"
    assert main(["plot", str(smoke_study), "--out", str(png)]) == 0
    assert called == [Path(smoke_study)] and f"wrote {png}" in capsys.readouterr().out
    _png_ok(png)


def test_info_and_plot_a_shard(smoke_study, tmp_path, capsys):
    shard = sorted((Path(smoke_study).parent / "sweeps" / "phase_diagram" / "shards").rglob("*.h5"))[0]
    assert main(["info", str(shard)]) == 0
    text = capsys.readouterr().out
    with h5py.File(shard, "r") as f:
        task_id = f.attrs["task_id"]
    assert "sweep shard of task flow.phase_point" in text and task_id in text and "status: complete" in text
    assert "measurements" in text and "P " in text
    assert main(["plot", str(shard), "--out", str(tmp_path / "shard.png")]) == 0
    _png_ok(tmp_path / "shard.png")


def test_generic_sweep_gets_a_generic_figure(tmp_path, capsys):
    from studies.sweep import SerialExecutor, merge_sweep, parse_spec, run_sweep

    spec = parse_spec({"sweep": {"name": "demo", "task": "demo.busy", "root_seed": 1, "seeds": 2},
                       "params": {"seconds": 0.0}, "grid": {"size": [2, 3], "scale": [0.5, 1.0]}})  # fmt: skip
    run_sweep(spec, tmp_path / "s", executor=SerialExecutor(), progress=False)
    merged = merge_sweep(spec, tmp_path / "s").path
    assert main(["info", str(merged)]) == 0
    text = capsys.readouterr().out
    assert "task demo.busy" in text and "size=2 [2, 3]" in text and "each measurement over the grid" in text
    assert main(["plot", str(merged), "--out", str(tmp_path / "demo.png")]) == 0
    _png_ok(tmp_path / "demo.png")


def test_info_and_plot_a_covariance_run(tmp_path, capsys):
    run = tmp_path / "cov.h5"
    assert main(["simulate", "shaped-block", "--m", "4", "--batch", "32", "--t-end", "0.5", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    text = capsys.readouterr().out
    assert "shaped-block" in text and "dims (t, batch, m, m2)" in text and "status: complete" in text
    png = tmp_path / "cov.png"
    assert main(["plot", str(run), "--out", str(png)]) == 0
    _png_ok(png, 40_000)


def test_covariance_figure_from_observables_only(tmp_path, capsys, monkeypatch):
    # --no-states: the panels come from the stored rho / diagonal / spectrum observables.
    import studies.figures.cov as cov

    run = tmp_path / "obs.h5"
    assert main(["simulate", "shaped-attention", "--m", "3", "--batch", "16", "--t-end", "0.2", "--no-states",
                 "--observables", "rho,diagonal,spectrum", "--out", str(run)]) == 0  # fmt: skip
    seen = {}
    real = cov._quantities
    monkeypatch.setattr(cov, "_quantities", lambda r: seen.update(q := real(r)) or q)
    assert main(["plot", str(run), "--out", str(tmp_path / "obs.png")]) == 0
    assert {k: src for k, (_, src) in seen.items()} == {"rho": "stored", "diagonal": "stored", "spectrum": "stored"}
    _png_ok(tmp_path / "obs.png")


def test_quantile_bands_are_the_pooled_quantiles():
    from studies.figures.cov import quantile_bands

    y = np.random.default_rng(0).standard_normal((5, 7, 3))
    y[2, 0, 0] = np.nan
    q = quantile_bands(y)
    for k in range(5):
        np.testing.assert_allclose(q[:, k], np.nanquantile(y[k].ravel(), [0.05, 0.25, 0.5, 0.75, 0.95]))


def test_a_foreign_hdf5_file_is_a_one_line_error(tmp_path, capsys):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["a"] = np.arange(3)
    assert main(["plot", str(tmp_path / "other.h5"), "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a file attnflow writes" in err
    assert main(["info", str(tmp_path / "other.h5")]) == 0
    assert "HDF5 file" in capsys.readouterr().out
