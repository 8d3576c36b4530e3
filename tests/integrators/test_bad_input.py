"""Bad input gives a clear error naming the parameter (Python API)."""

import numpy as np
import pytest

from integrators import solve
from particles import ParameterError, SelfAttention, from_file, orthogonal, uniform_sphere


def _raises(name, fn, *a, **k):
    with pytest.raises(ParameterError) as info:
        fn(*a, **k)
    assert info.value.parameter == name
    assert repr(name) in str(info.value)


def test_negative_n():
    _raises("n", uniform_sphere, 1, -3, 3)
    _raises("n", orthogonal, 1, 0, 3)


def test_nonpositive_dt_and_t_end():
    x0 = orthogonal(1, 3, 3)
    _raises("dt", solve, SelfAttention(), x0, 1.0, dt=0.0)
    _raises("dt", solve, SelfAttention(), x0, 1.0, dt=-0.1)
    _raises("t_end", solve, SelfAttention(), x0, 0.0, dt=0.1)


def test_mismatched_qkv():
    rng = np.random.default_rng(0)
    _raises("K", SelfAttention, Q=rng.standard_normal((2, 4)), K=rng.standard_normal((3, 4)))
    _raises("V", SelfAttention, V=rng.standard_normal((3, 4)))
    _raises("V", SelfAttention, Q=rng.standard_normal((2, 4)), K=rng.standard_normal((2, 4)), V=np.eye(5))
    _raises("Q", SelfAttention, Q=rng.standard_normal((2, 3, 4)), K=rng.standard_normal((3, 3, 4)))
    _raises("x0", solve, SelfAttention(V=np.eye(4)), orthogonal(1, 3, 3), 1.0, dt=0.1)


def test_unknown_method_backend_dtype():
    x0 = orthogonal(1, 3, 3)
    _raises("method", solve, SelfAttention(), x0, 1.0, dt=0.1, method="rk7")
    _raises("backend", solve, SelfAttention(), x0, 1.0, dt=0.1, backend="jax")
    _raises("dtype", solve, SelfAttention(), x0, 1.0, dt=0.1, dtype="float16")
    _raises("method", solve, SelfAttention(), x0, 1.0, dt=0.1, method="euler-maruyama")
    _raises("normalization", SelfAttention, normalization="softmax")
    _raises("beta", SelfAttention, beta=-1.0)


def test_non_unit_initial_vectors():
    x0 = 2.0 * orthogonal(1, 3, 3)
    _raises("x0", solve, SelfAttention(), x0, 1.0, dt=0.1)
    sol = solve(SelfAttention(), x0, 1.0, dt=0.1, normalize=True)
    assert np.allclose(np.linalg.norm(sol.x[0], axis=-1), 1.0)


def test_bad_files(tmp_path):
    text = tmp_path / "x.npy"
    text.write_text("not an array")
    _raises("init_file", from_file, text)
    _raises("init_file", from_file, tmp_path / "missing.npy")
    np.save(tmp_path / "bad.npy", np.ones((3, 3)))
    _raises("init_file", from_file, tmp_path / "bad.npy")
    assert from_file(tmp_path / "bad.npy", normalize=True).shape == (1, 3, 3)


def test_sde_needs_seed_and_grid():
    model = SelfAttention().with_noise(kappa=1.0)
    x0 = orthogonal(1, 3, 3)
    _raises("seed", solve, model, x0, 1.0, dt=0.1, method="euler-maruyama")
    _raises("save_at", solve, model, x0, 1.0, dt=0.1, method="euler-maruyama", seed=1, save_at=[0.25, 1.0])
    _raises("kappa", SelfAttention().with_noise, kappa=0.0)
