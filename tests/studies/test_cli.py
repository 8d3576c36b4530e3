"""The ``attnflow`` command line: simulate / info / plot, TOML configs, and user errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from particles import gram
from studies.cli import main
from studies.store import read_run
from tests.exact import equiangular_g

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "sa --n 16 --d 16 --beta 4 --init orthogonal --t-end 4 --dt 0.01 --method rk4 --backend numba --save-times 1,2,4"


def _sim(tmp_path, args: str, out="run.h5"):
    return main(["simulate", *args.split(), "--out", str(tmp_path / out)])


def _one_line_error(capsys, rc, *needles):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for s in needles:
        assert s in err, (s, err)
    return err


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run.h5"
    assert main(["simulate", *EXAMPLE.split(), "--out", str(out)]) == 0
    return out


def test_example_command_matches_the_equiangular_ode(example_run, capsys):
    run = read_run(example_run)
    assert run.complete and run.attrs["backend"] == "numba" and run.attrs["integrator"] == "rk4"
    np.testing.assert_array_equal(run.t, [1.0, 2.0, 4.0])
    assert run.state.shape == (3, 1, 16, 16)
    # An orthogonal start stays equiangular; g(t) solves GLPR eq. (6.9).
    g = equiangular_g("sa", 4.0, 16, 0.0, run.t)
    G = gram(run.state[:, 0])
    off = ~np.eye(16, dtype=bool)
    np.testing.assert_allclose(G[:, off], np.broadcast_to(g[:, None], (3, off.sum())), atol=1e-6)
    np.testing.assert_allclose(np.diagonal(G, axis1=1, axis2=2), 1.0, atol=1e-12)
    assert main(["info", str(example_run)]) == 0
    text = capsys.readouterr().out
    assert "status: complete" in text and "x " in text and "(3, 1, 16, 16)" in text and "energy" in text


def test_plot_writes_png(example_run, tmp_path, capsys):
    png = tmp_path / "fig.png"
    assert main(["plot", str(example_run), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # d = 2 with a batch, states not stored: the figure still draws from the stored observables.
    assert _sim(tmp_path, "usa --n 6 --d 2 --beta 1 --t-end 2 --dt 0.05 --batch 3 --no-states", "c.h5") == 0
    run = read_run(tmp_path / "c.h5")
    assert run.state is None and run.observables["pair_histogram"].shape == (101, 3, 50)
    assert main(["plot", str(tmp_path / "c.h5"), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 20_000


def test_toml_config_and_flag_precedence(tmp_path):
    x0 = np.random.default_rng(0).standard_normal((5, 3))
    np.save(tmp_path / "x0.npy", x0)
    (tmp_path / "run.toml").write_text(
        'model = "usa"\nbeta = 2.5\nt-end = 1.0\ndt = 0.1\ninit-file = "x0.npy"\nnormalize = true\n'
        'observables = ["energy", "cluster_count"]\nsave_times = [0.5, 1.0]\nV = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]\n'
    )
    rc = main(["simulate", "usa", "--config", str(tmp_path / "run.toml"), "--dt", "0.05", "--out", str(tmp_path / "r.h5")])
    assert rc == 0
    run = read_run(tmp_path / "r.h5")
    assert run.attrs["dt"] == 0.05 and run.params["beta"] == 2.5  # the flag beats the file
    assert run.attrs["n_steps"] == 20 and run.attrs["init"].endswith("x0.npy")
    np.testing.assert_allclose(np.asarray(run.params["V"]).reshape(3, 3), -np.eye(3))
    assert sorted(run.observables) == ["cluster_count", "energy"]
    # V = -I: the energy never increases (GLPR section 3).
    e = run.observables["energy"][:, 0]
    assert e[1] <= e[0]


def test_noisy_run_is_reproducible_and_uses_an_sde_stepper(tmp_path):
    args = "sa --kappa 4 --n 5 --d 3 --t-end 0.5 --dt 0.01 --batch 2 --n-saves 6 --seed 11"
    assert _sim(tmp_path, args, "a.h5") == 0 and _sim(tmp_path, args, "b.h5") == 0
    a, b = read_run(tmp_path / "a.h5"), read_run(tmp_path / "b.h5")
    assert a.attrs["model"] == "noisy-sa" and a.attrs["integrator"] == "stratonovich-heun"
    np.testing.assert_allclose(a.t, np.linspace(0, 0.5, 6), atol=1e-12)
    np.testing.assert_array_equal(a.state, b.state)
    assert np.abs(a.state[-1, 0] - a.state[-1, 1]).max() > 1e-3  # independent noise per system
    np.testing.assert_allclose(np.linalg.norm(a.state, axis=-1), 1.0, atol=1e-12)


BAD = [
    ("sa --n -5", "'n'"),
    ("sa --n=0", "'n'"),
    ("sa --dt 0", "'dt'"),
    ("sa --t-end -1", "'t-end'"),
    ("sa --method rk7", "'method'"),
    ("sa --backend cuda-magic", "'backend'"),
    ("sa --dtype float16", "'dtype'"),
    ("sa --beta nan", "'beta'"),
    ("sa --init spiral", "'init'"),
    ("sa --save-times 2,1", "'save-times'"),
    ("sa --observables energy,nonsense", "'observables'"),
    ("sa --kappa 2 --method rk4", "'method'"),
    ("sa --init orthogonal --n 5 --d 3", "'d'"),
    ("sa --config {tmp}/missing.toml", "'config'"),
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, args, needle):
    rc = _sim(tmp_path, args.format(tmp=tmp_path))
    _one_line_error(capsys, rc, needle)
    assert not (tmp_path / "run.h5").exists()


def test_bad_files_exit_2_with_one_line(tmp_path, capsys):
    np.save(tmp_path / "long.npy", 2.0 * np.eye(3))
    _one_line_error(capsys, _sim(tmp_path, f"sa --init-file {tmp_path}/long.npy"), "'init-file'", "normalize")
    assert _sim(tmp_path, f"sa --init-file {tmp_path}/long.npy --normalize --t-end 0.1") == 0
    np.testing.assert_allclose(read_run(tmp_path / "run.h5").state[0, 0], np.eye(3))
    _one_line_error(capsys, _sim(tmp_path, "sa"), "'out'", "--overwrite")  # run.h5 exists now
    (tmp_path / "text.npy").write_text("1 2 3\n")
    _one_line_error(capsys, _sim(tmp_path, f"sa --init-file {tmp_path}/text.npy", "x.h5"), "'init-file'", "not a valid")
    np.save(tmp_path / "v.npy", np.zeros(3))
    _one_line_error(capsys, _sim(tmp_path, f"sa --init-file {tmp_path}/v.npy", "x.h5"), "'init-file'")
    np.save(tmp_path / "q.npy", np.ones((2, 3)))
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    _one_line_error(capsys, _sim(tmp_path, f"sa --Q {tmp_path}/q.npy --K {tmp_path}/k.npy", "x.h5"), "'K'")
    _one_line_error(capsys, _sim(tmp_path, f"sa --Q {tmp_path}/nothere.npy", "x.h5"), "'Q'", "no such file")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "toml,needle",
    [
        ("beta = 1\nbogus = 3\n", "unknown key 'bogus'"),
        ("beta = [1\n", "not valid TOML"),
        ("n = 4.5\n", "'n'"),
        ("causal = 1\n", "'causal'"),
        ('model = "usa"\n', "'model'"),
        ("Q = [[1, 0, 0], [0, 1, 0]]\nK = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n", "'K'"),
    ],
)
def test_bad_toml_exit_2_with_one_line(tmp_path, capsys, toml, needle):
    (tmp_path / "c.toml").write_text(toml)
    _one_line_error(capsys, _sim(tmp_path, f"sa --config {tmp_path}/c.toml"), needle)


def test_info_and_plot_errors(tmp_path, capsys):
    _one_line_error(capsys, main(["info", str(tmp_path / "none.h5")]), "no such file")
    (tmp_path / "junk.h5").write_text("junk")
    _one_line_error(capsys, main(["info", str(tmp_path / "junk.h5")]), "'path'")
    _one_line_error(capsys, main(["plot", str(tmp_path / "junk.h5")]), "'path'")


def _console():
    script = shutil.which("attnflow", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "studies.cli"]


def test_console_script(tmp_path, example_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([*_console(), "simulate", "sa", "--dt", "0", "--out", str(tmp_path / "x.h5")],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "'dt'" in bad.stderr
    ok = subprocess.run([*_console(), "info", str(example_run)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "status: complete" in ok.stdout
    with h5py.File(example_run, "r") as f:
        assert f.attrs["status"] == "complete"
