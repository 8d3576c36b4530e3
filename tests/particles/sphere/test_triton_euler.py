"""The fused Triton Euler + renormalise kernel against numpy Euler + retraction, under TRITON_INTERPRET=1.

CPU tensors run the kernel in Triton's interpreter; skipped where triton is not installed.
Several steps per launch (the ping-pong slots and the barrier path) and one step per
launch through the solve-facing step object.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from integrators import solve  # noqa: E402
from particles import SelfAttention, uniform_sphere  # noqa: E402
from particles.sphere._triton_euler import TritonEulerStep, euler_steps  # noqa: E402
from integrators.validation import ParameterError  # noqa: E402


def _numpy_euler(model, x, dt, steps):
    return solve(model, x, steps * dt, dt=dt, method="euler", backend="numpy").final


@pytest.mark.parametrize("normalization", ["sa", "usa", "usa-meta"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [37, 64])
def test_several_steps_per_launch_match_numpy(normalization, causal, n):
    model = SelfAttention(beta=2.0, normalization=normalization, causal=causal, heads=2)
    x = uniform_sphere(batch=3, n=n, d=5, seed=n)
    ref = _numpy_euler(model, x, 0.05, 3)
    got = euler_steps(model, torch.from_numpy(x), 0.05, steps=3, block_m=16, block_n=16).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_float32_and_unprojected():
    x = uniform_sphere(batch=2, n=37, d=6, seed=1)
    model = SelfAttention(beta=3.0)
    ref = _numpy_euler(model, x, 0.1, 2)
    got = euler_steps(model, torch.from_numpy(x).float(), 0.1, steps=2, block_m=16, block_n=32).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    flat = SelfAttention(beta=0.5, normalization="usa", projected=False)
    ref = _numpy_euler(flat, x, 0.1, 2)
    got = euler_steps(flat, torch.from_numpy(x), 0.1, steps=2).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_step_object_chains_one_launch_per_step():
    """The step ``solve`` takes: results fed back in, buffers reused, state never overwritten early."""
    model = SelfAttention(beta=1.0, causal=True)
    x = uniform_sphere(batch=2, n=20, d=4, seed=5)
    step = TritonEulerStep(model)
    y = torch.from_numpy(x)
    keep = []
    for _ in range(4):
        y = step(0.0, y, 0.1)
        keep.append(y)
    np.testing.assert_allclose(keep[-1].numpy(), _numpy_euler(model, x, 0.1, 4), rtol=0, atol=1e-12)
    np.testing.assert_allclose(keep[-2].numpy(), _numpy_euler(model, x, 0.1, 3), rtol=0, atol=1e-12)


def test_step_object_segments_take_several_steps_per_launch():
    """``segment(t, x, dt, m)``: m steps in one launch, chained like single steps; the CUDA
    dispatcher solve gets (CudaEulerStep) hands its segments to it."""
    from particles.sphere._cuda_dispatch import CudaEulerStep

    model = SelfAttention(beta=2.0, normalization="usa")
    x = uniform_sphere(batch=2, n=9, d=4, seed=2)
    for step in (TritonEulerStep(model), CudaEulerStep(model, None)):
        y = step.segment(0.0, torch.from_numpy(x), 0.1, 3)
        z = step.segment(0.3, y, 0.1, 2)  # given its own result back: writes the other slot
        np.testing.assert_allclose(y.numpy(), _numpy_euler(model, x, 0.1, 3), rtol=0, atol=1e-12)
        np.testing.assert_allclose(z.numpy(), _numpy_euler(model, x, 0.1, 5), rtol=0, atol=1e-12)
    assert step.triton._buf[0] is not None  # the dispatcher ran the Triton kernel


def test_ineligible_model_and_bad_dtype_name_the_parameter():
    x = torch.from_numpy(uniform_sphere(batch=1, n=8, d=3, seed=0))
    with pytest.raises(ParameterError, match="model"):
        euler_steps(SelfAttention(beta=1.0, V=np.eye(3)), x, 0.1)
    with pytest.raises(ParameterError, match="dtype"):
        euler_steps(SelfAttention(beta=1.0), x.half(), 0.1)
