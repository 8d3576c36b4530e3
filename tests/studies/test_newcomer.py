"""A newcomer's first hour (issue 12, points 4-8): honest help, study sizes and overwrites, the numba
notice and warm-up, --version and the ``attnflow`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "studies.cli"]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def _help_text(capsys, *args: str) -> str:
    from studies.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(list(args) + ["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare word streams


# ----------------------------------------------------------------------------- help (point 4)
def test_method_help_tells_each_family_its_own_default(capsys, tmp_path):
    from integrators import get_stepper

    flow = _help_text(capsys, "simulate", "sa")
    assert "rk4 (the default)" in flow and "stratonovich-heun (the default)" in flow
    cov = _help_text(capsys, "simulate", "shaped-block")
    assert "euler-maruyama (the default)" in cov and "stratonovich-heun is refused" in cov
    assert "stratonovich-heun (the default)" not in cov
    # what the help says is what the code does: the Stratonovich stepper is refused for an Ito model
    res = _cli("simulate", "shaped-block", "--method", "stratonovich-heun", "--t-end", "0.1", "--dt", "0.01",
               "--out", str(tmp_path / "x.h5"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "method" in res.stderr
    assert get_stepper("stratonovich-heun").calculus == "stratonovich"


def test_study_help_is_for_users(capsys):
    text = _help_text(capsys, "study")
    for developer_text in (":data:", "Adding a study", "run(out, size"):
        assert developer_text not in text
    assert "about a minute" not in text and "about 3 minutes" in text  # the measured time of `study default`
    assert "smoke (seconds), default (minutes), full" in text and "or paper (the paper" in text
    assert "(the default)" not in text.split("--size")[1].split("--out")[0]
    import argparse

    from studies.papers.common import add_study_options

    p = argparse.ArgumentParser()
    add_study_options(p)
    for action in p._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def test_readme_points_to_the_models_text_where_it_is():
    readme = (ROOT / "README.md").read_text()
    assert "shared/spec/MODELS.md" not in readme or "not in this repository" in readme
    assert "Python >= 3.11" in readme or "Python 3.11" in readme


def test_benchmark_docstrings_cite_no_issue_numbers():
    import re

    for path in (ROOT / "studies" / "benchmarks").glob("*.py"):
        assert not re.search(r"[Ii]ssue\s*#?\d", path.read_text()), path.name


# ------------------------------------------------------------------------ studies (point 5)
def test_study_list_shows_every_size_with_a_time():
    from studies.papers.registry import STUDIES

    res = _cli("study", "list")
    assert res.returncode == 0, res.stderr
    for name, entry in STUDIES.items():
        block = res.stdout.split(f"\n{name} ", 1)[1].split("\n")[1]
        for size in entry.seconds:
            assert f"{size} about" in block, (name, block)
        assert ("estimate" in block) == (set(entry.seconds) != set(entry.measured))


def test_long_full_size_needs_size_full(tmp_path):
    from studies.papers.registry import LONG_S, STUDIES

    long_ones = [n for n, e in STUDIES.items() if e.default_size == "full" and e.seconds["full"] > LONG_S]
    assert "phase-diagram" in long_ones
    res = _cli("study", "phase-diagram", "--out", str(tmp_path / "c"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--size full" in res.stderr
    assert not (tmp_path / "c").exists()  # refused before anything ran


def test_phase_diagram_file_names_do_not_depend_on_the_size():
    from studies.papers.phase_diagram import spec_for

    for size in ("smoke", "default", "full"):
        assert spec_for(size).name == "phase_diagram"
        assert spec_for(size, "default").name == "default"


def test_study_refuses_to_overwrite_and_uses_one_file_name(tmp_path):
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress", "--executor", "serial")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "default.h5").is_file() and (tmp_path / "default.png").is_file()
    assert not (tmp_path / "phase_diagram.h5").exists()  # the smoke size writes the full size's name
    from PIL import Image

    width, height = Image.open(tmp_path / "default.png").size
    assert width < 2 * height  # panels wrap: no long strip of heat maps
    before = (tmp_path / "default.h5").stat().st_mtime_ns
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "--overwrite" in res.stderr
    assert (tmp_path / "default.h5").stat().st_mtime_ns == before
    res = _cli("study", "default", "--smoke", "--out", str(tmp_path), "--no-progress", "--overwrite", "--executor", "serial")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "default.h5").stat().st_mtime_ns != before


# ------------------------------------------------------------------ numba notice (point 6)
_CORR_DRIFT = ("import numpy as np, attnflow as af; "
               "print(af.CorrelationSDE(0.0, -1.0, 1.0, 1.0).numba_drift(0.0, np.full((2, 1), 0.3))[0, 0])")


def _python(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def test_numba_notice_only_when_compiling(tmp_path):
    from integrators._numba_notice import NOTICE

    cold = _python(_CORR_DRIFT, tmp_path / "cache")
    assert cold.returncode == 0, cold.stderr
    assert cold.stderr.count(NOTICE) == 1  # once, before the compilation, on stderr
    assert NOTICE not in cold.stdout
    warm = _python(_CORR_DRIFT, tmp_path / "cache")  # same on-disk cache: loaded, not compiled
    assert warm.returncode == 0 and NOTICE not in warm.stderr
    assert warm.stdout == cold.stdout
    numpy_only = _python("import numpy as np, attnflow as af; "
                         "af.solve(af.SelfAttention(beta=1.0), af.uniform_sphere(1, 4, 3, seed=0), 0.1, dt=0.05)",
                         tmp_path / "other")
    assert numpy_only.returncode == 0 and NOTICE not in numpy_only.stderr


def test_warmup_loads_every_kernel_entry_point():
    from studies.cli.warmup import kernel_dispatchers, warmup

    res = warmup(("float64",))
    kernels = kernel_dispatchers()
    # the attention kernels (per-system and streamed), the covariance drift, diffusion, fused step,
    # the correlation drift and the Philox normals all hold machine code afterwards
    for short in ("_small_kernel", "_flash_kernel", "_drift_kernel", "_diffusion_kernel", "_em_kernel",
                  "_corr_drift_kernel", "_fill"):
        assert any(k.endswith("." + short) for k in kernels), short
    assert res["kernels"] == len(kernels) >= 7 and res["cases"] >= 20


@pytest.mark.slow
def test_warmup_leaves_nothing_to_compile(tmp_path):
    """After `attnflow warmup` into a fresh cache, the README's numba command and a covariance run compile nothing."""
    from integrators._numba_notice import NOTICE

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    res = subprocess.run(CLI + ["warmup", "--quiet"], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert res.returncode == 0 and "warmup:" in res.stdout, res.stderr
    for cmd in (["simulate", "sa", "--n", "16", "--d", "16", "--beta", "4", "--init", "orthogonal", "--t-end", "1",
                 "--dt", "0.01", "--method", "rk4", "--backend", "numba", "--out", str(tmp_path / "a.h5")],
                ["simulate", "shaped-block", "--backend", "numba", "--t-end", "0.1", "--dt", "0.01",
                 "--out", str(tmp_path / "b.h5")],
                ["simulate", "sa", "--kappa", "1", "--backend", "numba", "--dtype", "float32", "--t-end", "0.1",
                 "--dt", "0.01", "--out", str(tmp_path / "c.h5")]):
        run = subprocess.run(CLI + cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert NOTICE not in run.stderr, cmd


# -------------------------------------------------------------- version, package (point 7)
def test_version_flag_prints_the_package_version():
    import attnflow

    res = _cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"attnflow {attnflow.__version__}"
    assert attnflow.__version__ != "0+unknown"  # the tests run on an installed (editable) package


def test_import_attnflow_exposes_the_public_api():
    import numpy as np

    import attnflow as af
    import integrators
    import particles
    from particles import signalprop

    assert af.solve is integrators.solve and af.SelfAttention is particles.SelfAttention
    assert af.ShapedBlockSDE is particles.covariance.ShapedBlockSDE and af.block_map is signalprop.block_map
    assert set(af.__all__) <= set(dir(af)) and len(af.__all__) == len(set(af.__all__))
    x0 = af.uniform_sphere(batch=2, n=6, d=3, seed=1)
    ref = integrators.solve(particles.SelfAttention(beta=2.0), x0, 1.0, dt=0.05, method="rk4")
    sol = af.solve(af.SelfAttention(beta=2.0), x0, 1.0, dt=0.05, method="rk4")
    assert np.array_equal(sol.x, ref.x)


def test_distribution_files():
    import tomllib

    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "attnflow*" in py["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "py.typed" in py["tool"]["setuptools"]["package-data"]["*"]
    for pkg in ("attnflow", "particles", "integrators", "studies"):
        assert (ROOT / pkg / "py.typed").is_file()
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and py["project"]["license"]["text"] == "MIT"
    assert "## 0.1.0" in (ROOT / "CHANGELOG.md").read_text()
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()


# ------------------------------------------------------------------------- figures (point 8)
@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib figure saved during the test (the figure functions close theirs)."""
    from matplotlib.figure import Figure

    figs = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def test_run_figure_time_axes_ticks_and_labels(tmp_path, saved_figures):
    from studies.figures.flow import plot_run
    from studies.store import read_run

    out = tmp_path / "run.h5"
    res = _cli("simulate", "sa", "--n", "8", "--d", "3", "--beta", "4", "--t-end", "4", "--dt", "0.05",
               "--method", "rk4", "--save-times", "1,2,4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    plot_run(read_run(out), tmp_path / "run.png")
    fig = saved_figures[-1]
    sphere, heat, clusters, energy_ax = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:4]
    for ax in (heat, clusters, energy_ax):  # one time axis for every time panel: the saved span
        assert ax.get_xlim() == pytest.approx((1.0, 4.0))
    ticks = [v for v in clusters.get_yticks() if clusters.get_ylim()[0] <= v <= clusters.get_ylim()[1]]
    assert ticks and all(float(v).is_integer() for v in ticks)
    assert sphere.get_xlabel() and sphere.get_ylabel() and sphere.get_zlabel()
    notes = [clusters.get_title(loc="right"), energy_ax.get_title(loc="right")]
    assert all(n in ("observable read from the file", "computed from the stored states") or
               n.startswith("computed from the stored states") for n in notes), notes


def test_constant_cluster_count_still_has_integer_ticks(tmp_path, saved_figures):
    from studies.figures.flow import plot_run
    from studies.store import read_run

    out = tmp_path / "run.h5"  # orthogonal start in d = 8: no pair merges by t = 1, the count stays 8
    res = _cli("simulate", "sa", "--n", "8", "--d", "8", "--init", "orthogonal", "--t-end", "1", "--dt", "0.05",
               "--method", "rk4", "--n-saves", "5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    plot_run(read_run(out), tmp_path / "run.png")
    clusters = [ax for ax in saved_figures[-1].axes if ax.get_ylabel() == "number of clusters"][0]
    lo, hi = clusters.get_ylim()
    ticks = [v for v in clusters.get_yticks() if lo <= v <= hi]
    assert 8 in ticks and all(float(v).is_integer() for v in ticks)


def test_trainability_title_says_why_the_fit_is_missing(tmp_path, saved_figures):
    import h5py
    import numpy as np

    from studies.papers.trainability import plot

    h5 = tmp_path / "t.h5"
    with h5py.File(h5, "w") as f:  # four models: too few even for the three coefficients of the linear fit
        g = f.create_group("models")
        g["lambda_a"], g["lambda_g"], g["final_loss"] = [-1.0, -0.5, 0.0, 0.2], [0.1, 0.6, 0.0, 0.1], [1.6, 1.8, 1.9, 2.0]
        g["held_out_loss"], g["log_step"] = np.linspace(2.2, 1.6, 16).reshape(4, 4), [0, 4, 8, 12]
        f.attrs.update(r2_quadratic=np.nan, r2_quadratic_loo=np.nan, task="reverse", vocab=6)
    plot(h5, tmp_path / "t.png")
    fit_ax, loss_ax = [ax for ax in saved_figures[-1].axes if ax.get_label() != "<colorbar>"][:2]
    assert "nan" not in fit_ax.get_title() and "n/a (4 grid points; the linear fit needs 6)" in fit_ax.get_title()
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert any("colour = final loss" in t for t in labels) and any("chance level" in t for t in labels)


def test_simulate_progress_bar_rounds_times(capsys, monkeypatch):
    import tqdm.auto

    import attnflow as af

    class EveryStep(tqdm.auto.tqdm):  # redraw at every update, not every 0.1 s
        def __init__(self, *args, **kwargs):
            super().__init__(*args, mininterval=0, miniters=1e-9, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", EveryStep)
    af.solve(af.SelfAttention(beta=1.0), af.uniform_sphere(1, 4, 3, seed=0), 0.3, dt=0.1, progress=True)
    err = capsys.readouterr().err
    assert "t = 0.3/0.3" in err and "0000000" not in err  # 0.1 + 0.1 + 0.1 = 0.30000000000000004
