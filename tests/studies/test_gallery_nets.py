"""Gallery numbers of the network studies (cov, signalprop, trainability) on their smoke outputs.

Each smoke study runs once per module; the rows must follow the gallery contract, agree with
what they summarise (recomputed here from the stored samples), and say so when a quantity does
not exist in the run (a level never crossed, a sign that never changes on the grid).
"""

import math
import shutil

import h5py
import numpy as np
import pytest
from scipy import stats

from studies.papers.gallery_nets import crossing, ks_critical, var_se

KEYS = {"quantity", "where", "ours", "se", "paper", "reference", "source"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """name -> output folder of that study's smoke size, each run on first use."""
    torch = pytest.importorskip("torch")
    done = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                if name == "cov":
                    from studies.papers.cov import run
                    run(out, "smoke", progress=False)
                elif name == "signalprop":
                    from studies.papers.signalprop import run
                    run(out, "smoke", progress=False)
                else:
                    from studies.papers.trainability import run
                    run(out, "smoke", progress=False, workers=1)
            finally:
                torch.set_num_threads(before)
            done[name] = out
        return done[name]

    return get


def _check_contract(rows):
    assert rows
    for r in rows:
        assert set(r) == KEYS, r
        assert r["ours"] is None or math.isfinite(r["ours"]), r
        assert r["se"] is None or (math.isfinite(r["se"]) and r["se"] >= 0), r
        assert r["source"] and r["where"]


# ------------------------------------------------------------------------------------------------ helpers
def test_crossing_of_a_line_and_its_error():
    x = np.linspace(0, 1, 11)
    xc, err, count = crossing(x, 2 * x - 1, 0.0, se=np.full(11, 0.1))
    assert xc == pytest.approx(0.5) and count == 1
    assert err == pytest.approx(0.05)  # se_y / |slope| = 0.1 / 2
    xc, _, count = crossing(x, 0.3 - x, 0.0)  # falling through the level
    assert xc == pytest.approx(0.3) and count == 1
    assert np.isnan(crossing(x, x + 1, 0.0)[0]) and crossing(x, x + 1, 0.0)[2] == 0
    xc, _, count = crossing(x, np.cos(3 * np.pi * x), 0.0)  # three sign changes: the first one
    assert count == 3 and abs(xc - 1 / 6) < 0.02
    y = 2 * x - 1
    y[4] = np.nan  # skipped: interpolated between x = 0.3 and x = 0.5 instead
    assert crossing(x, y, 0.0)[0] == pytest.approx(0.5)


def test_ks_critical_value_is_the_5_percent_quantile_of_sampling_alone():
    assert ks_critical(400, 900) == pytest.approx(stats.kstwobign.isf(0.05) * math.sqrt(1300 / (400 * 900)))
    assert ks_critical(50, 50, 0.01) == pytest.approx(stats.kstwobign.isf(0.01) * math.sqrt(2 / 50))
    rng = np.random.default_rng(0)  # two samples of one law exceed it about 5% of the time
    hits = [stats.ks_2samp(rng.normal(size=200), rng.normal(size=300)).statistic > ks_critical(200, 300)
            for _ in range(400)]
    assert 0.02 < np.mean(hits) < 0.09


def test_var_se_matches_the_spread_of_sample_variances():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=(2000, 200))  # skewed: the normal-theory 2 s^4 / (N - 1) would be too small
    spread = x.var(axis=1, ddof=1).std()
    ses = np.array([var_se(row) for row in x[:50]])
    assert np.median(ses) == pytest.approx(spread, rel=0.2)
    assert np.isnan(var_se(np.array([1.0, 2.0])))


# ------------------------------------------------------------------------------------------------ cov
def test_cov_rows_recompute_from_the_stored_samples(smoke):
    from studies.papers.cov import gallery_numbers

    out = smoke("cov")
    rows = gallery_numbers(out)
    _check_contract(rows)
    with h5py.File(out / "cov_study.h5", "r") as f:
        rho, rho_sde = f["law/rho12"][()], f["sde/rho12"][()]
        widths, kinds = f["law/width"][()], f["law/simulator"][()]
        mean_rho, sem_rho, layers = f["collapse/mean_rho"][()], f["collapse/sem_rho"][()], f["collapse/layer"][()]
    ks_rows = [r for r in rows if r["quantity"].startswith("KS statistic of rho^12_T, network")]
    assert len(ks_rows) == len(widths)
    for r, sample, n in zip(ks_rows, rho, widths):
        sample = sample[np.isfinite(sample)]
        assert 0 <= r["ours"] <= 1 and f"n = {n}" in r["where"]
        assert r["ours"] == pytest.approx(stats.ks_2samp(sample, rho_sde).statistic)
        assert f"{ks_critical(sample.size, rho_sde.size):.3f}" in r["reference"]
    means = [r for r in rows if r["quantity"] == "mean of rho^12_T"]
    assert len(means) == 2  # the widest chain and the plain network
    widest = rho[int(np.argmax(np.where(kinds == b"chain", widths, -1)))]
    assert means[0]["ours"] == pytest.approx(np.nanmean(widest))
    assert means[0]["se"] == pytest.approx(np.nanstd(widest, ddof=1) / math.sqrt(np.isfinite(widest).sum()))
    assert f"{np.mean(rho_sde):.4f}" in means[0]["reference"]
    for r in rows:
        if r["quantity"].startswith("variance"):
            assert r["ours"] > 0 and r["se"] > 0
    for r in [r for r in rows if "passes 0.99" in r["quantity"]]:
        a = 1 if "standard softmax" in r["where"] else 2
        if r["ours"] is None:  # never crossed: the row says so
            assert "not reached" in r["where"] and mean_rho[a].max() < 0.99
        else:
            k = int(np.ceil(r["ours"]))
            assert mean_rho[a, k - 1] < 0.99 <= mean_rho[a, k] and r["se"] is not None
    shaped = next(r for r in rows if "shaped attention" in r["quantity"])
    assert shaped["ours"] == pytest.approx(mean_rho[0, -1]) and shaped["se"] == pytest.approx(sem_rho[0, -1])
    assert 0 <= shaped["ours"] < 0.9  # shaped attention does not collapse


