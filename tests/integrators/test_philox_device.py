"""The torch (any-device) Philox + ziggurat stream against the Numba stream, on CPU tensors.

Same code path as on a GPU (integrators._philox_torch); the reference is
integrators._philox.fill_normals, the stream BrownianIncrements draws.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from integrators._philox import _ZR, fill_normals  # noqa: E402
from integrators._philox_torch import device_fill, philox4x32_torch  # noqa: E402

# Random123's kat_vectors for philox4x32-10: counter, key -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_torch_philox_known_answers(ctr, key, expected):
    c = [torch.tensor([v], dtype=torch.int64) for v in ctr]
    out = philox4x32_torch(*c, *key)
    assert tuple(int(o[0]) for o in out) == expected


@pytest.mark.parametrize("k, count", [(0, 1), (2**32 + 7, 1), (11, 3)])
def test_device_stream_matches_numba_stream(k, count):
    """Every normal equal to the Numba stream's; the rare rejection branches are exercised."""
    key, rows, P, scale = (0x9E3779B9, 0x12345678), 1500, 129, 0.3  # odd P: the last block half used
    ref = fill_normals(key, k, count, scale, np.empty((rows, P)))
    got = device_fill(key, k, count, scale, rows, P, device="cpu").numpy()
    assert got.dtype == np.float64 and got.shape == (rows, P)
    if count == 1:
        z = ref / scale
        tail = np.abs(z) > _ZR  # drawn by the tail branch (the only way past r)
        assert tail.sum() >= 10  # the tail branch ran
        # the tail values pass through log(); torch's vectorised log and libm may differ in the
        # last bit on rare inputs, so they are held to 2 ulp, the rest to equality
        np.testing.assert_array_equal(got[~tail], ref[~tail])
        np.testing.assert_allclose(got[tail], ref[tail], rtol=4.5e-16, atol=0)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=4 * np.finfo(float).eps * scale * 10)


def test_device_stream_bit_for_bit_on_a_row_with_wedge_and_tail_draws():
    """Rows whose draws include wedge rejections (secondary words) are reproduced exactly."""
    key = (1, 2)
    ref = fill_normals(key, 5, 1, 1.0, np.empty((400, 64)))
    got = device_fill(key, 5, 1, 1.0, 400, 64).numpy()
    assert np.array_equal(got, ref)
    # the same row drawn alone (another batch size) gives the same numbers: a function of (k, r, j)
    assert np.array_equal(device_fill(key, 5, 1, 1.0, 3, 64).numpy(), ref[:3])


def test_fused_sde_step_with_device_draws_follows_the_numba_stream_path(monkeypatch):
    """The torch SDE step drawing on the device (forced here on the CPU) follows the same path."""
    from integrators import BrownianIncrements, solve
    from particles.covariance import ShapedBlockSDE
    from particles.covariance import _fused

    model = ShapedBlockSDE(0.5, 0.8, 0.3, -1.0, heads=2)
    A = np.random.default_rng(3).standard_normal((64, 4, 4)) / 2
    V0 = A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(4)
    path = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.01, seed=5).coarsen(2)
    kw = dict(dt=0.02, method="psd-euler-maruyama", brownian=path, save_at=3, backend="torch")
    host = solve(model, V0, 0.2, **kw)
    calls = []
    monkeypatch.setattr(_fused, "_draws_on_device", lambda device: calls.append(device) or True)
    dev = solve(model, V0, 0.2, **kw)
    assert len(calls) == 10  # every step drew through the device stream
    np.testing.assert_allclose(dev.x, host.x, rtol=0, atol=1e-12 * np.abs(host.x).max())
    assert np.array_equal(dev.exited, host.exited)
