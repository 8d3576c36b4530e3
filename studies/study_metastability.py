"""Metastability in low dimension: cluster counts, the energy staircase, merge times vs beta.

Two sweeps. ``metastability`` (studies/specs/metastability.toml): d = 2, n = 32,
beta in {1, 4, 9}, uniform starts; the number of clusters (components of
<x_i, x_j> > 1 - delta) and the normalised energy (1/n^2) sum exp(beta(<x_i,x_j> - 1))
over time, with the plateau levels sum_q (m_q/n)^2 of the current clusters (META).
GLPR Fig. 4 sees about 2 clusters at beta = 4 and 3 at beta = 9 for t in [18, 30].
``two_caps`` (studies/specs/two_caps.toml): two tight caps (16 + 16 and 8 + 24
tokens) with centre inner product rho0 = 0.5; merge time vs beta against the
two-cluster ODE, with a log-linear fit (slope -> 1 - rho0 as beta grows; the ODE
gives T ~ e^{beta (1 - rho0)} / beta, so log(beta T) is fitted too).

Sizes: ``full`` = the two spec files (3 x 8 x 8 trajectories to t = 100;
2 x 8 x 2 x 4 cap systems, beta in [6, 20], merge times up to ~800): about
20 minutes on 2 cores; ``default``: t <= 40, fewer seeds, beta in [2, 14]
(about a minute); ``smoke``: seconds.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, Fig. 4.
Geshkovski, Koubbi, Polyanskiy, Rigollet, "Dynamic metastability in the
self-attention model", arXiv:2410.06833.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from particles.flow_theory import two_cluster_merge_time
from .study_common import study_main, study_spec, sweep_and_merge
from .sweep import load_study

__all__ = ["run", "plot", "fit_merge_times"]

_SIZES = {
    "smoke": (
        {"sweep": {"seeds": 1}, "params": {"batch": 2, "t_end": 10.0, "n_save": 21}, "grid": {"beta": [1.0, 9.0]}},
        {"sweep": {"seeds": 1}, "params": {"batch": 2, "n_save": 201},
         "grid": {"beta": [2.0, 3.0, 4.0], "zip": {"caps": {"m1": [4, 2], "m2": [4, 6]}}}},
    ),
    "default": (
        {"sweep": {"seeds": 3}, "params": {"t_end": 40.0, "n_save": 201}},
        {"sweep": {"seeds": 1}, "grid": {"beta": {"start": 2.0, "stop": 14.0, "num": 7},
                                         "zip": {"caps": {"m1": [16, 8], "m2": [16, 24]}}}},
    ),
    "full": ({}, {}),
}


def run(out: Path, size: str = "full", executor=None, progress: bool = True) -> dict[str, list[Path]]:
    out = Path(out)
    traj_over, caps_over = _SIZES[size]
    traj = sweep_and_merge(study_spec("metastability", traj_over), out, executor, progress)
    caps = sweep_and_merge(study_spec("two_caps", caps_over), out, executor, progress)
    fits = fit_merge_times(caps)
    with h5py.File(caps, "a") as f:  # the fit results travel with the data
        f.attrs["merge_time_fits"] = json.dumps(fits)
    fig = plot(traj, caps, fits, out / "metastability.png")
    return {"hdf5": [traj, caps], "figure": [fig]}


def fit_merge_times(caps_file: Path) -> list[dict]:
    """Least-squares slopes of log T and log(beta T) vs beta, per cap pair, simulation and ODE."""
    st = load_study(caps_file)
    dims, T = st["vars"]["merge_time"]
    T = np.moveaxis(T, [dims.index("beta"), dims.index("caps")], [0, 1])
    T = np.nanmean(T.reshape(T.shape[0], T.shape[1], -1), axis=2)  # (beta, caps)
    _, th = st["vars"]["merge_time_theory"]
    th = np.nanmean(np.moveaxis(th, [dims.index("beta"), dims.index("caps")], [0, 1]).reshape(T.shape[0], T.shape[1], -1), axis=2)
    beta = st["coords"]["beta"]
    rho0 = json.loads(st["attrs"]["fixed_parameters"])["rho0"]
    m1, m2 = st["vars"]["m1"][1], st["vars"]["m2"][1]
    fits = []
    for k in range(T.shape[1]):
        ok = np.isfinite(T[:, k])
        row = {"m1": int(m1[k]), "m2": int(m2[k]), "one_minus_rho0": 1.0 - rho0}
        if ok.sum() >= 2:
            row["slope_log_T"] = float(np.polyfit(beta[ok], np.log(T[ok, k]), 1)[0])
            row["slope_log_beta_T"] = float(np.polyfit(beta[ok], np.log(beta[ok] * T[ok, k]), 1)[0])
            row["intercept_log_T"] = float(np.polyfit(beta[ok], np.log(T[ok, k]), 1)[1])
            row["ode_slope_log_T"] = float(np.polyfit(beta[ok], np.log(th[ok, k]), 1)[0])
            row["max_rel_dev_from_ode"] = float(np.max(np.abs(T[ok, k] / th[ok, k] - 1.0)))
        fits.append(row)
    return fits


def plot(traj_file: Path, caps_file: Path, fits: list[dict], figure: Path) -> Path:
    from matplotlib.figure import Figure

    tr = load_study(traj_file)
    t = tr["coords"]["t"]
    betas = tr["coords"]["beta"]
    dims, cl = tr["vars"]["clusters"]
    _, en = tr["vars"]["energy"]
    _, lv = tr["vars"]["level"]
    # -> (beta, t, systems)
    order = [dims.index("beta"), dims.index("t")]

    def arrange(a):
        a = np.moveaxis(a, order, [0, 1])
        return a.reshape(a.shape[0], a.shape[1], -1)

    cl, en, lv = arrange(cl), arrange(en), arrange(lv)
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    colors = ["C0", "C1", "C3", "C2", "C4"]
    for i, b in enumerate(betas):
        med = np.nanmedian(cl[i], axis=1)
        lo, hi = np.nanpercentile(cl[i], [25, 75], axis=1)
        ax1.plot(t, med, color=colors[i % 5], label=rf"$\beta$ = {b:g}")
        ax1.fill_between(t, lo, hi, color=colors[i % 5], alpha=0.2, lw=0)
    ax1.set_yscale("log")
    _count_ticks(ax1)
    ax1.set_xlabel("t")
    ax1.set_ylabel("clusters (median, IQR)")
    ax1.set_title("cluster count, d = 2 (GLPR Fig. 4)", fontsize=10)
    ax1.legend(fontsize=8)
    i = len(betas) - 1
    for s in range(min(4, en.shape[2])):
        ax2.plot(t, en[i, :, s], color=colors[s], lw=1.2)
        ax2.plot(t, lv[i, :, s], color=colors[s], lw=0.8, ls="--")
    ax2.set_xlabel("t")
    ax2.set_ylabel(r"$\frac{1}{n^2}\sum_{ij} e^{\beta(\langle x_i,x_j\rangle-1)}$")
    ax2.set_title(rf"energy staircase, $\beta$ = {betas[i]:g} (dashed: $\sum_q (m_q/n)^2$)", fontsize=10)

    cs = load_study(caps_file)
    cdims, T = cs["vars"]["merge_time"]
    T = np.moveaxis(T, [cdims.index("beta"), cdims.index("caps")], [0, 1])
    T = T.reshape(T.shape[0], T.shape[1], -1)
    cb = cs["coords"]["beta"]
    rho0 = json.loads(cs["attrs"]["fixed_parameters"])["rho0"]
    level = json.loads(cs["attrs"]["fixed_parameters"])["level"]
    fine = np.linspace(cb.min(), cb.max(), 100)
    for k, fit in enumerate(fits):
        c = colors[k % 5]
        mean = np.nanmean(T[:, k], axis=1)
        ax3.errorbar(cb, mean, yerr=np.nanstd(T[:, k], axis=1), fmt="o", color=c, ms=4,
                     label=f"sim {fit['m1']}+{fit['m2']}")
        ode = [two_cluster_merge_time(b, fit["m1"], fit["m2"], rho0, level) for b in fine]
        ax3.plot(fine, ode, color=c, lw=1, label="two-cluster ODE")
        if "slope_log_T" in fit:
            ax3.plot(fine, np.exp(fit["intercept_log_T"] + fit["slope_log_T"] * fine), color=c, ls=":", lw=1,
                     label=f"fit: slope {fit['slope_log_T']:.3f} (log βT: {fit['slope_log_beta_T']:.3f})")
    ax3.set_yscale("log")
    _plain_log_labels(ax3)
    ax3.set_xlabel(r"$\beta$")
    ax3.set_ylabel("merge time")
    ax3.set_title(rf"two caps, $\rho_0$ = {rho0:g}: slope $\to 1-\rho_0$ = {1 - rho0:g}", fontsize=10)
    ax3.legend(fontsize=7)
    figure = Path(figure)
    fig.savefig(figure, dpi=120)
    return figure


def _count_ticks(ax) -> None:
    """Integer tick labels (1, 2, 3, 5, 10, 20, ...) on a log axis of cluster counts."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, StrMethodFormatter

    lo, hi = ax.get_ylim()
    ticks = [v for v in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500, 1000) if lo <= v <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plain_log_labels(ax) -> None:
    """Plain numbers (2.4, not 2.4 x 10^0) on a log axis."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


if __name__ == "__main__":
    raise SystemExit(study_main("metastability", run, __doc__))