def test_cov_files_without_the_collapse_se_still_give_rows_and_figures(smoke, tmp_path):
    from studies.papers.cov import gallery_numbers, plot

    shutil.copy(smoke("cov") / "cov_study.h5", tmp_path / "cov_study.h5")
    with h5py.File(tmp_path / "cov_study.h5", "a") as f:  # as written before the SE was stored
        del f["collapse/sem_rho"]
    rows = gallery_numbers(tmp_path)
    _check_contract(rows)
    assert next(r for r in rows if "shaped attention" in r["quantity"])["se"] is None
    assert all(p.stat().st_size > 10_000 for p in plot(tmp_path / "cov_study.h5", tmp_path))


def test_cov_collapse_standard_error_is_over_networks(smoke):
    with h5py.File(smoke("cov") / "cov_study.h5", "r") as f:
        sem, mean = f["collapse/sem_rho"][()], f["collapse/mean_rho"][()]
    assert np.allclose(sem[:, 0], 0, atol=1e-12)  # every network starts at V0: no spread at layer 0
    assert np.all(sem[:, 1:] > 0) and np.all(sem < 0.2)
    assert np.allclose(mean[:, 0], 0.2)


# ------------------------------------------------------------------------------------------------ signalprop
def test_signalprop_transitions_lie_on_the_grid_and_match_the_closed_form(smoke):
    from particles.signalprop import SignalPropParams
    from particles.signalprop.exponents import angle_exponent
    from studies.papers.signalprop import gallery_numbers

    out = smoke("signalprop")
    rows = gallery_numbers(out)
    _check_contract(rows)
    trans = [r for r in rows if "transition" in r["quantity"]]
    assert len(trans) >= 4
    with h5py.File(out / "signalprop.h5", "r") as f:
        grids = {f[p].attrs["y_name"]: f[p][f[p].attrs["y_name"]][()] for p in ("phase_alpha_sigma_w", "phase_alpha_sigma_b")}
        base = SignalPropParams(n=int(f.attrs["size_n"]))
    for r in trans:
        yname = "sigma_w" if "sigma_w where" in r["quantity"] else "sigma_b"
        y = grids[yname]
        if r["ours"] is None:
            assert "on the whole grid" in r["where"]
            continue
        assert y[0] <= r["ours"] <= y[-1]
        if r["reference"]:  # lambda_a: the closed-form root, within one grid step of the grid's crossing
            exact = float(r["reference"].split("=")[-1])
            assert abs(exact - r["ours"]) < y[1] - y[0]
            a = float(r["where"].split("=")[2].split(",")[0])
            fixed = {"sigma_b": 0.5} if yname == "sigma_w" else {"sigma_w": 2.0}
            lam = lambda v: float(angle_exponent(SignalPropParams(**{**base.params(), **fixed, "alpha_A": a, "alpha_M": a,
                                                                        yname: v})))  # fmt: skip
            assert lam(exact - 0.05) * lam(exact + 0.05) < 0  # the sign does change there


def test_signalprop_deviation_slope_and_collapse_rows(smoke):
    from studies.papers.signalprop import gallery_numbers

    out = smoke("signalprop")
    rows = gallery_numbers(out)
    with h5py.File(out / "signalprop.h5", "r") as f:
        g = f["phase_alpha_sigma_w"]
        dev_a = g["lambda_a_meas"][()] - g["lambda_a_theory"][()]
    dev = [r for r in rows if r["quantity"].startswith("largest |")]
    assert len(dev) == 4 and all(r["ours"] is not None for r in dev)
    assert dev[0]["ours"] == pytest.approx(dev_a.flat[np.argmax(np.abs(dev_a))])
    slopes = [r for r in rows if "log-log slope" in r["quantity"]]
    assert len(slopes) == 3 and all(r["se"] is not None and abs(r["ours"]) < 3 for r in slopes)  # 2 seeds: a bootstrap SE
    rates = [r for r in rows if "contraction" in r["quantity"]]
    assert [r["where"].split()[0] for r in rates] == ["ordered", "attention-only"]
    for rate in rates:  # 1 - c shrinks each block (rank collapse), with and without the MLP
        e_lam = float(rate["reference"].split(":")[-1])
        assert 0 < e_lam < 1 and 0 < rate["ours"] < 1
        assert abs(rate["ours"] - e_lam) < 0.1
    assert float(rates[1]["reference"].split(":")[-1]) == pytest.approx(1 - 0.5**2)  # no MLP: 1 - alpha_A^2


