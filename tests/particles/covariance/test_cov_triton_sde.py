"""The fused Triton (PSD-)Euler-Maruyama kernel of the covariance SDEs, under TRITON_INTERPRET=1.

CPU tensors run the kernel in Triton's interpreter (skipped where triton is not installed):

* the increments it draws in-kernel are the CPU stream's (integrators._philox), bit for bit
  except tail draws (beyond the ziggurat's r), which may move by 2 ulp as in the torch stream;
* a step equals the Numba fused step on the same seed (float64, 1e-10), for every model
  family, plain and PSD, fine and coarsened paths, with the same exits;
* paths the kernel hands back (a factor or a projection needing eigh) are redone by the torch
  step with the kernel's own increment: the same numbers as the torch step alone.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from integrators import BrownianIncrements  # noqa: E402
from integrators import _philox as ph  # noqa: E402
from integrators.backends import NumbaBackend, TorchBackend  # noqa: E402
from particles.covariance import ResidualLinearSDE, ShapedAttentionSDE, ShapedBlockSDE, ShapedMLPSDE  # noqa: E402
from particles.covariance._fused import _torch_step, fused_sde_step  # noqa: E402

MODELS = {
    "block": ShapedBlockSDE(0.5, 0.8, 0.3, -1.0, heads=2),
    "attention": ShapedAttentionSDE(0.7, 1.0),
    "lnr": ShapedMLPSDE(0.2, -0.7),
    "linear": ResidualLinearSDE(0.4),
}
METHODS = {"euler-maruyama": False, "psd-euler-maruyama": True}


def _v0(batch, m, seed=0):
    r = np.random.default_rng(seed)
    A = r.standard_normal((batch, m, m)) / np.sqrt(m)
    return A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(m)


def _triton(model, noise, psd):
    step = _torch_step(model, TorchBackend(), noise, psd, use_triton=True)
    return step, lambda: step.kernels["triton"]


@pytest.mark.parametrize("factor", [1, 2])
def test_increments_are_the_cpu_stream(factor):
    model = MODELS["attention"]  # two Brownian matrices per path
    m, batch = 16, 24  # 12288 draws a step: ~150 rejected by the fast test, a few in the tail
    V0 = _v0(batch, m)
    fine = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.01 / factor, seed=7)
    noise = fine.coarsen(factor) if factor > 1 else fine
    step, kernel = _triton(model, noise, False)
    step(0.0, torch.from_numpy(V0), 0.01, 5, np.zeros(batch, bool), None)
    got, ref = kernel().last_dw.numpy(), noise(5)
    assert got.shape == ref.shape
    differ = got != ref
    # a tail draw (|z| > r, 2.6e-4 of them) may move by 2 ulp (exp and log); nothing else may move
    assert differ.sum() <= 2e-3 * ref.size
    assert np.all(np.abs(got - ref)[differ] <= 2 * factor * np.spacing(2 * ph._ZR * np.sqrt(fine.dt)))
    if factor == 1:
        assert np.all(np.abs(ref[differ]) > ph._ZR * np.sqrt(fine.dt))


#: Every model meets both steps somewhere in the default run (each model once, each step on two);
#: the other half of the matrix runs under -m slow (the interpreter takes 3-6 s a case).
_DEFAULT_CASES = {("euler-maruyama", "block"), ("euler-maruyama", "lnr"), ("psd-euler-maruyama", "attention"),
                  ("psd-euler-maruyama", "linear")}


@pytest.mark.parametrize(
    "method, name",
    [pytest.param(meth, name, marks=() if (meth, name) in _DEFAULT_CASES else pytest.mark.slow)
     for meth in sorted(METHODS) for name in sorted(MODELS)],
)
def test_step_equals_numba_fused_step(name, method):
    model = MODELS[name]
    batch, m = 12, 5
    V = _v0(batch, m, seed=1)
    noise = BrownianIncrements(tuple(model.noise_shape(V.shape)), 0.02, seed=21).coarsen(2)
    tri, _ = _triton(model, noise, METHODS[method])
    nbs = fused_sde_step(model, method, NumbaBackend(), noise)
    ex_t, ex_n = np.zeros(batch, bool), np.zeros(batch, bool)
    Vt = torch.from_numpy(V)
    for k in range(3):
        Vt, new_t = tri(0.04 * k, Vt, 0.04, k, ex_t, 1e4)
        V, new_n = nbs(0.04 * k, V, 0.04, k, ex_n, 1e4)
        assert np.array_equal(new_t, new_n)
        ex_t |= new_t
        ex_n |= new_n
        assert np.max(np.abs(Vt.numpy() - V)) <= 1e-10 * max(1.0, np.max(np.abs(V)))
        assert torch.equal(Vt, Vt.mT)  # exactly symmetric


def test_device_exit_flags_give_the_same_step():
    """Exit flags handed over as a device tensor (solve keeping them there) come back as one."""
    model = MODELS["block"]
    batch, m = 8, 4
    V0 = _v0(batch, m, seed=3) * np.linspace(0.5, 3.0, batch)[:, None, None]
    noise = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.05, seed=4)
    thr = float(np.median(np.abs(V0).max(axis=(1, 2))))
    a, _ = _triton(model, noise, True)
    b, _ = _triton(model, noise, True)
    ex_np, ex_t = np.zeros(batch, bool), torch.zeros(batch, dtype=torch.bool)
    Va = Vb = torch.from_numpy(V0)
    for k in range(2):
        Va, new_np = a(0.0, Va, 0.05, k, ex_np, thr)
        Vb, new_t = b(0.0, Vb, 0.05, k, ex_t, thr)
        assert isinstance(new_t, torch.Tensor) and np.array_equal(new_t.numpy(), new_np)
        ex_np |= new_np
        ex_t |= new_t
        assert torch.equal(Va, Vb)
    assert 0 < ex_np.sum() < batch


def test_exits_match_numba_and_stay_frozen():
    model = MODELS["attention"]
    batch, m = 10, 4
    V0 = _v0(batch, m, seed=2) * np.linspace(0.5, 3.0, batch)[:, None, None]
    noise = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.05, seed=3)
    tri, _ = _triton(model, noise, False)
    nbs = fused_sde_step(model, "euler-maruyama", NumbaBackend(), noise)
    thr = float(np.median(np.abs(V0).max(axis=(1, 2)))) * 1.05  # about half the paths leave at once
    ex_t, ex_n = np.zeros(batch, bool), np.zeros(batch, bool)
    Vt, V = torch.from_numpy(V0), V0
    for k in range(3):
        Vt, new_t = tri(0.0, Vt, 0.05, k, ex_t, thr)
        V, new_n = nbs(0.0, V, 0.05, k, ex_n, thr)
        assert np.array_equal(new_t, new_n)
        ex_t |= new_t
        ex_n |= new_n
    assert 0 < ex_t.sum() < batch
    assert np.max(np.abs(Vt.numpy() - V)) <= 1e-10 * np.max(np.abs(V))
    assert np.array_equal(Vt.numpy()[ex_t & (np.abs(V0).max(axis=(1, 2)) > thr)], V0[ex_t & (np.abs(V0).max(axis=(1, 2)) > thr)])


def test_boundary_paths_are_redone_by_the_torch_step():
    model = MODELS["linear"]
    batch, m = 6, 4
    u = np.random.default_rng(4).standard_normal((batch, m, 1))
    V0 = u @ np.swapaxes(u, -1, -2)  # rank one: no Cholesky factor, the eigen root
    V0[::2] = _v0(batch, m, seed=5)[::2]  # half of them inside the cone
    noise = BrownianIncrements(tuple(model.noise_shape(V0.shape)), 0.01, seed=9)
    tri, kernel = _triton(model, noise, True)
    ref_step = _torch_step(model, TorchBackend(), noise, True, use_triton=False)
    Y, new = tri(0.0, torch.from_numpy(V0), 0.01, 0, np.zeros(batch, bool), None)
    R, new_r = ref_step(0.0, torch.from_numpy(V0), 0.01, 0, np.zeros(batch, bool), None)
    assert not new.any() and not new_r.any()
    assert torch.allclose(Y, R, rtol=0, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(Y.numpy()) > -1e-12)


def test_used_on_cuda_only_by_default():
    from particles.covariance._triton_sde import eligible

    V = torch.eye(3, dtype=torch.float64)[None].repeat(2, 1, 1)
    assert eligible(V) and not eligible(V.float()) and not eligible(torch.eye(17, dtype=torch.float64)[None])
    model = MODELS["linear"]
    noise = BrownianIncrements(tuple(model.noise_shape(V.shape)), 0.01, seed=1)
    step = _torch_step(model, TorchBackend(), noise, False)  # auto: CPU tensors take the torch step
    step(0.0, V, 0.01, 0, np.zeros(2, bool), None)
    assert "triton" not in step.kernels


@pytest.mark.gpu
def test_cuda_kernel_follows_the_cpu_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from integrators import solve

    model = MODELS["block"]
    V0 = _v0(64, 8, seed=6)
    kw = dict(dt=0.01, method="euler-maruyama", seed=5, save_at=[0.0, 0.1], exit_threshold=1e4)
    cpu = solve(model, V0, 0.1, backend="numba", **kw)
    gpu = solve(model, torch.from_numpy(V0).cuda(), 0.1, backend="torch", device="cuda", **kw)
    assert np.array_equal(cpu.exited, gpu.exited)
    assert np.max(np.abs(np.asarray(gpu.x) - cpu.x)) <= 1e-10 * np.max(np.abs(cpu.x))
