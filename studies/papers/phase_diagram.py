"""Phase diagram P(t, beta) of the SA flow, with the equiangular-ODE boundary (GLPR Fig. 3 and 5).

P(t, beta) is the fraction of pairs i != j with <x_i(t), x_j(t)> >= 1 - delta
(delta = 1e-3), averaged over uniform starts of n = 32 tokens. For Q = K = V = I
the transition follows the curve g_beta(t) = 1 - delta of the equiangular ODE
(GLPR Thm 6.8, eq. 6.9, from g(0) = 0): drawn over each panel. The second row
uses random Q, K, V (Q^T K = G1 G2 / sqrt(d), V = G3 G3^T / sqrt(d), as in the
authors' code; GLPR Fig. 5).

Sizes: ``full`` = studies/papers/phase_diagram.toml (d in {2, 8, 32, 128},
beta = 0.1, 0.2, ..., 9, t in [0, 30], 4 x 256 starts per point: 2880 tasks,
about 30-60 minutes on 2 cores with numba); ``default`` = studies/papers/default.toml (identity
Q, K, V, d in {2, 8, 32, 128}, 36 betas, 64 starts: about a minute); ``paper``: GLPR's
grid (identity and random Q, K, V, d in {2, 8, 32, 128, 512, 1024} as MODELS.md lists them,
beta = 0.1, ..., 9, t in [0, 30], n = 32, Euler dt = 0.1) with 6 starts per point instead of
the authors' batches of 2048 (the count they average over is not stated in the sources we
have), P with its standard error over the starts; 10 minutes on 2 cores (594 s measured, from
a cold numba cache); ``smoke``: seconds.

Usage: ``attnflow study phase-diagram [--size full|default|paper|smoke] --out DIR``
or ``python -m studies.papers.phase_diagram --smoke --out DIR``.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, Fig. 3, Fig. 5, Thm 6.8 (eq. 6.9), Thm 6.9.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from particles.sphere.flow_theory import equiangular_hitting_time, equiangular_solution
from studies.papers._flow import CHECKED, FLOW_DEFAULTS, build_model, solve_checked
from studies.papers.common import study_main, study_spec, sweep_and_merge
from studies.sweep import load_study
from studies.sweep.spec import SweepSpec
from studies.sweep.tasks import register_task

__all__ = ["run", "plot", "spec_for", "phase_point", "gallery_numbers", "half_crossing", "ode_beta"]

_SMOKE = {
    "sweep": {"seeds": 1},
    "params": {"n": 8, "batch": 4, "t_end": 10.0, "n_save": 21, "backend": "numpy"},
    "grid": {"qkv": ["identity", "random"], "d": [2, 8], "beta": [1.0, 5.0, 9.0]},
}


#: GLPR Fig. 3 (identity) and Fig. 5 (random Q, K, V) at the paper's n, t, beta grid and d (MODELS.md
#: section 1: d in {2, 8, 32, 128, 512, 1024}); 6 starts per point instead of the authors' 2048-system
#: batches, so that it fits 30 minutes on 2 cores (random Q, K, V at d = 1024 dominate); P_err is stored.
_PAPER = {
    "sweep": {"seeds": 1},
    "params": {"batch": 6},
    "grid": {"qkv": ["identity", "random"], "d": [2, 8, 32, 128, 512, 1024],
             "beta": {"start": 0.1, "stop": 9.0, "num": 90}},
}


def spec_for(size: str, name: str = "phase_diagram") -> SweepSpec:
    """The sweep spec of this study at ``size`` (smoke, default, full or paper), named ``name``.

    The name is the stem of the sweep folder and of the output files, so it is the
    same at every size (``default`` for the README's study, else ``phase_diagram``).
    """
    rename = {"sweep": {"name": name}}
    if size == "full":
        return study_spec("phase_diagram", rename)
    if size == "default":
        return study_spec("default", rename)
    if size == "paper":
        return study_spec("phase_diagram", {**_PAPER, "sweep": {**_PAPER["sweep"], "name": name}})
    return study_spec("phase_diagram", {**_SMOKE, "sweep": {**_SMOKE["sweep"], "name": name}})


def run(out: Path, size: str = "full", executor: Any = None, progress: bool = True,
        name: str = "phase_diagram") -> dict[str, list[Path]]:
    """Sweep, merge and draw ``out/<name>.h5`` and ``out/<name>.png``; returns their paths."""
    out = Path(out)
    spec = spec_for(size, name)
    h5 = sweep_and_merge(spec, out, executor, progress)
    fig = plot(h5, out / f"{spec.name}.png")
    return {"hdf5": [h5], "figure": [fig]}


def boundary(betas: np.ndarray, n: int, delta: float) -> np.ndarray:
    """t at which the equiangular ODE reaches 1 - delta, for each beta (GLPR Fig. 3 curve)."""
    return np.array([equiangular_hitting_time(float(b), n, delta) for b in betas])


def _seed_mean(P: np.ndarray, err: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """P averaged over the seeds and its standard error (the seeds' errors combined)."""
    m = P.shape[axis]
    return np.nanmean(P, axis=axis), np.sqrt(np.nansum(err**2, axis=axis)) / m


def _marked_times(t: np.ndarray) -> list[int]:
    """Indices of the saved times nearest 10, 20 and 30 that the run reaches: where crossings are read."""
    return [int(np.argmin(np.abs(t - v))) for v in (10.0, 20.0, 30.0) if v <= t.max() + 1e-9]


def plot(study_file: Path, figure: Path) -> Path:
    """Heat maps of P(t, beta) (mean over seeds), one panel per (qkv, d), boundary curve over Q=K=V=I.

    White dots: where P crosses 1/2 at t = 10, 20, 30 (:func:`half_crossing`), with their standard
    errors over the starts as bars (the same numbers as the gallery table).
    """
    from matplotlib.figure import Figure

    st = load_study(study_file)
    dims, P = st["vars"]["P"]
    c = st["coords"]
    fixed = json.loads(st["attrs"]["fixed_parameters"])
    n, delta = int(fixed["n"]), float(fixed["delta"])
    P, err = _seed_mean(P, st["vars"]["P_err"][1], dims.index("seed"))
    dims = tuple(d for d in dims if d != "seed")
    if "qkv" not in dims:  # one row: the identity case
        P, err, dims, kinds = P[None], err[None], ("qkv",) + dims, np.array(["identity"])
    else:
        kinds = c["qkv"]
    order = [dims.index(k) for k in ("qkv", "d", "beta", "t")]
    P, err = np.transpose(P, order), np.transpose(err, order)
    ds, betas, t = c["d"], c["beta"], c["t"]
    panels = [(i, j) for i in range(len(kinds)) for j in range(len(ds))]
    # one row per Q, K, V kind; a single kind wraps into two columns, so the figure stays near 4:3
    ncols = len(ds) if len(kinds) > 1 else min(len(ds), 2)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.3 * ncols + 1.2, 2.7 * nrows + 0.6), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for ax in grid.flat[len(panels):]:
        ax.set_visible(False)
    fine = np.linspace(betas.min(), betas.max(), 200)
    curve = boundary(fine, n, delta)
    mesh = None
    for k, (i, j) in enumerate(panels):
        kind, d = kinds[i], ds[j]
        ax = grid.flat[k]
        mesh = ax.pcolormesh(t, betas, P[i, j], vmin=0.0, vmax=1.0, cmap="RdBu_r", shading="nearest", rasterized=True)
        if kind == "identity":
            keep = curve <= t.max()
            ax.plot(curve[keep], fine[keep], color="k", lw=1.2, label="$g_\\beta(t) = 1-\\delta$")
        for it in _marked_times(t):  # where P crosses 1/2, with its standard error over the starts
            b, se = half_crossing(betas, P[i, j, :, it], err[i, j, :, it])
            if np.isfinite(b):
                ax.errorbar(t[it], b, yerr=se if np.isfinite(se) else None, fmt="o", ms=3.5, mfc="w", mec="k",
                            ecolor="k", elinewidth=1, capsize=2, label="P = 1/2 (± SE)" if it == _marked_times(t)[0] else None)
        ax.set_title(f"d = {d}, Q,K,V: {kind}", fontsize=9)
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("t")
        if k % ncols == 0:
            ax.set_ylabel(r"$\beta$")
    grid[0, 0].legend(loc="upper left", fontsize=7, framealpha=0.8)  # the ODE curve and the crossings
    fig.colorbar(mesh, ax=grid[:, -1].tolist(), label=r"$P(t, \beta)$", shrink=0.9, pad=0.02, aspect=30)
    fig.suptitle(rf"SA phase diagram (GLPR Fig. 3/5), n = {n}: fraction of pairs with "
                 rf"$\langle x_i,x_j\rangle \geq 1-\delta$, $\delta$ = {delta:g}", fontsize=10)
    figure = Path(figure)
    fig.savefig(figure, dpi=130)
    return figure



def half_crossing(betas: np.ndarray, P: np.ndarray, se: np.ndarray, n_boot: int = 200,
                  seed: int = 0) -> tuple[float, float]:
    """The beta where P(t, beta) falls through 1/2 at one t, and its standard error.

    P decreases with beta (larger beta, slower collapse), but with few starts per point
    it is noisy, so the crossing is read from the decreasing (isotonic) least-squares fit
    of P with weights 1/se^2, interpolated linearly. The standard error is from a parametric
    bootstrap: P + se Z refitted ``n_boot`` times (:func:`studies.papers.gallery_stats.bootstrap_se`'s
    16-84% half width). NaN when the fit does not cross 1/2 inside the beta grid.
    """
    from scipy.optimize import isotonic_regression

    from studies.papers.gallery_stats import first_crossing

    se = np.where(np.isfinite(se), np.maximum(se, 0.01), 0.1)  # a floor: P = 1 exactly has se = 0

    def cross(p: np.ndarray) -> float:
        fit = isotonic_regression(p, weights=1.0 / se**2, increasing=False).x
        if fit[0] < 0.5:
            return float("nan")  # below 1/2 already at the smallest beta
        return first_crossing(betas, 1.0 - fit, 0.5)  # 1 - fit rises through 1/2

    value = cross(P)
    rng = np.random.default_rng(seed)
    boots = np.array([cross(np.clip(P + se * rng.standard_normal(P.shape), 0.0, 1.0)) for _ in range(n_boot)])
    boots = np.where(np.isnan(boots), np.inf, boots)
    with np.errstate(invalid="ignore"):
        lo, hi = np.percentile(boots, [16, 84])
    err = 0.5 * (hi - lo) if np.isfinite(lo) and np.isfinite(hi) else float("nan")
    return value, float(err)


def ode_beta(t: float, n: int, delta: float, betas: np.ndarray) -> float:
    """The beta in [betas.min(), betas.max()] with equiangular-ODE time g_beta(t) = 1 - delta equal to t; NaN if none.

    t*(beta) increases with beta (GLPR Thm 6.8, eq. 6.9), so this is the boundary of Fig. 3 read at t.
    """
    from studies.papers.gallery_stats import first_crossing

    fine = np.linspace(betas.min(), betas.max(), 400)
    curve = boundary(fine, n, delta)
    return float("nan") if curve[0] > t else first_crossing(fine, curve, t)


def gallery_numbers(out: Path, name: str = "phase_diagram") -> list[dict]:
    """Where P(t, beta) crosses 1/2, per Q, K, V kind and d at t = 10, 20, 30, for the gallery table.

    Against the beta at which the equiangular ODE reaches 1 - delta at t (the curve of
    the figure; only for Q = K = V = I, where GLPR Thm 6.8-6.9 applies in high d). The
    crossing and its standard error come from :func:`half_crossing`; "—" where P does not
    cross 1/2 inside the beta grid. GLPR Fig. 3 and 5 state no numbers, so ``paper`` is None.
    """
    st = load_study(Path(out) / f"{name}.h5")
    dims, P = st["vars"]["P"]
    _, err = st["vars"]["P_err"]
    c = st["coords"]
    fixed = json.loads(st["attrs"]["fixed_parameters"])
    n, delta = int(fixed["n"]), float(fixed["delta"])
    P, err = _seed_mean(P, err, dims.index("seed"))
    dims = tuple(x for x in dims if x != "seed")
    if "qkv" not in dims:
        P, err, dims, kinds = P[None], err[None], ("qkv",) + dims, ["identity"]
    else:
        kinds = list(c["qkv"])
    order = [dims.index(x) for x in ("qkv", "d", "beta", "t")]
    P, err = np.transpose(P, order), np.transpose(err, order)
    ds, betas, t = c["d"], c["beta"], c["t"]
    rows = []
    for i, kind in enumerate(kinds):
        for j, d in enumerate(ds):
            for it in _marked_times(t):
                beta, se = half_crossing(betas, P[i, j, :, it], err[i, j, :, it])
                ref = None
                if kind == "identity":
                    b_ode = ode_beta(float(t[it]), n, delta, betas)
                    ref = f"equiangular ODE: {b_ode:.3g}" if np.isfinite(b_ode) else "equiangular ODE: outside the grid"
                rows.append({"quantity": "β where P crosses 1/2", "where": f"Q,K,V {kind}, d = {d}, t = {t[it]:g}",
                             "ours": beta, "se": se, "paper": None, "reference": ref,
                             "source": "GLPR Fig. 3" if kind == "identity" else "GLPR Fig. 5"})
    return rows


# ------------------------------------------------------------ sweep tasks
@register_task(
    "flow.phase_point",
    defaults={**FLOW_DEFAULTS, "t_end": 30.0, "n_save": 61, "delta": 1e-3, "qkv": "identity"},
    dims={"t": ("t",), "P": ("t",), "P_err": ("t",), "collapsed": ("t",), "g_theory": ("t",)},
    **CHECKED,
)
def phase_point(p: dict, seed: int) -> dict:
    """P(t) = mean fraction of pairs i != j with <x_i, x_j> >= 1 - delta over ``batch`` uniform starts.

    P_err is its standard error over the starts. Also the fraction of systems fully collapsed (P = 1) and the equiangular ODE
    g(t) from g(0) = 0 (the high-dimensional prediction, GLPR Thm 6.9).
    """
    from particles import fraction_close_pairs, uniform_sphere

    rng = np.random.default_rng(seed)
    model = build_model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    delta = p["delta"]
    sol = solve_checked(model, x0, p, p["t_end"], t, {"P": lambda x, m: fraction_close_pairs(x, delta=delta)})
    frac = sol.observables["P"]  # (time, batch)
    err = frac.std(axis=1, ddof=1) / np.sqrt(frac.shape[1]) if frac.shape[1] > 1 else np.full(len(t), np.nan)
    return {"t": t, "P": frac.mean(axis=1), "P_err": err, "collapsed": (frac >= 1.0).mean(axis=1),
            "g_theory": equiangular_solution(t, p["beta"], p["n"])}


if __name__ == "__main__":
    raise SystemExit(study_main("phase_diagram", run, __doc__))
