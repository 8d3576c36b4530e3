"""The authors' discrete transformer, bit for bit, and the flow it approximates, converging with the step."""

import numpy as np
import pytest
import torch

from particles import SelfAttention, fraction_close_pairs, uniform_sphere
from particles.sphere import DiscreteTransformer


def authors_step(x: torch.Tensor, beta: float, h: float, layers: int) -> torch.Tensor:
    """GLPR's code: x <- normalise(x + h softmax(beta x x^T) x), batched, float64; all layers stacked."""
    out = [x]
    for _ in range(layers):
        y = x + h * (torch.softmax(beta * (x @ x.transpose(-1, -2)), dim=-1) @ x)
        x = y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("n, d, beta", [(8, 2, 1.0), (12, 5, 4.0), (6, 3, 9.0)])
def test_post_ln_transformer_is_the_authors_update_bit_for_bit(n, d, beta):
    x0 = torch.as_tensor(uniform_sphere(5, n, d, seed=3), dtype=torch.float64)
    ours = DiscreteTransformer(SelfAttention(beta=beta), layers=300, t_end=30.0, norm="post").trajectory(x0)
    assert ours.dtype == torch.float64 and ours.shape == (301, 5, n, d)
    assert torch.equal(ours, authors_step(x0, beta, 0.1, 300))


def _flow_P(x0, beta, dt, t, method="euler"):
    from integrators import solve

    sol = solve(SelfAttention(beta=beta), x0, float(t[-1]), dt=dt, method=method, save_at=t, save_states=True,
                observables={"P": lambda x, m: fraction_close_pairs(x, delta=1e-3)})
    return sol.observables["P"].mean(axis=1), sol.x


def test_flow_P_converges_as_the_step_is_refined():
    """Euler on the flow: the state error and the error of P(t) (summed over the saved times, averaged over
    64 starts, so that single pair flips at the threshold average out) shrink at least like the step."""
    x0 = uniform_sphere(64, 8, 2, seed=5)
    t = np.linspace(0.0, 6.0, 13)  # the starts collapse inside the window: P moves from 0 towards 1
    P_ref, x_ref = _flow_P(x0, 1.0, 0.003125, t, method="rk4")
    assert P_ref[0] < 0.05 and P_ref[-1] > 0.5
    errs, perrs = [], []
    for dt in (0.1, 0.05, 0.025, 0.0125):
        P, x = _flow_P(x0, 1.0, dt, t)
        errs.append(np.max(np.abs(x - x_ref)))
        perrs.append(np.sum(np.abs(P - P_ref)))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(ratios > 1.8), ratios  # first order: halving the step halves the state error
    pratios = np.array(perrs[:-1]) / np.array(perrs[1:])
    assert np.all(pratios > 1.6) and perrs[0] / perrs[-1] > 6, perrs  # and that of P (8 for exactly first order)


def test_converged_flow_P_stops_when_P_stops_moving():
    from studies.papers.discrete_vs_flow import converged_flow_P

    x0 = uniform_sphere(4, 8, 3, seed=5)
    t = np.linspace(0.0, 6.0, 13)
    p = {"dt": 0.2, "dt_min": 0.01, "tol": 1e-3, "delta": 1e-3, "method": "rk4", "backend": "numpy"}
    P, dt, change = converged_flow_P(SelfAttention(beta=2.0), x0, t, p)
    assert P is not None and change <= 1e-3 and dt <= 0.1
    P_ref, _ = _flow_P(x0, 2.0, 0.00625, t, method="rk4")
    assert np.max(np.abs(P.mean(axis=1) - P_ref)) <= 2e-3
    # a stiff USA point does not converge within dt_min and says so instead of returning a number
    P2, _, _ = converged_flow_P(SelfAttention(beta=9.0, normalization="usa"), uniform_sphere(2, 8, 3, seed=1),
                                np.linspace(0, 30.0, 7), {**p, "dt": 0.1, "dt_min": 0.05})
    assert P2 is None


def test_smoke_study_runs_and_reports_the_gap(tmp_path):
    import json

    from studies.papers.discrete_vs_flow import run

    res = run(tmp_path, "smoke", progress=False)
    assert res["figure"][0].stat().st_size > 10_000
    summary = json.loads(res["summary"][0].read_text())
    assert set(summary) == {"sa", "usa"}
    for g in summary.values():
        assert g["points"] == 4 and np.isfinite(g["gap"]) and -1 <= g["gap"] <= 1 and g["d"] in (2, 3)
