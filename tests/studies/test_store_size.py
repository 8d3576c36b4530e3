"""HDF5 run files stay within 1.2x of their data, whatever the compression, and stay crash-safe.

Before chunks were sized for the append pattern, a gzip-compressed chunk spanning
128 saves was recompressed and reallocated at every save (SWMR appends), and the
1001-save case below (batch 4, n 32, d 3: 3 MB of data) made a 160 MB file.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from studies.cli import main
from studies.store import RunWriter, read_run
from studies.store.reader import data_bytes

ROOT = Path(__file__).resolve().parents[2]
RATIO = 1.2


def _frames(shape, saves, seed=0):
    """A random walk on the sphere, like a stored trajectory (no long runs of equal bytes to compress)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    for _ in range(saves):
        x = x + 0.01 * rng.standard_normal(shape)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        yield x


@pytest.mark.parametrize("compression", ["none", "gzip", "lzf"])
def test_1001_saves_file_within_1_2x_of_data(tmp_path, compression):
    path = tmp_path / "run.h5"
    batch, n, d, saves = 4, 32, 3, 1001
    xs = []
    with RunWriter(path, model="sa", method="rk4", dt=0.01, backend="numpy", compression=compression) as w:
        for k, x in enumerate(_frames((batch, n, d), saves)):
            xs.append(x)
            w.append(0.01 * k, x, {"energy": x[:, 0, 0].copy(), "cluster_count": np.arange(batch)})
    data = data_bytes(path)
    assert data >= saves * batch * n * d * 8
    assert os.path.getsize(path) <= RATIO * data, (os.path.getsize(path), data)
    run = read_run(path)
    assert run.status == "complete" and len(run.t) == saves
    np.testing.assert_array_equal(run.state, np.stack(xs))
    np.testing.assert_array_equal(run.observables["cluster_count"], np.tile(np.arange(batch), (saves, 1)))


def test_large_frames_compressed_once_per_save(tmp_path):
    # 16 KiB frames: one save per chunk, so gzip applies and each chunk is written once.
    path = tmp_path / "big.h5"
    with RunWriter(path, model="sa", method="rk4", dt=0.01, backend="numpy", compression="gzip") as w:
        for k, x in enumerate(_frames((8, 64, 4), 201)):
            w.append(0.01 * k, x, {"first": x[:, 0, 0].copy()})
    with h5py.File(path, "r") as f:
        assert f["x"].chunks == (1, 8, 64, 4) and f["x"].compression == "gzip"
        # A small observable shares uncompressed chunks across saves (written in place).
        assert f["first"].chunks[0] > 1 and f["first"].compression is None
    assert os.path.getsize(path) <= RATIO * data_bytes(path)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_covariance_run_file_within_1_2x_of_data(tmp_path, compression):
    out = tmp_path / "cov.h5"
    rc = main(["simulate", "shaped-block", "--batch", "16", "--t-end", "1", "--dt", "0.01", "--n-saves", "101",
               "--compression", compression, "--out", str(out)])
    assert rc == 0
    with h5py.File(out, "r") as f:
        assert f["V"].shape == (101, 16, 8, 8)
    assert os.path.getsize(out) <= RATIO * data_bytes(out), (os.path.getsize(out), data_bytes(out))


_CHILD = textwrap.dedent(
    """
    import sys, numpy as np
    from studies.store import RunWriter
    w = RunWriter(sys.argv[1], model="sa", method="rk4", dt=0.1, backend="numpy", compression="gzip")
    for k in range(10**6):
        x = np.full((4, 64, 8), float(k)) + np.arange(8)
        w.append(0.5 * k, x, {"k": np.full(4, k)})
        print(k + 1, flush=True)
    """
)


def test_killed_compressed_run_keeps_every_completed_save(tmp_path):
    path = tmp_path / "killed.h5"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    n = 0
    try:
        deadline = time.monotonic() + 60
        while n < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            n = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert n >= 5, "the child never reported its saves"
    run = read_run(path)
    k = len(run.t)
    assert run.status == "incomplete" and k >= n
    expected = np.arange(k)[:, None, None, None] + np.arange(8) + np.zeros((k, 4, 64, 8))
    np.testing.assert_array_equal(run.state, expected)
    np.testing.assert_array_equal(run.observables["k"], np.repeat(np.arange(k)[:, None], 4, axis=1))
