"""Collapse times of the SA flow vs (n, d, beta), with the equiangular-ODE theory curve.

From uniform starts, the collapse time is the first time every pair satisfies
<x_i, x_j> >= 1 - delta (delta = 1e-3). In high dimension all pairwise inner
products follow the equiangular ODE g(t) from g(0) = 0 (GLPR Thm 6.8-6.9), so
the collapse time approaches t*(beta, n) with g_beta(t*) = 1 - delta (black
curves); in low dimension metastable multi-cluster states delay collapse, in
the extreme beyond t_max (not collapsed: counted as later than t_max in the
medians, which end where half the systems never collapse, and counted in the figure).

Sizes: ``full`` = studies/papers/collapse.toml (n in {8, 32, 64}, d in
{3, 8, 32, 128}, 24 betas in [0.25, 6], 32 systems per point, t_max = 100:
about 2 minutes on 2 cores, measured); ``default``: n in {8, 32}, d in {3, 32}, 10 betas
(about a minute); ``paper``: the full grid with 2 x 64 systems per point (GLPR state no
count: our choice), about 7 minutes on 2 cores (measured); ``smoke``: seconds.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, Thm 6.1, 6.8, 6.9.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from particles.sphere.flow_theory import equiangular_hitting_time
from studies.papers._flow import CHECKED, FLOW_DEFAULTS, build_model, solve_checked
from studies.papers.common import study_main, study_spec, sweep_and_merge
from studies.sweep import load_study
from studies.sweep.tasks import register_task

__all__ = ["run", "plot", "collapse", "gallery_numbers"]

_SIZES = {
    "smoke": {"sweep": {"seeds": 1}, "params": {"batch": 2, "t_max": 20.0, "n_save": 201, "backend": "numpy"},
              "grid": {"n": [8], "d": [3, 8], "beta": [1.0, 3.0]}},
    "default": {"sweep": {"seeds": 1}, "params": {"batch": 8, "t_max": 60.0, "n_save": 601, "backend": "numpy"},
                "grid": {"n": [8, 32], "d": [3, 32], "beta": {"start": 0.5, "stop": 5.0, "num": 10}}},
    "full": {},
    # the full grid with 2 x 64 starts per point (the spec's 2 x 16 are few for a median)
    "paper": {"params": {"batch": 64}},
}


def run(out: Path, size: str = "full", executor=None, progress: bool = True) -> dict[str, list[Path]]:
    out = Path(out)
    h5 = sweep_and_merge(study_spec("collapse", _SIZES[size]), out, executor, progress)
    return {"hdf5": [h5], "figure": [plot(h5, out / "collapse.png")]}


def _collapse_times(study_file: Path):
    """(T, ns, ds, betas, delta, t_max) of a merged collapse study, T of shape (n, d, beta, systems)."""
    st = load_study(study_file)
    dims, T = st["vars"]["collapse_time"]
    T = np.moveaxis(T, [dims.index("n"), dims.index("d"), dims.index("beta")], [0, 1, 2])
    T = T.reshape(T.shape[0], T.shape[1], T.shape[2], -1)
    fixed = json.loads(st["attrs"]["fixed_parameters"])
    return (T, st["coords"]["n"], st["coords"]["d"], st["coords"]["beta"], float(fixed["delta"]),
            float(fixed["t_max"]))


def plot(study_file: Path, figure: Path) -> Path:
    """Median collapse time (bootstrap SE bars, IQR band) vs beta, one panel per n, one line per d, ODE curve in black.

    Systems not collapsed by t_max count as later than every collapsed one, so the median
    is shown only where fewer than half never collapse (the same median as the gallery table).
    """
    from matplotlib.figure import Figure

    T, ns, ds, betas, delta, t_max = _collapse_times(study_file)
    fine = np.linspace(betas.min(), betas.max(), 200)
    from studies.papers.gallery_stats import bootstrap_se, censored_median

    fig = Figure(figsize=(4.2 * len(ns), 3.8), layout="constrained")
    axes = fig.subplots(1, len(ns), squeeze=False, sharey=True)[0]
    for i, n in enumerate(ns):
        ax = axes[i]
        for j, d in enumerate(ds):
            x = T[i, j]
            # not collapsed by t_max counts as later than t_max: the median and quartiles stay unbiased
            # and end (NaN, a gap in the line) where half or a quarter of the systems never collapse
            late = np.where(np.isnan(x), 2.0 * t_max, x)  # any value above t_max gives the same quartiles below it
            med = censored_median(x, axis=1)
            lo, hi = np.percentile(late, [25, 75], axis=1)
            lo[lo > t_max] = np.nan
            se = np.array([bootstrap_se(row, censored_median, n_boot=200) for row in x])
            never = np.mean(np.isnan(x), axis=1)
            ax.errorbar(betas, med, yerr=se, fmt="o-", ms=3, lw=1, elinewidth=0.8, capsize=1.5, color=f"C{j}",
                        label=f"d = {d}" + (f" ({never.mean():.0%} not collapsed)" if never.any() else ""))
            ax.fill_between(betas, lo, np.minimum(hi, t_max), color=f"C{j}", alpha=0.2, lw=0)
        ode = [equiangular_hitting_time(b, int(n), delta) for b in fine]
        ax.plot(fine, ode, color="k", lw=1.5, label=r"equiangular ODE: $g_\beta(t) = 1-\delta$")
        ax.axhline(t_max, color="gray", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel(r"$\beta$")
        ax.set_title(f"n = {n}", fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(rf"collapse time (all pairs $\geq 1-{delta:g}$)")
    fig.suptitle("SA collapse times from uniform starts (median ± bootstrap SE, IQR; not collapsed counts as > t_max)",
                 fontsize=10)
    figure = Path(figure)
    fig.savefig(figure, dpi=120)
    return figure



def gallery_numbers(out: Path) -> list[dict]:
    """Median collapse times against the equiangular-ODE time t*(beta, n), for the gallery table.

    Per n, the smallest and largest d at beta nearest 1, 3 and 5: the median over systems with
    systems not collapsed by t_max counted as later than every collapsed one (so the median is
    "—" once half have not collapsed; the figure's median leaves them out), its bootstrap
    standard error, and t* with g_beta(t*) = 1 - delta (GLPR Thm 6.8-6.9: the high-d limit).
    Then, per n at the smallest d, the first beta from which half the systems have not collapsed by t_max.
    GLPR state no collapse times, so ``paper`` is None.
    """
    from studies.papers.gallery_stats import bootstrap_se, censored_median, nearest_index

    T, ns, ds, betas, delta, t_max = _collapse_times(Path(out) / "collapse.h5")
    rows = []
    for i, n in enumerate(ns):
        for j in sorted({0, len(ds) - 1}):
            for b in sorted({nearest_index(betas, v) for v in (1.0, 3.0, 5.0)}):
                x = T[i, j, b]
                rows.append({"quantity": "median collapse time", "where": f"n = {n}, d = {ds[j]}, β = {betas[b]:g}",
                             "ours": float(censored_median(x)), "se": bootstrap_se(x, censored_median),
                             "paper": None, "source": "GLPR Thm 6.8-6.9",
                             "reference": f"equiangular ODE: {equiangular_hitting_time(float(betas[b]), int(n), delta):.3g}"})
        late = np.nonzero(np.mean(np.isnan(T[i, 0]), axis=1) >= 0.5)[0]
        rows.append({"quantity": f"first β with half not collapsed by t = {t_max:g}", "where": f"n = {n}, d = {ds[0]}",
                     "ours": float(betas[late[0]]) if late.size else None, "se": None, "paper": None,
                     "reference": None, "source": "GLPR Sec. 6 (metastability, low d)"})
    return rows


# ------------------------------------------------------------ sweep tasks
@register_task(
    "flow.collapse",
    defaults={**FLOW_DEFAULTS, "method": "rk4", "batch": 16, "t_max": 100.0, "n_save": 1001, "delta": 1e-3},
    dims={"collapse_time": ("system",)},
    **CHECKED,
)
def collapse(p: dict, seed: int) -> dict:
    """Time until every pair is within 1 - delta (P = 1), per system (NaN if beyond ``t_max``).

    With the equiangular-ODE time g_beta(t) = 1 - delta from g(0) = 0 as ``t_theory``.
    """
    from particles import fraction_close_pairs, uniform_sphere
    from particles.sphere.observables import collapse_time

    rng = np.random.default_rng(seed)
    model = build_model(p, rng)
    x = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_max"], p["n_save"])
    delta = p["delta"]
    frac = np.ones((len(t), x.shape[0]))
    frac[0] = fraction_close_pairs(x, delta=delta)
    # Integrate in segments of 20 save intervals and stop once every system has collapsed
    # (a collapsed SA configuration stays collapsed: it lies in a shrinking cap).
    i = 0
    while i < len(t) - 1 and frac[i].min() < 1.0:
        j = min(i + 20, len(t) - 1)
        sol = solve_checked(model, x, p, t[j], t[i + 1:j + 1], {"P": lambda y, m: fraction_close_pairs(y, delta=delta)},
                     t0=t[i], save_states=True, horizon=p["t_max"])
        frac[i + 1:j + 1] = sol.observables["P"]
        x, i = sol.x[-1], j
    return {"collapse_time": collapse_time(t, frac), "t_theory": equiangular_hitting_time(p["beta"], p["n"], delta)}


if __name__ == "__main__":
    raise SystemExit(study_main("collapse", run, __doc__))
