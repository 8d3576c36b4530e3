"""Gallery numbers of the network studies: ``cov`` (NOCI Fig. 1), ``signalprop`` and ``trainability`` (COWSIK).

Each ``*_numbers(out)`` reads one study's output file in ``out`` and returns the rows of the
gallery table (issue 13 item 2; the row contract is in :mod:`studies.papers.gallery`):
``{"quantity", "where", "ours", "se", "paper", "reference", "source"}``. ``ours`` is None
when the quantity does not exist in this run (a level never crossed, a sign that never
changes on the grid); the row's ``where`` then says why. The study modules re-export these as
their ``gallery_numbers``.

What the papers state: our sources for NOCI and COWSIK (the summaries in the project's seeds
and MODELS.md) give the figures' parameters and qualitative claims, not numbers to read off
the figures, so ``paper`` is None except for COWSIK's claim that the minimal test loss lies
where lambda_a and lambda_g both vanish (``paper`` = 0 for the location of the minimum).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

__all__ = ["cov_numbers", "crossing", "ks_critical", "seed_bootstrap_rms", "signalprop_numbers", "trainability_numbers",
           "var_se"]

#: two-sample KS statistic exceeded with probability 5% by sampling alone: c(0.05) sqrt((n + m) / (n m))
_KS_C05 = 1.3580986393225505  # scipy.special.kolmogi(0.05)


def _row(quantity: str, where: str, ours, se=None, paper=None, reference=None, source: str = "") -> dict:
    f = (lambda v: None if v is None or not math.isfinite(float(v)) else float(v))
    return {"quantity": quantity, "where": where, "ours": f(ours), "se": f(se), "paper": paper,
            "reference": reference, "source": source}  # fmt: skip


def ks_critical(n: int, m: int, alpha: float = 0.05) -> float:
    """The two-sample KS statistic that sampling alone exceeds with probability ``alpha`` (asymptotic).

    D_crit = c(alpha) sqrt((n + m) / (n m)), c(alpha) = sqrt(-log(alpha / 2) / 2)
    (c(0.05) = 1.358; Smirnov's limit law, e.g. scipy.stats.kstwobign).
    """
    c = _KS_C05 if alpha == 0.05 else math.sqrt(-math.log(alpha / 2) / 2)
    return c * math.sqrt((n + m) / (n * m))


def var_se(x: np.ndarray) -> float:
    """Standard error of the unbiased sample variance: sqrt((m4 - s^4 (N - 3)/(N - 1)) / N)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n = x.size
    if n < 4:
        return float("nan")
    s2 = x.var(ddof=1)
    m4 = np.mean((x - x.mean()) ** 4)
    return float(math.sqrt(max(m4 - s2**2 * (n - 3) / (n - 1), 0.0) / n))


def crossing(x: np.ndarray, y: np.ndarray, level: float, se: np.ndarray | None = None) -> tuple[float, float, int]:
    """(x where y first crosses ``level``, its standard error, number of crossings), by linear interpolation.

    The first crossing in increasing x; NaN with 0 crossings when y stays on one side (NaN
    values are skipped). The standard error propagates ``se`` of y at the two bracketing
    points through the interpolation (delta method): se_x = se_y / |slope|, se_y the
    interpolated se.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = np.nonzero(np.isfinite(y))[0]
    above = y[idx] >= level
    flips = np.nonzero(above[:-1] != above[1:])[0]
    if len(flips) == 0:
        return float("nan"), float("nan"), 0
    i, j = idx[flips[0]], idx[flips[0] + 1]
    w = (level - y[i]) / (y[j] - y[i])
    xc = x[i] + w * (x[j] - x[i])
    err = float("nan")
    if se is not None:
        se = np.asarray(se, dtype=float)
        err = float(((1 - w) * se[i] + w * se[j]) * abs((x[j] - x[i]) / (y[j] - y[i])))
    return float(xc), err, int(len(flips))


# ------------------------------------------------------------------------------------------------ cov
def cov_numbers(out: Path) -> list[dict]:
    """NOCI Fig. 1 from ``out/cov_study.h5``: KS per width, moments network vs SDE, rank collapse depth.

    Rows: the KS statistic of rho^12_T (network vs SDE) for every simulated width, with the
    5% critical value of sampling alone as reference; the KS statistic of V^11_T, and the mean
    and variance of rho^12_T (with standard errors; the SDE's value as reference), for the
    widest exact chain and the plain network; the SDE's own dt check (KS dt vs dt/10); the
    layer where the mean correlation of standard attention (and with pre-LN) first passes 0.99
    (standard error by the delta method from the stored per-layer standard error, when the
    file has one); shaped attention's mean correlation at the last layer.
    """
    src = "NOCI Fig. 1"
    with h5py.File(Path(out) / "cov_study.h5", "r") as f:
        P = json.loads(f.attrs["parameters_json"])
        law, sde, col = f["law"], f["sde"], f["collapse"]
        widths, depths = law["width"][()], law["depth"][()]
        kinds = [k.decode() for k in law["simulator"][()]]
        rho, v11 = law["rho12"][()], law["V11"][()]
        ks, ks_v = law["ks_rho12"][()], law["ks_V11"][()]
        rho_sde, v11_sde = sde["rho12"][()], sde["V11"][()]
        dt, ks_dt = float(sde.attrs["dt"]), float(sde.attrs["ks_rho12_dt_vs_dt10"])
        exit_frac = float(sde.attrs["exit_fraction"])
        archs = [a.decode() for a in col["architecture"][()]]
        mean_rho, layers = col["mean_rho"][()], col["layer"][()]
        sem_rho = col["sem_rho"][()] if "sem_rho" in col else None
    T = P["T"]
    n_sde = int(np.isfinite(rho_sde).sum())
    rows = []
    for s, (n, d, kind) in enumerate(zip(widths, depths, kinds)):
        n_net = int(np.isfinite(rho[s]).sum())
        label = "exact chain" if kind == "chain" else "plain torch network"
        rows.append(_row("KS statistic of rho^12_T, network vs SDE",
                         f"{label} n = {n}, depth {d} (T = {T:g}); {n_net} vs {n_sde} samples", ks[s],
                         reference=f"5% critical value of sampling alone: {ks_critical(n_net, n_sde):.3f}", source=src))
    chains = [s for s, k in enumerate(kinds) if k == "chain"]
    picks = ([max(chains, key=lambda s: widths[s])] if chains else []) + [s for s, k in enumerate(kinds) if k != "chain"]
    sde_mean, sde_var = float(np.nanmean(rho_sde)), float(np.nanvar(rho_sde, ddof=1))
    sde_mean_se, sde_var_se = float(np.nanstd(rho_sde, ddof=1) / math.sqrt(n_sde)), var_se(rho_sde)
    for s in picks:
        r = rho[s][np.isfinite(rho[s])]
        label = f"{'exact chain' if kinds[s] == 'chain' else 'plain torch network'} n = {widths[s]}, depth {depths[s]}"
        n_net = r.size
        n_v, n_v_sde = int(np.isfinite(v11[s]).sum()), int(np.isfinite(v11_sde).sum())
        rows.append(_row("KS statistic of V^11_T, network vs SDE", f"{label}; {n_v} vs {n_v_sde} samples", ks_v[s],
                         reference=f"5% critical value: {ks_critical(n_v, n_v_sde):.3f}", source=src))
        rows.append(_row("mean of rho^12_T", label, r.mean(), r.std(ddof=1) / math.sqrt(n_net),
                         reference=f"SDE (dt = {dt:g}): {sde_mean:.4f} +- {sde_mean_se:.4f}", source=src))
        rows.append(_row("variance of rho^12_T", label, r.var(ddof=1), var_se(r),
                         reference=f"SDE (dt = {dt:g}): {sde_var:.4f} +- {sde_var_se:.4f}", source=src))
    rows.append(_row("KS statistic of rho^12_T, SDE at dt vs dt/10 (same Brownian path)",
                     f"{n_sde} paths, dt = {dt:g}; {exit_frac:.2%} of paths exited", ks_dt,
                     reference=f"5% critical value for independent samples: {ks_critical(n_sde, n_sde):.3f}", source=src))
    n_col = P["collapse_n"]
    for a, name in enumerate(archs):
        se = None if sem_rho is None else sem_rho[a]
        if name == "shaped":
            rows.append(_row("mean token correlation at the last layer, shaped attention",
                             f"n = {n_col}, layer {int(layers[-1])}", mean_rho[a, -1], None if se is None else se[-1],
                             reference=f"start: rho0 = {P['rho0']:g}", source=src))
            continue
        xc, err, _ = crossing(layers, mean_rho[a], 0.99, se)
        where = f"{name} softmax attention, n = {n_col}"
        if not math.isfinite(xc):
            where += f": not reached in {int(layers[-1])} layers (largest mean rho {np.nanmax(mean_rho[a]):.3f})"
        rows.append(_row("layer where the mean token correlation passes 0.99", where, xc, err, source=src))
    return rows


# ------------------------------------------------------------------------------------------------ signalprop
def seed_bootstrap_rms(c_finite: np.ndarray, c_map: np.ndarray, n_boot: int = 400, seed: int = 0) -> np.ndarray:
    """Bootstrap over seeds of the RMS deviation sqrt(mean_(seed, layer) (c_finite - c_map)^2), per width.

    ``c_finite``: (d, seed, layer); ``c_map``: (layer,). Returns (n_boot, d): each resample draws
    the seeds with replacement independently at every width; empty with a single seed.
    """
    dev2 = (np.asarray(c_finite) - np.asarray(c_map)[None, None, :]) ** 2
    widths, seeds = dev2.shape[:2]
    if seeds < 2:
        return np.empty((0, widths))
    pick = np.random.default_rng(seed).integers(0, seeds, size=(n_boot, widths, seeds))
    per_seed = dev2.mean(axis=2)  # (d, seed)
    return np.sqrt(np.take_along_axis(per_seed[None], pick, axis=2).mean(axis=2))


def _transition_rows(g: h5py.Group, key: str, targets: tuple[float, ...]) -> list[dict]:
    """Where ``key`` (lambda_a or lambda_g) changes sign along the plane's second axis, at the alphas nearest ``targets``."""
    from particles.signalprop import SignalPropParams
    from particles.signalprop.exponents import angle_exponent
    from scipy.optimize import brentq

    yname = g.attrs["y_name"]
    alpha, yv, z = g["alpha"][()], g[yname][()], g[key][()]
    base = json.loads(g.attrs["base_params_json"])
    fixed = ", ".join(f"{k} = {v:g}" for k, v in json.loads(g.attrs["fixed_json"]).items())
    rows = []
    for i in sorted({int(np.argmin(np.abs(alpha - t))) for t in targets}):
        a = float(alpha[i])
        yc, _, count = crossing(yv, z[i], 0.0)
        where = f"alpha_A = alpha_M = {a:.3g}, {fixed}, other hyperparameters at their defaults (n = {base['n']})"
        ref = None
        if count == 0:
            side = "< 0" if np.nanmax(z[i]) < 0 else "> 0"
            where += f": {key} {side} on the whole grid {yname} in [{yv[0]:g}, {yv[-1]:g}]"
        else:
            where += f"; grid step {yv[1] - yv[0]:.3g}" + (f"; {count} sign changes, the first" if count > 1 else "")
            if key == "lambda_a":  # closed form at collapse: the exact root between the bracketing grid points
                j = int(np.searchsorted(yv, yc))
                lo, hi = yv[max(j - 1, 0)], yv[min(j, len(yv) - 1)]
                f_ = (lambda y: float(angle_exponent(SignalPropParams(**{**base, "alpha_A": a, "alpha_M": a, yname: y}))))
                if lo < hi and f_(lo) * f_(hi) < 0:
                    ref = f"closed-form root: {yname} = {brentq(f_, lo, hi, xtol=1e-10):.4f}"
        name = "order-chaos transition" if key == "lambda_a" else "vanishing-exploding gradient transition"
        rows.append(_row(f"{name}: {yname} where {key} = 0 (maps)", where, yc, reference=ref,
                         source="COWSIK phase diagram"))
    return rows


def _deviation_row(g: h5py.Group, key: str, theory_key: str, d: int, depth: int) -> dict:
    """The largest |finite - theory| of ``key`` over the finite grid, with its standard error."""
    yname = g.attrs["y_name"]
    meas, err, th = g[key + "_meas"][()], g[key + "_meas_err"][()], g[theory_key][()]
    dev = meas - th
    ok = np.isfinite(dev)
    what = "asymptotic theory" if theory_key.endswith("_theory") else "theory over the same fit window"
    quantity = f"largest |{key}(finite) - {key}(maps, {what})|"
    if not ok.any():
        return _row(quantity, f"{g.name.strip('/')}: no finite measurement", None, source="COWSIK exponents")
    i, j = np.unravel_index(np.argmax(np.where(ok, np.abs(dev), -1.0)), dev.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(dev[ok]) / np.where(err[ok] > 0, err[ok], np.nan)
    where = (f"{g.name.strip('/')} at alpha = {g['alpha_finite'][i]:.3g}, {yname} = {g[f'{yname}_finite'][j]:.3g} "
             f"(d = {d}, depth {depth}; maps {th[i, j]:.4f}, finite {meas[i, j]:.4f})")
    if np.isfinite(z).any():
        ref = f"{int(np.sum(z <= 2))} of {int(ok.sum())} points within 2 SE; largest |dev|/SE = {np.nanmax(z):.2f}"
    else:
        ref = f"{int(ok.sum())} points, no standard error (one network per point)"
    return _row(quantity, where, dev[i, j], err[i, j], reference=ref, source="COWSIK exponents vs finite networks")


def signalprop_numbers(out: Path, alphas: tuple[float, ...] = (0.25, 0.5, 0.75), n_boot: int = 400) -> list[dict]:
    """COWSIK from ``out/signalprop.h5``: transitions, finite networks vs maps, collapse rate, d^{-1/2}.

    Rows: along sigma_w (plane alpha x sigma_w) at the grid alphas nearest ``alphas``, where
    lambda_a = 0 (the order-chaos transition; the exact root of the closed form as reference)
    and where lambda_g = 0; along sigma_b at the alpha nearest 0.5 the same two; per plane the
    largest deviation of the finite-network lambda_a (against the maps) and lambda_g (against
    the maps' prediction over the same fit window) with its standard error; per setting of the
    trajectories the log-log slope of the RMS deviation of c against d (bootstrap standard error
    over seeds; reference -1/2) and, for the ordered and the attention-only settings, the
    contraction of 1 - c per block over the last blocks (finite networks at the largest d,
    standard error over seeds; the map's and the closed form's e^{lambda_a} as reference: rank
    collapse, with and without the MLP).
    """
    from particles.signalprop import SignalPropParams
    from particles.signalprop.exponents import angle_exponent

    rows = []
    with h5py.File(Path(out) / "signalprop.h5", "r") as f:
        d_fin, depth_fin = int(f.attrs["size_finite_d"]), int(f.attrs["size_finite_depth"])
        for name, targets in (("phase_alpha_sigma_w", alphas), ("phase_alpha_sigma_b", (0.5,))):
            for key in ("lambda_a", "lambda_g"):
                rows += _transition_rows(f[name], key, targets)
        for name in ("phase_alpha_sigma_w", "phase_alpha_sigma_b"):
            rows.append(_deviation_row(f[name], "lambda_a", "lambda_a_theory", d_fin, depth_fin))
            rows.append(_deviation_row(f[name], "lambda_g", "lambda_g_window", d_fin, depth_fin))
        g = f["trajectories"]
        names = [s.decode() for s in g["setting"][()]]
        settings = json.loads(g.attrs["settings_json"])
        widths, c_fin, c_map = g["d"][()], g["c_finite"][()], g["c_map"][()]
        n_tok = int(f.attrs["size_n"])
    seeds = c_fin.shape[2]
    for i, name in enumerate(names):
        slope = np.polyfit(np.log(widths), np.log(np.sqrt(np.mean((c_fin[i] - c_map[i]) ** 2, axis=(1, 2)))), 1)[0]
        boot = [np.polyfit(np.log(widths), np.log(r), 1)[0] for r in seed_bootstrap_rms(c_fin[i], c_map[i], n_boot)]
        rows.append(_row("log-log slope of the RMS deviation of c (finite - map) against d",
                         f"{name} setting {settings[name]}, d in {list(map(int, widths))}, {seeds} seeds, "
                         f"{c_fin.shape[-1] - 1} blocks, n = {n_tok}",
                         slope, np.std(boot, ddof=1) if len(boot) > 1 else None,
                         reference="-1/2 (fluctuations of a width-d average)", source="COWSIK forward maps"))
    for name in (n for n in ("ordered", "attention-only") if n in names):  # the settings that collapse
        i = names.index(name)
        k = max(1, min(5, (c_fin.shape[-1] - 1) // 2))
        gap = 1.0 - c_fin[i, -1]  # (seed, layer) at the largest d
        with np.errstate(divide="ignore", invalid="ignore"):
            per_seed = np.exp(np.log(gap[:, -1] / gap[:, -1 - k]) / k)  # geometric mean of the last k ratios
            map_rate = float(np.exp(np.log((1 - c_map[i, -1]) / (1 - c_map[i, -1 - k])) / k))
        per_seed = per_seed[np.isfinite(per_seed)]
        lam = float(angle_exponent(SignalPropParams(n=n_tok, **settings[name])))
        rows.append(_row("contraction of 1 - c per block near collapse (rank collapse"
                         + (", no MLP)" if name == "attention-only" else ")"),
                         f"{name} setting {settings[name]}, blocks {c_fin.shape[-1] - 1 - k}..{c_fin.shape[-1] - 1}, "
                         f"finite d = {int(widths[-1])}, {per_seed.size} seeds",
                         per_seed.mean() if per_seed.size else None,
                         per_seed.std(ddof=1) / math.sqrt(per_seed.size) if per_seed.size > 1 else None,
                         reference=f"map: {map_rate:.4f}; e^lambda_a at collapse (closed form): {math.exp(lam):.4f}",
                         source="COWSIK forward maps"))
    return rows


# ------------------------------------------------------------------------------------------------ trainability
def trainability_numbers(out: Path, n_boot: int = 400) -> list[dict]:
    """COWSIK's trainability claim from ``out/trainability.h5``: R^2 with its interval, where the loss is least.

    Rows: R^2 of the fit of the seed-mean final held-out loss in (lambda_a, lambda_g) (the
    standard error is the 95% bootstrap interval over seeds divided by 2 x 1.96, the interval
    itself in ``where``), its leave-one-out version, R^2 with lambda_a alone and with lambda_g
    alone, the Spearman correlation of the loss with |(lambda_a, lambda_g)|; the least seed-mean
    loss (standard error over seeds) and lambda_a, lambda_g at that grid point (standard error:
    bootstrap over seeds of the location of the minimum; COWSIK: both 0).
    """
    src = "COWSIK trainability"
    with h5py.File(Path(out) / "trainability.h5", "r") as f:
        at = dict(f.attrs)
        g = f["models"]
        la, lg, loss = g["lambda_a"][()], g["lambda_g"][()], g["final_loss"][()]
        alpha, sw, sb = g["alpha"][()], g["sigma_w"][()], g["sigma_b"][()]
        diverged = g["diverged"][()]
    seeds = int(at.get("seeds", 1))
    points = len(loss) // seeds
    per_point = loss.reshape(points, seeds)
    mean_loss = per_point.mean(axis=1)
    pa, pg = la[::seeds], lg[::seeds]
    basis = str(at.get("fit_basis", "quadratic"))
    lo, hi = float(at.get("r2_ci95_low", np.nan)), float(at.get("r2_ci95_high", np.nan))
    setup = (f"{points} grid points x {seeds} seeds, task {at.get('task')}, depth {int(at['depth'])}, d = {int(at['d'])}, "
             f"{int(at['steps'])} Adam steps")
    band = f"; 95% bootstrap interval over seeds [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else "; one seed: no interval"
    rows = [
        _row(f"R^2 of the {basis} fit of the final loss in (lambda_a, lambda_g)", setup + band, at["r2_quadratic"],
             (hi - lo) / (2 * 1.96) if math.isfinite(lo) else None, source=src),
        _row("leave-one-out R^2 of the same fit", setup, at["r2_quadratic_loo"], source=src),
        _row("R^2 of the quadratic fit in lambda_a alone", setup, at["r2_lambda_a_only"], source=src),
        _row("R^2 of the quadratic fit in lambda_g alone", setup, at["r2_lambda_g_only"], source=src),
        _row("Spearman correlation of the loss with |(lambda_a, lambda_g)|", setup,
             at["spearman_loss_vs_exponent_norm"], reference="COWSIK: the loss grows away from (0, 0), so > 0",
             source=src),
    ]
    best = int(np.argmin(mean_loss))
    boot_a, boot_g = [], []
    if seeds > 1:
        rng = np.random.default_rng(0)
        for _ in range(n_boot):
            pick = rng.integers(0, seeds, size=(points, seeds))
            b = int(np.argmin(np.take_along_axis(per_point, pick, axis=1).mean(axis=1)))
            boot_a.append(pa[b])
            boot_g.append(pg[b])
    at_best = (f"alpha = {alpha[best * seeds]:g}, sigma_w = {sw[best * seeds]:g}, sigma_b = {sb[best * seeds]:g} "
               f"of {points} grid points; {int(diverged.sum())} of {len(loss)} runs diverged")
    sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else None)
    rows += [
        _row("least seed-mean final held-out loss", at_best, mean_loss[best],
             per_point[best].std(ddof=1) / math.sqrt(seeds) if seeds > 1 else None,
             reference=f"chance level log(vocab) = {math.log(float(at['vocab'])):.3f}", source=src),
        _row("lambda_a where the loss is least", at_best, pa[best], sd(boot_a), paper=0.0, source=src),
        _row("lambda_g where the loss is least", at_best, pg[best], sd(boot_g), paper=0.0, source=src),
    ]
    return rows
