"""gallery_numbers of the flow studies on their smoke outputs: finite, sensible, against their theory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from particles.sphere.flow_theory import equiangular_hitting_time, equiangular_solution, two_cluster_merge_time
from studies.papers import collapse, high_dim, metastability, phase_diagram
from studies.papers.gallery import check_rows
from studies.papers.phase_diagram import half_crossing, ode_beta
from studies.sweep import SerialExecutor, load_study


def _smoke(module, tmp_path_factory, name):
    out = tmp_path_factory.mktemp(name)
    module.run(out, "smoke", executor=SerialExecutor(), progress=False)
    return out


def _checked(rows):
    rows = check_rows(rows)
    assert rows
    for r in rows:
        assert r["ours"] is None or math.isfinite(r["ours"])
        assert r["se"] is None or (math.isfinite(r["se"]) and r["se"] >= 0)
    return rows


def test_half_crossing_finds_a_known_boundary_with_its_error():
    betas = np.linspace(0.1, 9.0, 90)
    true = 4.2
    P = 1.0 / (1.0 + np.exp(3.0 * (betas - true)))  # decreasing through 1/2 at beta = 4.2
    se = np.full_like(P, 0.05)
    b, err = half_crossing(betas, P, se)
    assert abs(b - true) < 0.02 and 0 < err < 0.3
    noisy = np.clip(P + se * np.random.default_rng(3).standard_normal(P.shape), 0, 1)
    b, err = half_crossing(betas, noisy, se)
    assert abs(b - true) < 3 * err + 0.05
    # P above 1/2 everywhere, or below it already at the smallest beta: no crossing inside the grid
    assert np.isnan(half_crossing(betas, np.full_like(P, 0.9), se)[0])
    assert np.isnan(half_crossing(betas, np.full_like(P, 0.1), se)[0])


def test_ode_beta_inverts_the_hitting_time():
    betas = np.linspace(0.1, 9.0, 90)
    b = ode_beta(12.0, 32, 1e-3, betas)
    assert abs(equiangular_hitting_time(b, 32, 1e-3) - 12.0) < 0.05
    assert np.isnan(ode_beta(1.0, 32, 1e-3, betas))  # t* > 5 for every beta at n = 32


def test_phase_diagram_crossings_inside_the_grid(tmp_path_factory):
    out = _smoke(phase_diagram, tmp_path_factory, "pd")
    rows = _checked(phase_diagram.gallery_numbers(out))
    betas = load_study(out / "phase_diagram.h5")["coords"]["beta"]
    assert {r["source"] for r in rows} == {"GLPR Fig. 3", "GLPR Fig. 5"}
    for r in rows:
        assert r["ours"] is None or betas.min() <= r["ours"] <= betas.max()
        assert (r["reference"] is not None) == ("identity" in r["where"])
    assert any(r["ours"] is not None for r in rows)


def test_collapse_medians_against_the_ode(tmp_path_factory):
    out = _smoke(collapse, tmp_path_factory, "co")
    rows = _checked(collapse.gallery_numbers(out))
    medians = [r for r in rows if r["quantity"] == "median collapse time" and r["ours"] is not None]
    assert medians
    for r in medians:
        ode = float(r["reference"].split(":")[1])
        # collapse (all pairs within delta) cannot beat the equiangular time by much; low d is slower
        assert 0.8 * ode < r["ours"] <= 20.0


def test_high_dim_tracks_the_ode(tmp_path_factory):
    out = _smoke(high_dim, tmp_path_factory, "hd")
    rows = _checked(high_dim.gallery_numbers(out))
    by = {r["quantity"]: r for r in rows}
    st = load_study(out / "high_dim.h5")
    t = high_dim._arrange(st, "t")
    t = t if t.ndim == 1 else t[-1, 0, 0]
    g = equiangular_solution(t, 1.0, 32)
    mean = by["mean ⟨x_i, x_j⟩"]
    assert abs(mean["ours"] - g[len(t) // 3]) < 0.05
    assert -0.8 < by["slope of log sd vs log d"]["ours"] < -0.2  # fluctuations ~ d^{-1/2}
    assert 0 <= by["KS distance to N(g(t), sd²)"]["ours"] < 0.3


def test_metastability_plateaus_and_merge_times(tmp_path_factory):
    out = _smoke(metastability, tmp_path_factory, "me")
    rows = _checked(metastability.gallery_numbers(out))
    clusters = [r for r in rows if r["quantity"].startswith("clusters")]
    energy = [r for r in rows if r["quantity"].startswith("energy")]
    assert clusters and all(r["ours"] >= 1 for r in clusters)
    assert all(0 < r["ours"] <= 1 + 1e-12 for r in energy)
    # the smoke run ends at t = 10, before Fig. 4's window: no paper value claimed
    assert all(r["paper"] is None for r in clusters)
    caps = load_study(out / "two_caps.h5")
    rho0 = json.loads(caps["attrs"]["fixed_parameters"])["rho0"]
    for r in rows:
        if r["quantity"] == "mean merge time":
            m1, m2 = (int(v) for v in r["where"].split(",")[0].removeprefix("caps ").split(" + "))
            beta = float(r["where"].split("β = ")[1])
            assert abs(r["ours"] / two_cluster_merge_time(beta, m1, m2, rho0, 0.99) - 1) < 0.1
