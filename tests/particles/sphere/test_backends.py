"""Backends agree: numba and torch give the numpy reference's drift and trajectories.

The contract of STYLE.md item 4 ("two kernels per model, one truth"): for the
same initial data and method, the numba kernels (per-system and streamed
flash kernels, float64 and float32) and the torch backend reproduce the
array-API reference to 1e-10 in float64 and ~1e-5 in float32, through the
drift and through ``solve``; the fused Euler path equals the generic one to
1e-12; a long sequence (streamed softmax, no n x n matrix) equals a dense
computation.
"""

from __future__ import annotations

import numpy as np
import pytest

from integrators import solve
from integrators.backends import NumbaBackend, TorchBackend
from particles import FeedForward, PiecewiseConstant, SelfAttention, uniform_sphere

torch = pytest.importorskip("torch")

D = 5


def _rng(seed):
    return np.random.default_rng(seed)


def _configs() -> dict[str, SelfAttention]:
    r = _rng(7)
    H, dk = 2, 3
    Q, K = r.standard_normal((H, dk, D)) / np.sqrt(D), r.standard_normal((H, dk, D)) / np.sqrt(D)
    V = r.standard_normal((H, D, D)) / np.sqrt(D)
    layers = PiecewiseConstant(r.standard_normal((3, D, D)) / np.sqrt(D), breaks=[0.2, 0.35])
    ffn = FeedForward(w=r.standard_normal((D, 4)) / 2, a=r.standard_normal((4, D)) / 2, b=r.standard_normal(4) / 2)
    return {
        "sa": SelfAttention(beta=2.0),
        "usa": SelfAttention(beta=2.0, normalization="usa"),
        "usa-meta": SelfAttention(beta=2.0, normalization="usa-meta"),
        "sa-causal": SelfAttention(beta=3.0, causal=True),
        "usa-causal-heads": SelfAttention(beta=1.0, normalization="usa", causal=True, heads=2),
        "multihead-rect-qk-v": SelfAttention(beta=1.5, Q=Q, K=K, V=V),
        "ffn": SelfAttention(beta=1.0, V=-np.eye(D), ffn=ffn),
        "piecewise-q": SelfAttention(beta=2.0, Q=layers, normalization="usa-meta"),
        "unprojected": SelfAttention(beta=0.5, projected=False, V=0.3 * np.eye(D)),
    }


CONFIGS = _configs()


def _x0(batch=2, n=9, seed=3):
    # n = 9: not a multiple of the kernels' 4 x 4 blocks, so the remainder loops run too
    return uniform_sphere(batch, n, D, seed=seed)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_drift_numba_torch_match_numpy(name):
    model, x = CONFIGS[name], _x0()
    for t in (0.1, 0.3):  # two layers of the piecewise-constant Q
        ref = model.drift(t, x)
        assert _rel(model.numba_drift(t, x), ref) < 1e-12
        assert _rel(model.drift(t, torch.from_numpy(x)).numpy(), ref) < 1e-12


