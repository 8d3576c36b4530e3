"""Issue 13 item 1: every paper size validates at its real parameters and its first task runs.

The spec is built (and so validated: grids, parameters, each model once) exactly as the study
builds it; only the first task's batch is shrunk through an override, so the run takes seconds.
"""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from studies.papers.registry import STUDIES
from studies.sweep.plan import plan_tasks
from studies.sweep.tasks import get_task


@functools.lru_cache(maxsize=None)  # validating GLPR's 1080-point grid takes seconds: once per session
def _sweep_specs(name):
    if name == "phase-diagram":
        from studies.papers.phase_diagram import spec_for

        return [spec_for("paper")]
    if name == "discrete-vs-flow":
        from studies.papers.discrete_vs_flow import spec_for

        return [spec_for("paper")]
    from studies.papers.common import study_spec

    if name == "metastability":
        from studies.papers.metastability import _SIZES

        traj, caps = _SIZES["paper"]
        return [study_spec("metastability", traj), study_spec("two_caps", caps)]
    module = {"collapse": "collapse", "high-dim": "high_dim"}[name]
    sizes = __import__(f"studies.papers.{module}", fromlist=["_SIZES"])._SIZES
    return [study_spec(module, sizes["paper"])]


SWEEP_STUDIES = ["phase-diagram", "metastability", "collapse", "high-dim", "discrete-vs-flow"]


@pytest.mark.parametrize("name", SWEEP_STUDIES)
def test_paper_spec_validates_and_its_first_task_runs(name):
    assert "paper" in STUDIES[name].seconds and STUDIES[name].seconds["paper"] <= 1800
    for spec in _sweep_specs(name):
        first = plan_tasks(spec)[0]
        assert first.params["batch"] >= 2
        out = get_task(spec.task).fn({**first.params, "batch": 2}, first.seed)
        assert out and all(np.asarray(v).size for v in out.values())
        assert any(np.isfinite(np.asarray(v, dtype=float)).any() for v in out.values())


def test_phase_diagram_paper_grid_is_glprs():
    (spec,) = _sweep_specs("phase-diagram")
    assert spec.params["n"] == 32 and spec.params["t_end"] == 30.0 and spec.params["dt"] == 0.1
    assert spec.n_points == 2 * 6 * 90
    first = plan_tasks(spec)[0]
    out = get_task(spec.task).fn({**first.params, "batch": 3}, first.seed)
    assert np.all(out["P_err"] >= 0) and np.all(np.isfinite(out["P_err"]))


def test_cov_paper_size_is_nocis_and_its_first_chain_runs():
    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer
    from studies.papers.cov import SIZES

    sz = SIZES["paper"]
    assert 200 in sz.widths and round(sz.T * 200) == 150 and sz.rho0 == 0.2 and sz.tau0 == 1.0
    assert sz.gamma == pytest.approx(8**-0.5) and sz.dt == 0.01
    assert "paper" in STUDIES["cov"].seconds
    n = sz.widths[0]
    V0 = (1 - sz.rho0) * np.eye(sz.m) + sz.rho0 * np.ones((sz.m, sz.m))
    res = FiniteWidthChain(ShapedTransformer(n, sz.gamma, sz.tau0)).run(V0, round(sz.T * n), seed=1, batch=8)
    assert np.all(np.isfinite(res.final))


def test_signalprop_paper_size_first_point_runs():
    from studies.papers.signalprop import PHASE_POINT_DEFAULTS, _SIZES, phase_point

    sz = _SIZES["paper"]
    assert "paper" in STUDIES["signalprop"].seconds
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p = {**PHASE_POINT_DEFAULTS, "n": sz.n, "alpha_A": 0.3, "alpha_M": 0.3, "sigma_w": 1.5, "d": sz.finite_d,
             "depth": sz.finite_depth, "batch": 2, "burn_in": sz.burn_in}
        out = phase_point(p, 1)
    finally:
        torch.set_num_threads(old)
    assert all(np.isfinite(v) for v in out.values())
    assert dataclasses.replace(sz, finite_batch=2).finite_d == sz.finite_d


def test_trainability_paper_first_model_trains():
    """The paper grid (3 seeds per point) and its first model, shortened to 3 Adam steps."""
    from dataclasses import asdict, replace

    from studies.papers.trainability import _SIZES, train_one

    sz = _SIZES["paper"]
    assert sz.seeds == 3 and len(sz.alphas) * len(sz.sigma_ws) * len(sz.sigma_bs) == 72
    assert STUDIES["trainability"].seconds["paper"] <= 1800 and "paper" in STUDIES["trainability"].measured
    short = replace(sz, steps=3, log_every=1, eval_size=32)
    out = train_one(dict(size=asdict(short), task="reverse", alpha=sz.alphas[0], sigma_w=sz.sigma_ws[0],
                         sigma_b=sz.sigma_bs[0], replica=0, seed=0))
    assert not out["diverged"] and len(out["held_out_curve"]) == 4
    assert np.all(np.isfinite(out["held_out_curve"])) and np.isfinite(out["final_loss"])


def test_every_paper_size_is_listed_as_measured_within_30_minutes():
    for name, entry in STUDIES.items():
        if name == "default":
            continue
        assert "paper" in entry.seconds and entry.seconds["paper"] <= 1800, name
        assert "paper" in entry.measured, name


def test_gradient_exponent_paper_size_first_finite_point_runs():
    """The paper size is n = 256 tokens and L = 16 blocks (issue 13 item 4); its first finite
    point runs (one network, one probe, a short burn-in, so that it takes seconds)."""
    from dataclasses import replace

    from particles.signalprop import SignalPropParams
    from studies.papers.gradient_exponent import CANDIDATES, SIZES, finite_point

    sz = SIZES["paper"]
    assert sz.n == 256 and sz.depth == 16 and STUDIES["gradient-exponent"].seconds["paper"] <= 1800
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        P = SignalPropParams(n=sz.n, alpha_A=0.3, alpha_M=0.3, sigma_w=1.5, sigma_b=0.5)
        out = finite_point(P, replace(sz, batch=1, probes=1, burn_in=4), seed=1)
    finally:
        torch.set_num_threads(old)
    assert all(np.isfinite(out[name]) for name in CANDIDATES)
