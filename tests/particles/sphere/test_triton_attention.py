"""The flash-style Triton attention field against the numpy reference, under TRITON_INTERPRET=1.

CPU tensors run the kernel in Triton's interpreter (the same kernel source as on CUDA);
skipped where triton is not installed. Sizes are not multiples of the tiles, so the
masked edges of the row and key tiles are exercised, with several key tiles per row.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from particles import FeedForward, SelfAttention, uniform_sphere  # noqa: E402
from particles.sphere._triton_attention import flash_attention_field, model_field  # noqa: E402
from integrators.validation import ParameterError  # noqa: E402


def _params(rng, heads, d, dk):
    Q = rng.standard_normal((heads, dk, d)) / np.sqrt(d)
    K = rng.standard_normal((heads, dk, d)) / np.sqrt(d)
    V = rng.standard_normal((heads, d, d)) / np.sqrt(d)
    return Q, K, V


def _check(model, x, dtype):
    ref = model.drift(0.0, x)  # numpy float64 reference
    xt = torch.from_numpy(x).to(dtype)
    got = model_field(model, 0.0, xt, block_m=16, block_n=16).double().numpy()
    if dtype == torch.float64:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("normalization", ["sa", "usa", "usa-meta"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [37, 64])
def test_identity_field_matches_reference(normalization, causal, n):
    x = uniform_sphere(batch=2, n=n, d=5, seed=n)
    _check(SelfAttention(beta=2.5, normalization=normalization, causal=causal, heads=2), x, torch.float64)


@pytest.mark.parametrize("normalization", ["sa", "usa"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multihead_qkv_field_matches_reference(normalization, causal, dtype):
    rng = np.random.default_rng(7)
    Q, K, V = _params(rng, heads=3, d=6, dk=4)
    model = SelfAttention(beta=1.5, Q=Q, K=K, V=V, normalization=normalization, causal=causal)
    _check(model, uniform_sphere(batch=2, n=37, d=6, seed=1), dtype)


def test_feed_forward_and_unprojected_fields():
    rng = np.random.default_rng(3)
    ffn = FeedForward(w=rng.standard_normal((4, 3)), a=rng.standard_normal((3, 4)), b=rng.standard_normal(3))
    x = uniform_sphere(batch=1, n=33, d=4, seed=2)
    _check(SelfAttention(beta=3.0, ffn=ffn), x, torch.float64)
    _check(SelfAttention(beta=0.5, projected=False, normalization="usa"), x, torch.float64)
    _check(SelfAttention(beta=4.0, normalization="sa"), x, torch.float32)


def test_default_tiles_and_one_tile():
    """The default tile choice (one tile for n <= 16) gives the same field."""
    x = uniform_sphere(batch=3, n=9, d=3, seed=4)
    model = SelfAttention(beta=1.0, causal=True)
    ref = model.drift(0.0, x)
    got = model_field(model, 0.0, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_unsupported_dtype_names_the_parameter():
    x = torch.zeros(1, 4, 3, dtype=torch.float16)
    with pytest.raises(ParameterError, match="dtype"):
        flash_attention_field(x, x[:, None], x[:, None], x[:, None], beta=1.0)
