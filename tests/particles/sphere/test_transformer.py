"""The finite transformer converges to the flow as the number of layers grows.

post-LN, x <- LN(x + h A(x)), is Euler + renormalisation of the GLPR flow: order 1.
pre-LN, z <- z + h A(LN(z)), is Euler for z' = A(z/|z|), i.e. for
theta' = (1/r) P_theta A(theta), r' = <theta, A(theta)> (particles.PreLNFlow): order 1.
"""

import numpy as np
import pytest
import torch

from integrators import solve
from particles import DiscreteTransformer, ParameterError, PiecewiseConstant, PreLNFlow, SelfAttention, uniform_sphere

T = 1.0
LAYERS = (16, 32, 64, 128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fields():
    rng = np.random.default_rng(5)
    d = 4
    Q, K = rng.standard_normal((2, 2, 3, d)) / 2
    V = rng.standard_normal((2, d, d)) / 2
    layer_Q = PiecewiseConstant(rng.standard_normal((2, d, d)) / 2, breaks=[0.5])
    return {
        "sa-2heads-QKV": SelfAttention(beta=1.5, Q=Q, K=K, V=V),
        "usa-causal": SelfAttention(beta=1.0, normalization="usa", causal=True),
        "usa-meta-V": SelfAttention(beta=2.0, normalization="usa-meta", V=V[0]),
        "sa-per-layer-Q": SelfAttention(beta=1.0, Q=layer_Q, K=np.eye(d)),
    }


FIELDS = _fields()


def _slope(errs):
    h = T / np.asarray(LAYERS, dtype=float)
    return np.polyfit(np.log(h), np.log(errs), 1)[0]


@pytest.mark.parametrize("name", list(FIELDS))
def test_torch_attention_equals_the_model_field(name):
    att = FIELDS[name]
    x = torch.as_tensor(uniform_sphere(3, 7, 4, seed=1))
    tr = DiscreteTransformer(att, 4, T)
    for t in (0.0, 0.75):
        np.testing.assert_allclose(tr.attend(t, x).numpy(), att.attention(t, x).numpy(), atol=1e-13)


@pytest.mark.parametrize("name", list(FIELDS))
def test_post_ln_converges_to_the_flow_at_order_one(name):
    att = FIELDS[name]
    x0 = uniform_sphere(3, 6, 4, seed=2)
    ref = solve(att, x0, T, dt=1e-3, method="rk4").final
    errs = [np.abs(DiscreteTransformer(att, L, T)(x0).numpy() - ref).max() for L in LAYERS]
    assert abs(_slope(errs) - 1.0) < 0.15, errs
    assert errs[-1] < 0.02 and errs[-1] < errs[0] / 6


@pytest.mark.parametrize("name", ["sa-2heads-QKV", "usa-causal"])
def test_pre_ln_converges_to_the_direction_radius_ode(name):
    att = FIELDS[name]
    rng = np.random.default_rng(3)
    z0 = uniform_sphere(3, 6, 4, seed=4) * rng.uniform(0.5, 2.0, size=(3, 6, 1))
    limit = PreLNFlow(att)
    theta, r = limit.split(solve(limit, limit.initial_state(z0), T, dt=1e-3, method="rk4").final)
    errs = []
    for L in LAYERS:
        z = DiscreteTransformer(att, L, T, norm="pre")(z0).numpy()
        rz = np.linalg.norm(z, axis=-1)
        errs.append(max(np.abs(z / rz[..., None] - theta).max(), np.abs(rz - r).max()))
    assert abs(_slope(errs) - 1.0) < 0.15, errs
    assert errs[-1] < 0.02
    # The statement has content: the directions do not follow the post-LN (GLPR) flow.
    glpr = solve(att, z0 / np.linalg.norm(z0, axis=-1, keepdims=True), T, dt=1e-3, method="rk4").final
    assert np.abs(glpr - theta).max() > 20 * errs[-1]


def test_pre_ln_limit_is_the_residual_ode():
    """(r theta)' = r' theta + r theta' equals A(theta): the (theta, r) system is z' = A(z/|z|)."""
    att = FIELDS["sa-2heads-QKV"]
    limit = PreLNFlow(att)
    z = uniform_sphere(2, 5, 4, seed=6) * np.random.default_rng(6).uniform(0.3, 3.0, size=(2, 5, 1))
    y = limit.initial_state(z)
    f = limit.drift(0.2, y)
    theta, r = limit.split(y)
    zdot = r[..., None] * f[..., :-1] + f[..., -1:] * theta
    np.testing.assert_allclose(zdot, att.attention(0.2, theta), atol=1e-13)
    np.testing.assert_allclose(np.sum(theta * f[..., :-1], axis=-1), 0.0, atol=1e-13)  # tangent


def test_float32_and_trajectory_shape():
    att = FIELDS["usa-causal"]
    x0 = uniform_sphere(2, 5, 4, seed=7)
    tr = DiscreteTransformer(att, 8, T, dtype="float32")
    traj = tr.trajectory(x0)
    assert traj.shape == (9, 2, 5, 4) and traj.dtype == torch.float32
    np.testing.assert_allclose(traj[0].numpy(), x0, atol=1e-7)
    np.testing.assert_allclose(torch.linalg.vector_norm(traj, dim=-1).numpy(), 1.0, atol=1e-6)
    ref = DiscreteTransformer(att, 8, T)(x0).numpy()
    np.testing.assert_allclose(traj[-1].numpy(), ref, atol=1e-5)
    # Causal mask, V = I: the first token never moves.
    np.testing.assert_allclose(traj[:, :, 0].numpy(), np.broadcast_to(x0[:, 0], (9, 2, 4)), atol=1e-6)


def test_bad_input():
    att = SelfAttention()
    with pytest.raises(ParameterError, match="'layers'"):
        DiscreteTransformer(att, 0)
    with pytest.raises(ParameterError, match="'norm'"):
        DiscreteTransformer(att, 4, norm="mid")
    with pytest.raises(ParameterError, match="'x0'"):
        DiscreteTransformer(att, 4)(2 * uniform_sphere(1, 3, 3, seed=0))
    with pytest.raises(ParameterError, match="'attention'"):
        DiscreteTransformer(SelfAttention(projected=False), 4)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    att = FIELDS["sa-2heads-QKV"]
    x0 = uniform_sphere(4, 16, 4, seed=8)
    cpu = DiscreteTransformer(att, 32, T)(x0).numpy()
    gpu = DiscreteTransformer(att, 32, T, device="cuda")(x0)
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-12)
