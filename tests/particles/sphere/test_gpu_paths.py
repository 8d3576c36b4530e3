"""CUDA paths against the numpy backend (run only where CUDA is present; skipped otherwise).

Flow: the torch backend on CUDA (SDPA, the Triton field and the fused Triton Euler) against
numpy to 1e-10 in float64. SDE: a CPU run and a GPU run of one seed follow the same path
(the device Philox stream draws the CPU stream's numbers). The step loop between saves
runs without host synchronisation.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from integrators import solve  # noqa: E402
from particles import SelfAttention, uniform_sphere  # noqa: E402

pytestmark = pytest.mark.gpu

FLOWS = {
    "sa-euler-short": (SelfAttention(beta=2.0, heads=2), 48, "euler"),
    "usa-causal-euler": (SelfAttention(beta=1.0, normalization="usa", causal=True), 300, "euler"),
    "meta-rk4": (SelfAttention(beta=1.5, normalization="usa-meta"), 40, "rk4"),
    "sa-qkv-heun": (SelfAttention(beta=1.0, Q=np.eye(6)[None].repeat(2, 0), V=-np.eye(6)[None].repeat(2, 0)), 70, "heun"),
}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_on_cuda_matches_numpy(name):
    model, n, method = FLOWS[name]
    x = uniform_sphere(batch=3, n=n, d=6, seed=1)
    ref = solve(model, x, 0.3, dt=0.05, method=method, backend="numpy", save_at=3)
    got = solve(model, torch.as_tensor(x, device="cuda"), 0.3, dt=0.05, method=method, backend="torch",
                device="cuda", save_at=3, save_states="device")  # fmt: skip
    assert got.x.device.type == "cuda"
    np.testing.assert_allclose(got.x.cpu().numpy(), ref.x, rtol=0, atol=1e-10)


def test_sde_cpu_and_gpu_follow_the_same_path():
    from particles.covariance import ShapedBlockSDE

    model = ShapedBlockSDE(0.5, 0.8, 0.3, -1.0, heads=2)
    A = np.random.default_rng(0).standard_normal((256, 4, 4)) / 2
    V0 = A @ np.swapaxes(A, -1, -2) + 0.3 * np.eye(4)
    kw = dict(dt=0.01, method="psd-euler-maruyama", seed=7, save_at=5, exit_threshold=1e4)
    cpu = solve(model, V0, 0.2, backend="numba", **kw)
    gpu = solve(model, V0, 0.2, backend="torch", device="cuda", **kw)
    assert np.array_equal(cpu.exited, gpu.exited)
    np.testing.assert_allclose(gpu.x, cpu.x, rtol=0, atol=1e-10 * np.abs(cpu.x).max())


def test_flow_step_loop_does_not_synchronise(monkeypatch):
    """Armed after the one validation read-back, disarmed at solve's final synchronize: every
    step runs under set_sync_debug_mode("error"); only the exit flags' read-back at each save
    (the one read-back the contract allows) runs disarmed."""
    from integrators.backends import TorchBackend
    from integrators.exits import PathExits

    model = SelfAttention(beta=1.0)
    x = torch.as_tensor(uniform_sphere(batch=64, n=32, d=16, seed=2), device="cuda")
    kw = dict(dt=0.01, method="euler", backend="torch", device="cuda", save_at=5, save_states="device")
    solve(model, x, 0.1, **kw)  # warm-up: kernel builds
    check, sync, read = TorchBackend.check_state, TorchBackend.synchronize, PathExits.read
    seen = []

    def check_then_arm(self, *a, **k):
        out = check(self, *a, **k)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        seen.append("armed")
        return out

    def read_at_save(self):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return read(self)
        finally:
            torch.cuda.set_sync_debug_mode("error")
            seen.append("read")

    def disarm_then_sync(self):
        torch.cuda.set_sync_debug_mode("default")
        seen.append("disarmed")
        sync(self)

    monkeypatch.setattr(TorchBackend, "check_state", check_then_arm)
    monkeypatch.setattr(PathExits, "read", read_at_save)
    monkeypatch.setattr(TorchBackend, "synchronize", disarm_then_sync)
    try:
        sol = solve(model, x, 0.2, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # one read per save and one after the last
    assert seen == ["armed"] + ["read"] * 6 + ["disarmed"], seen
    assert sol.x.shape == (5, 64, 32, 16)


@pytest.mark.parametrize("method", ["rk4", "heun"])
def test_graphed_segments_match_numpy(method):
    """An explicit stepper without a fused kernel, on an autonomous field: the step loop between
    saves is replayed from a CUDA graph (meta["cuda_graph"]) and keeps the numpy answer; the host
    copies of the saves go through pinned memory."""
    model = SelfAttention(beta=1.5, V=-np.eye(6)[None])
    x = uniform_sphere(batch=4, n=20, d=6, seed=3)
    ref = solve(model, x, 0.5, dt=0.01, method=method, backend="numpy", save_at=6)
    got = solve(model, x, 0.5, dt=0.01, method=method, backend="torch", device="cuda", save_at=6)
    assert got.meta["cuda_graph"] is True
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-10)


def test_time_dependent_field_is_not_graphed():
    model = SelfAttention(beta=1.0, V=lambda t: (1 + t) * np.eye(6)[None])
    x = uniform_sphere(batch=2, n=8, d=6, seed=4)
    ref = solve(model, x, 0.3, dt=0.01, method="rk4", backend="numpy", save_at=4)
    got = solve(model, x, 0.3, dt=0.01, method="rk4", backend="torch", device="cuda", save_at=4)
    assert got.meta["cuda_graph"] is False
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-10)
