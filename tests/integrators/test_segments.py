"""The step loop between saves as one call (integrators.segments), on the CPU.

On CUDA the segment is captured once per (steps, step size) and replayed; here capture is
impossible, so the same keyed blocks run eagerly: a block reused for a segment of another
length or step would show as a wrong state. The CUDA replay itself is tested in
tests/particles/sphere/test_gpu_paths.py.
"""

import numpy as np
import pytest
import torch

from integrators import solve
from integrators.segments import Segments
from particles import FeedForward, SelfAttention, uniform_sphere


def _shrink(t, x, h):
    return x * (1 - h) + t * 0  # x_k = x_0 (1 - h)^k: the state counts the steps taken


@pytest.mark.parametrize("use_graph", [False, True])
def test_segments_take_their_own_steps(use_graph):
    seg = Segments(_shrink, use_graph=use_graph)
    x = torch.ones(3, dtype=torch.float64)
    x = seg.run(0.0, x, 3, 0.1)  # a block for (3, 0.1)
    x = seg.run(0.3, x, 5, 0.1)  # another length: its own block
    x = seg.run(0.8, x, 5, 0.05)  # another step: its own block
    x = seg.run(1.05, x, 3, 0.1 * (1 + 1e-15))  # round-off in stop - t: the first block again
    expected = 0.9**3 * 0.9**5 * 0.95**5 * 0.9**3
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-13)
    assert seg.graphed is False  # no CUDA here
    assert len(seg._blocks) == (3 if use_graph else 0)


class _MultiShrink:
    """A fused step that takes k steps per call, as the fused Euler steps do."""

    def __init__(self):
        self.calls = []

    def __call__(self, t, x, h):
        raise AssertionError("a step with segment() is called through it")

    def segment(self, t, x, h, k):
        self.calls.append((round(t, 12), k))
        return x * (1 - h) ** k


def test_multi_step_fused_steps_take_pieces_of_the_segment():
    step = _MultiShrink()
    seg = Segments(step, use_graph=True)  # never captured: it steps itself
    x = seg.run(1.0, torch.ones(2, dtype=torch.float64), 150, 0.01)
    np.testing.assert_allclose(x.numpy(), 0.99**150, rtol=1e-13)
    M = Segments.MAX_FUSED
    assert step.calls == [(1.0, M), (round(1.0 + M * 0.01, 12), M), (round(1.0 + 2 * M * 0.01, 12), 150 - 2 * M)]
    assert seg.graphed is False and not seg._blocks


def test_autonomy_is_what_the_parameters_say():
    I = np.eye(4)
    assert SelfAttention(beta=1.0).autonomous and SelfAttention(beta=1.0, V=-I).autonomous
    assert not SelfAttention(beta=1.0, V=lambda t: (1 + t) * I).autonomous
    ffn = FeedForward(w=I, a=I)
    assert SelfAttention(beta=1.0, ffn=ffn).autonomous
    assert not SelfAttention(beta=1.0, ffn=FeedForward(w=lambda t: t * I, a=I)).autonomous


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_torch_saves_without_observables_match_numpy(method):
    """The torch path that checks and masks saves where the state lives (no observable needs the
    host) stores what the numpy backend stores, and says no graph ran on the CPU."""
    model = SelfAttention(beta=2.0, V=-np.eye(5)[None])
    x = uniform_sphere(batch=3, n=6, d=5, seed=1)
    ref = solve(model, x, 0.4, dt=0.02, method=method, backend="numpy", save_at=5)
    got = solve(model, x, 0.4, dt=0.02, method=method, backend="torch", save_at=5)
    assert isinstance(got.x, np.ndarray) and got.meta["cuda_graph"] is False
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-12)
    assert got.stats["n_steps"] == ref.stats["n_steps"] == 20


@pytest.mark.parametrize("save_states", [True, "device"])
def test_torch_ode_gone_non_finite_fails_without_observables(save_states):
    """Checked on the torch device at the saves: a non-finite ODE state fails the run (before,
    saves kept on the device stored NaN frames and called the run complete)."""
    x0 = uniform_sphere(2, 8, 3, seed=0)
    with pytest.warns(RuntimeWarning, match="solve: failed: non-finite state"):
        sol = solve(SelfAttention(beta=800.0, normalization="usa"), x0, 1.0, dt=0.01, save_at=11, backend="torch",
                    save_states=save_states)
    assert sol.status.startswith("failed: non-finite state at t=0.1") and sol.exited.all()


def test_max_steps_still_stops_a_segment():
    x0 = uniform_sphere(1, 4, 3, seed=0)
    with pytest.raises(RuntimeError, match="max_steps=10 exceeded"):
        solve(SelfAttention(beta=1.0), x0, 1.0, dt=0.01, save_at=2, max_steps=10, backend="torch")
