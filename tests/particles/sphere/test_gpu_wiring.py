"""The CUDA wiring of the torch backend, checked on the CPU: dispatch functions on CPU tensors,
device-kept saves, device-side validation of the initial state, and bad input."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from integrators import solve  # noqa: E402
from integrators.device import check_device_state  # noqa: E402
from integrators.backends import TorchBackend  # noqa: E402
from particles import SelfAttention, uniform_sphere  # noqa: E402
from particles.sphere._cuda_dispatch import CudaEulerStep, _sdpa_field, field_path  # noqa: E402
from integrators.validation import ParameterError  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_names_the_device():
    x = uniform_sphere(batch=1, n=4, d=3, seed=0)
    with pytest.raises(ParameterError, match="device"):
        solve(SelfAttention(beta=1.0), x, 0.1, dt=0.05, method="euler", backend="torch", device="cuda")


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_field_matches_reference(causal):
    rng = np.random.default_rng(0)
    Q, K = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    for model in (SelfAttention(beta=2.0, causal=causal, heads=3), SelfAttention(beta=1.0, Q=Q, K=K, causal=causal)):
        x = uniform_sphere(batch=2, n=19, d=5, seed=1)
        ref = model.drift(0.0, x)
        got = _sdpa_field(model, 0.0, torch.from_numpy(x).float()).double().numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
        assert field_path(model, torch.zeros(1, 2, 5)) == "sdpa"
    assert field_path(SelfAttention(normalization="usa"), torch.zeros(1, 2, 5)) != "sdpa"


def test_cuda_euler_step_fallbacks_match_numpy(monkeypatch):
    """Without the Triton kernel the CUDA Euler step falls back to the fused torch step or the field."""
    from particles import _triton_build

    monkeypatch.setattr(_triton_build, "triton_available", lambda: False)
    x = uniform_sphere(batch=2, n=12, d=4, seed=2)
    for model in (SelfAttention(beta=2.0), SelfAttention(beta=2.0, V=-np.eye(4), normalization="usa")):
        ref = solve(model, x, 0.2, dt=0.1, method="euler", backend="numpy").final
        step = CudaEulerStep(model, None)
        y = torch.from_numpy(x)
        for _ in range(2):
            y = step(0.0, y, 0.1)
        np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["fused-torch", "field"])
def test_cuda_euler_segments_without_triton_take_all_their_steps(monkeypatch, path):
    """``segment(t, x, dt, m)``, which solve calls between saves, on the two paths without the
    Triton kernel (its own path: tests/particles/sphere/test_triton_euler.py): m steps, the numpy answer."""
    from particles import _triton_build
    from particles.sphere._fused import TorchEulerStep

    monkeypatch.setattr(_triton_build, "triton_available", lambda: False)
    model = SelfAttention(beta=2.0, normalization="usa", causal=True)
    x = uniform_sphere(batch=2, n=9, d=4, seed=3)
    ref = solve(model, x, 0.5, dt=0.1, method="euler", backend="numpy").final
    step = CudaEulerStep(model, TorchEulerStep(model) if path == "fused-torch" else None)
    y = step.segment(0.0, torch.from_numpy(x), 0.1, 3)
    y = step.segment(0.3, y, 0.1, 2)
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=1e-12)


def test_device_saves_and_tensor_initial_state():
    model = SelfAttention(beta=1.5)
    x = uniform_sphere(batch=2, n=6, d=3, seed=3)
    ref = solve(model, x, 0.3, dt=0.1, method="euler", backend="numpy", save_at=4)
    got = solve(model, torch.from_numpy(x), 0.3, dt=0.1, method="euler", backend="torch", save_at=4, save_states="device")
    assert isinstance(got.x, torch.Tensor) and got.x.shape == (4, 2, 6, 3)
    np.testing.assert_allclose(got.x.numpy(), ref.x, rtol=0, atol=1e-12)
    with pytest.raises(ParameterError, match="save_states"):
        solve(model, x, 0.3, dt=0.1, method="euler", backend="numpy", save_states="device")


def test_device_state_validation():
    """The device-side check of the initial state (run here on a CPU tensor): same rules as check_unit."""
    be = TorchBackend()
    model = SelfAttention(beta=1.0)
    x = torch.from_numpy(uniform_sphere(batch=1, n=5, d=3, seed=4))
    assert torch.equal(check_device_state(model, x[0], False, be), x)
    with pytest.raises(ParameterError, match="x0"):
        check_device_state(model, 2 * x, False, be)
    torch.testing.assert_close(check_device_state(model, 2 * x, True, be), x, rtol=0, atol=1e-15)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ParameterError, match="NaN"):
        check_device_state(model, bad, False, be)
    with pytest.raises(ParameterError, match="dimension"):
        check_device_state(SelfAttention(V=np.eye(4)), x, False, be)
    # a float32 state normalised in float32 is unit to float32 rounding: accepted
    x32 = torch.nn.functional.normalize(torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert check_device_state(model, x32, False, TorchBackend("float32")).dtype == torch.float32