# ------------------------------------------------------------------------------------------------ trainability
def test_trainability_smoke_rows(smoke):
    from studies.papers.trainability import gallery_numbers

    out = smoke("trainability")
    rows = gallery_numbers(out)
    _check_contract(rows)
    with h5py.File(out / "trainability.h5", "r") as f:
        r2 = f.attrs["r2_quadratic"]
        la, lg, loss = f["models/lambda_a"][()], f["models/lambda_g"][()], f["models/final_loss"][()]
    fit = rows[0]
    assert fit["ours"] == pytest.approx(r2) and math.isfinite(fit["ours"])  # issue 13 item 5 at smoke size
    assert fit["se"] is None and "one seed" in fit["where"]
    best = int(np.argmin(loss))
    at = {r["quantity"]: r for r in rows}
    assert at["lambda_a where the loss is least"]["ours"] == pytest.approx(la[best])
    assert at["lambda_g where the loss is least"]["ours"] == pytest.approx(lg[best])
    assert at["lambda_a where the loss is least"]["paper"] == 0.0


def _synthetic_trainability(path, seeds=3, points=12, seed=0):
    """A trainability file whose loss is |(lambda_a, lambda_g)|^2 plus seed noise: the least loss is known."""
    from studies.papers.signalprop import H5Writer
    from studies.papers.trainability import fit_r2, seed_interval

    rng = np.random.default_rng(seed)
    pa, pg = rng.uniform(-1, 1, points), rng.uniform(-1, 1, points)
    per_point = (pa**2 + pg**2)[:, None] + 2.0 + 0.01 * rng.normal(size=(points, seeds))
    r2, loo, basis = fit_r2(pa, pg, per_point.mean(axis=1))
    lo, hi, per_seed = seed_interval(pa, pg, per_point)
    attrs = {"r2_quadratic": r2, "r2_quadratic_loo": loo, "r2_lambda_a_only": 0.5, "r2_lambda_g_only": 0.5,
             "fit_basis": basis, "r2_ci95_low": lo, "r2_ci95_high": hi, "r2_per_seed": per_seed,
             "spearman_loss_vs_exponent_norm": 1.0}
    meta = {"seeds": seeds, "task": "reverse", "depth": 4, "d": 16, "steps": 10, "vocab": 8, "log_every": 5}
    w = H5Writer(path, "cowsik", meta, seed=0, extra=attrs)
    g = w.group("models")
    n = points * seeds
    w.coord(g, "model", np.arange(n))
    w.coord(g, "log_step", np.array([0, 5, 10]))
    for key, val in (("alpha", np.repeat(np.linspace(0.1, 0.9, points), seeds)), ("sigma_w", np.ones(n)),
                     ("sigma_b", np.zeros(n)), ("lambda_a", np.repeat(pa, seeds)), ("lambda_g", np.repeat(pg, seeds)),
                     ("final_loss", per_point.ravel()), ("diverged", np.zeros(n, dtype=np.int8))):
        w.data(g, key, val, ("model",))
    curves = np.linspace(np.log(8), 1, 3)[None] + np.zeros((n, 1))
    w.data(g, "held_out_loss", curves, ("model", "log_step"))
    w.close()
    return pa, pg, per_point, (lo, hi)


def test_trainability_rows_with_seeds_give_the_interval_and_the_known_minimum(tmp_path):
    from studies.papers.trainability import gallery_numbers, plot

    pa, pg, per_point, (lo, hi) = _synthetic_trainability(tmp_path / "trainability.h5")
    rows = gallery_numbers(tmp_path)
    _check_contract(rows)
    fit = rows[0]
    assert lo <= fit["ours"] <= hi and fit["se"] == pytest.approx((hi - lo) / 3.92)
    assert f"[{lo:.3f}, {hi:.3f}]" in fit["where"]
    at = {r["quantity"]: r for r in rows}
    best = int(np.argmin(pa**2 + pg**2))  # the noise (0.01) is far below the gaps between points
    assert at["lambda_a where the loss is least"]["ours"] == pytest.approx(pa[best])
    assert at["lambda_g where the loss is least"]["ours"] == pytest.approx(pg[best])
    assert at["least seed-mean final held-out loss"]["se"] == pytest.approx(per_point[best].std(ddof=1) / math.sqrt(3))
    assert plot(tmp_path / "trainability.h5", tmp_path / "t.png").stat().st_size > 10_000  # SE bars with 3 seeds