@pytest.mark.parametrize("method", ["rk4", "euler"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_trajectories_match_numpy(name, method):
    model, x0 = CONFIGS[name], _x0()
    kw = {"dt": 0.02, "method": method, "save_at": [0.0, 0.2, 0.5]}
    ref = solve(model, x0, 0.5, backend="numpy", **kw).x
    for backend in ("numba", "torch"):
        sol = solve(model, x0, 0.5, backend=backend, **kw)
        assert sol.x.dtype == np.float64
        assert _rel(sol.x, ref) < 1e-10, backend


@pytest.mark.parametrize("name", ["sa", "sa-causal", "multihead-rect-qk-v", "ffn"])
def test_float32_close_to_float64(name):
    model, x0 = CONFIGS[name], _x0()
    ref_drift = model.drift(0.0, x0)
    x32 = x0.astype(np.float32)
    d32 = model.numba_drift(0.0, x32)
    assert d32.dtype == np.float32
    assert _rel(d32, ref_drift) < 1e-5
    assert _rel(model.drift(0.0, torch.from_numpy(x32)).numpy(), ref_drift) < 1e-5
    ref = solve(model, x0, 0.5, dt=0.05, method="rk4").x
    for backend in ("numba", "torch"):
        sol = solve(model, x0, 0.5, dt=0.05, method="rk4", backend=backend, dtype="float32")
        assert _rel(sol.x, ref) < 1e-5, backend


def _dense_attention(x, beta, normalization, causal):
    """Textbook dense form of the (projected) field for one system: the full n x n matrix."""
    s = beta * (x @ x.T)
    if normalization == "usa-meta":
        s = s - beta
    mask = np.tril(np.ones(s.shape, dtype=bool)) if causal else np.ones(s.shape, dtype=bool)
    if normalization == "sa":
        s = np.where(mask, s, -np.inf)
        w = np.exp(s - s.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
    else:
        w = np.where(mask, np.exp(s), 0.0) / x.shape[0]
    y = w @ x
    return y - np.sum(x * y, axis=1, keepdims=True) * x


@pytest.mark.parametrize(
    "normalization, causal, beta", [("sa", False, 9.0), ("sa", True, 4.0), ("usa", False, 1.0), ("usa-meta", True, 3.0)]
)
def test_long_sequence_streamed_matches_dense(normalization, causal, beta):
    """n = 3000 runs the flash kernel (key blocks of 512, online max/sum rescaling)."""
    x = uniform_sphere(1, 3000, 3, seed=11)
    model = SelfAttention(beta=beta, normalization=normalization, causal=causal)
    ref = _dense_attention(x[0], beta, normalization, causal)
    assert _rel(model.numba_drift(0.0, x)[0], ref) < 1e-12
    got32 = model.numba_drift(0.0, x.astype(np.float32))[0]
    assert _rel(got32, ref) < 1e-4  # float32 sums of 3000 terms


def test_flash_and_per_system_kernels_agree(monkeypatch):
    """The same field through both numba kernels (chosen by sequence length)."""
    import particles.sphere._numba_kernels as kernels

    model = CONFIGS["multihead-rect-qk-v"]
    x = _x0(batch=3, n=70)
    small = model.numba_drift(0.0, x)
    monkeypatch.setattr(kernels, "SMALL_N", 8)
    flash = model.numba_drift(0.0, x)
    assert _rel(flash, small) < 1e-13
    assert _rel(flash, model.drift(0.0, x)) < 1e-12


FUSABLE = {k: CONFIGS[k] for k in ("sa", "usa", "usa-meta", "sa-causal", "usa-causal-heads")}
FUSABLE["unprojected"] = SelfAttention(beta=0.5, projected=False)


@pytest.mark.parametrize("name", list(FUSABLE))
def test_fused_euler_equals_generic_euler(name):
    model, x0 = FUSABLE[name], _x0(batch=3, n=12)
    for fused_backend, plain_backend in [
        (NumbaBackend("float64"), NumbaBackend("float64", fused=False)),
        (TorchBackend("float64"), TorchBackend("float64", fused=False)),
    ]:
        assert fused_backend.fused_step(model, _stepper("euler")) is not None
        kw = {"dt": 0.05, "method": "euler", "save_at": [0.0, 0.5, 1.0]}
        fused = solve(model, x0, 1.0, backend=fused_backend, **kw).x
        plain = solve(model, x0, 1.0, backend=plain_backend, **kw).x
        assert _rel(fused, plain) < 1e-12, fused_backend.name
    assert np.array_equal(x0, _x0(batch=3, n=12))  # the fused path never writes into its input


def _stepper(name):
    from integrators import get_stepper

    return get_stepper(name)


def test_fused_step_chains_in_place_and_solve_keeps_exit_semantics():
    from integrators import get_stepper

    model, x0 = FUSABLE["sa"], _x0(batch=3, n=12)
    for backend in (NumbaBackend("float64"), TorchBackend("float64")):
        step = backend.fused_step(model, get_stepper("euler"))
        x = backend.asarray(x0)
        y1 = step(0.0, x, 0.1)
        y2 = step(0.1, y1, 0.1)  # its own array back: numba updates it in place, torch writes its other one
        y3 = step(0.2, y2, 0.1)
        assert (y2 is y1) if backend.name == "numba" else (y3 is y1 and y2 is not y1 and y2 is not x)
        ref = solve(model, x0, 0.3, dt=0.1, method="euler").x[-1]
        assert _rel(backend.to_numpy(y3), ref) < 1e-12
    # exit handling needs the previous state, so solve then takes the generic path
    kw = {"dt": 0.05, "method": "euler", "save_at": [0.0, 1.0]}
    a = solve(model, x0, 1.0, backend="numba", exit_threshold=10.0, **kw)
    assert _rel(a.x, solve(model, x0, 1.0, **kw).x) < 1e-12 and not a.exited.any()


def test_fused_path_only_where_it_applies():
    be = NumbaBackend("float64")
    assert be.fused_step(CONFIGS["sa"], _stepper("rk4")) is None
    assert be.fused_step(CONFIGS["multihead-rect-qk-v"], _stepper("euler")) is None
    assert be.fused_step(CONFIGS["ffn"], _stepper("euler")) is None
    assert NumbaBackend("float64", fused=False).fused_step(CONFIGS["sa"], _stepper("euler")) is None


def test_identity_parameters_read_the_state_without_copies():
    from particles.sphere._numba_kernels import _stack

    x = _x0()
    assert np.shares_memory(_stack(x, None), x)


def test_vectorised_exp_matches_numpy():
    import numba as nb

    from particles.sphere._numba_tools import FASTMATH, fexp

    @nb.njit(fastmath=FASTMATH)  # the kernels' flags
    def vexp(a):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = fexp(a[i])
        return out

    a = np.concatenate([np.linspace(-708.0, 709.7, 200_001), _rng(0).uniform(-40, 5, 100_000)])
    assert np.max(np.abs(vexp(a) / np.exp(a) - 1)) < 4e-15
    edge = vexp(np.array([-800.0, 710.0, np.inf, -np.inf, np.nan, 0.0]))
    assert edge[0] == 0.0 and edge[1] == np.inf and edge[2] == np.inf and edge[3] == 0.0
    assert np.isnan(edge[4]) and edge[5] == 1.0


@pytest.mark.gpu
def test_torch_cuda_matches_numpy():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for name in ("sa", "sa-causal", "multihead-rect-qk-v", "ffn"):
        model, x0 = CONFIGS[name], _x0()
        ref = solve(model, x0, 0.5, dt=0.02, method="rk4").x
        sol = solve(model, x0, 0.5, dt=0.02, method="rk4", backend="torch", device="cuda")
        assert _rel(sol.x, ref) < 1e-10, name
    model = CONFIGS["sa"]
    ref = solve(model, x0, 0.5, dt=0.05, method="euler").x
    sol = solve(model, x0, 0.5, dt=0.05, method="euler", backend="torch", device="cuda")  # fused path on the GPU
    assert _rel(sol.x, ref) < 1e-10


@pytest.mark.slow
def test_flow_benchmark_quick_writes_every_ratio(tmp_path):
    from studies.benchmarks.bench_flow import main

    out = tmp_path / "flow.json"
    assert main(["--quick", "--out", str(out)]) == 0
    import json

    r = json.loads(out.read_text())
    assert set(r["targets"]) >= {
        "drift_numba_time_over_sdpa",
        "drift_numpy_dense_time_over_numba",
        "drift_numba_flop_rate_over_gemm",
        "ensemble_numba_over_authors",
        "ensemble_torch_over_authors",
    }
    assert all(np.isfinite(v["value"]) and v["value"] > 0 for v in r["targets"].values())
    assert r["drift"]["max_abs_diff_numba_vs_dense"] < 1e-12
    assert r["ensemble"]["max_abs_diff_numba_vs_torch"] < 1e-10
    assert r["memory"]["finite"] and r["memory"]["extra_mb"] < 300


def test_row_max_is_the_maximum_and_nan_still_reaches_the_field():
    """The flash kernel's unrolled row maximum, every tail length; a NaN logit gives NaN weights."""
    from particles.sphere._numba_blocks import row_max

    rng = _rng(3)
    for lim in range(0, 21):
        row = rng.standard_normal(24)
        row[lim:] = 1e9  # past lim: never read
        assert row_max(row, lim) == (np.max(row[:lim]) if lim else -np.inf)
    assert row_max(np.full(9, -np.inf), 9) == -np.inf
    # a NaN state in a long sequence (flash kernel): the field of every token is NaN, not finite garbage
    x = uniform_sphere(1, 600, 3, seed=2)
    x[0, 17, 1] = np.nan
    assert np.all(np.isnan(SelfAttention(beta=2.0).numba_drift(0.0, x)))
