"""Metastability in low dimension: cluster counts, the energy staircase, merge times vs beta.

Two sweeps. ``metastability`` (studies/papers/metastability.toml): d = 2, n = 32,
beta in {1, 4, 9}, uniform starts; the number of clusters (components of
<x_i, x_j> > 1 - delta) and the normalised energy (1/n^2) sum exp(beta(<x_i,x_j> - 1))
over time, with the plateau levels sum_q (m_q/n)^2 of the current clusters (META).
GLPR Fig. 4 sees about 2 clusters at beta = 4 and 3 at beta = 9 for t in [18, 30].
``two_caps`` (studies/papers/two_caps.toml): two tight caps (16 + 16 and 8 + 24
tokens) with centre inner product rho0 = 0.5; merge time vs beta against the
two-cluster ODE, with a log-linear fit (slope -> 1 - rho0 as beta grows; the ODE
gives T ~ e^{beta (1 - rho0)} / beta, so log(beta T) is fitted too).

Sizes: ``full`` = the two spec files (3 x 8 x 8 trajectories to t = 100;
2 x 8 x 2 x 4 cap systems, beta in [6, 20], merge times up to ~800): about
45 s on 2 cores (measured); ``default``: t <= 40, fewer seeds, beta in [2, 14]
(about a minute); ``paper``: GLPR Fig. 4's n = 32, d = 2, beta in {1, 4, 9} (plateaus over
t in [18, 30]) and META's staircase to t = 100, with 8 x 64 starts per beta (the papers show
single runs, so the count is our choice) and 4 seeds per cap pair: 153 s on 2 cores
(measured); ``smoke``: seconds.

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

from particles.sphere.flow_theory import two_cluster_merge_time
from studies.papers._flow import CHECKED, FLOW_DEFAULTS, build_model, solve_checked
from studies.papers.common import study_main, study_spec, sweep_and_merge
from studies.sweep import load_study
from studies.sweep.tasks import register_task

__all__ = ["run", "plot", "fit_merge_times", "trajectory", "two_caps", "gallery_numbers"]

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
    # GLPR Fig. 4 / META at their n = 32, d = 2, beta in {1, 4, 9}: 8 x 64 starts per beta, 4 seeds per cap pair
    "paper": ({"params": {"batch": 64}}, {"sweep": {"seeds": 4}}),
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
        count = np.sum(np.isfinite(T[:, k]), axis=1)
        se = np.nanstd(T[:, k], axis=1, ddof=1) / np.sqrt(np.maximum(count, 1)) if T.shape[2] > 1 else None
        ax3.errorbar(cb, mean, yerr=se, fmt="o", color=c, ms=4, capsize=2,
                     label=f"sim {fit['m1']}+{fit['m2']} (mean ± SE)")
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



#: GLPR Fig. 4 (d = 2, n = 32): the cluster counts it shows on t in [18, 30], as MODELS.md reads them
_FIG4_CLUSTERS = {4.0: "about 2", 9.0: "about 3"}
_PLATEAU = (18.0, 30.0)


def _bessel_clusters(beta: float) -> int:
    """argmax_k k^2 I_k(beta): the cluster count of the linearisation around the uniform law on the circle (MODELS.md)."""
    from scipy.special import ive

    k = np.arange(1, 200)
    return int(k[np.argmax(k**2 * ive(k, beta))])  # ive = e^{-beta} I_k: same argmax, no overflow


def gallery_numbers(out: Path) -> list[dict]:
    """Plateau cluster counts and energies at d = 2 and merge times of two caps, for the gallery table.

    Per beta, over t in [18, 30] (the window of GLPR Fig. 4) or the run's last third when it
    ends earlier: the cluster count and the normalised energy, averaged over the window, then
    mean and standard error over the starts; the count against Fig. 4's (``paper``) and the
    linearisation's argmax_k k^2 I_k(beta), the energy against META's staircase level
    sum_q (m_q/n)^2 of the same clusters. Per cap pair: the slope of log T against beta
    (bootstrap SE over systems) against the two-cluster ODE's slope on the same betas and the
    asymptote 1 - rho0, and the mean merge time at the largest beta against the ODE.
    """
    from studies.papers.gallery_stats import bootstrap_se

    out = Path(out)
    tr = load_study(out / "metastability.h5")
    t, betas = tr["coords"]["t"], tr["coords"]["beta"]
    dims = tr["vars"]["clusters"][0]

    def arrange(a: np.ndarray) -> np.ndarray:  # -> (beta, t, systems)
        a = np.moveaxis(a, [dims.index("beta"), dims.index("t")], [0, 1])
        return a.reshape(a.shape[0], a.shape[1], -1)

    cl, en, lv = (arrange(tr["vars"][k][1]).astype(float) for k in ("clusters", "energy", "level"))
    fig4 = t.max() >= _PLATEAU[1]  # Fig. 4's counts hold on its window only
    lo, hi = _PLATEAU if fig4 else (t.max() * 2 / 3, t.max())
    win = (t >= lo - 1e-9) & (t <= hi + 1e-9)
    where_t = f"t ∈ [{lo:.3g}, {hi:.3g}]"
    fixed = json.loads(tr["attrs"]["fixed_parameters"])
    label = f"d = {fixed.get('d', 2)}, n = {fixed.get('n', 32)}"
    rows = []
    for i, b in enumerate(betas):
        c, e, lev = (np.mean(a[i, win], axis=0) for a in (cl, en, lv))  # (systems,)
        m = len(c)
        se = (lambda x: float(np.std(x, ddof=1) / np.sqrt(m))) if m > 1 else (lambda x: None)
        rows.append({"quantity": f"clusters ({label})", "where": f"β = {b:g}, {where_t}", "ours": float(np.mean(c)),
                     "se": se(c), "paper": _FIG4_CLUSTERS.get(float(b)) if fig4 else None,
                     "reference": f"linearisation argmax_k k² I_k(β): {_bessel_clusters(float(b))}",
                     "source": "GLPR Fig. 4"})
        rows.append({"quantity": "energy plateau (1/n²) Σ e^{β(⟨x_i,x_j⟩-1)}", "where": f"β = {b:g}, {where_t}",
                     "ours": float(np.mean(e)), "se": se(e), "paper": None,
                     "reference": f"staircase Σ_q (m_q/n)² of the clusters: {np.mean(lev):.4g}", "source": "META"})

    cs = load_study(out / "two_caps.h5")
    cdims, T = cs["vars"]["merge_time"]
    T = np.moveaxis(T, [cdims.index("beta"), cdims.index("caps")], [0, 1])
    T = T.reshape(T.shape[0], T.shape[1], -1)  # (beta, caps, systems)
    cb = cs["coords"]["beta"]
    cf = json.loads(cs["attrs"]["fixed_parameters"])
    rho0, level = float(cf["rho0"]), float(cf["level"])
    m1, m2 = cs["vars"]["m1"][1], cs["vars"]["m2"][1]
    for k in range(T.shape[1]):
        pair = f"caps {m1[k]} + {m2[k]}, ρ0 = {rho0:g}"
        ode = np.array([two_cluster_merge_time(float(b), int(m1[k]), int(m2[k]), rho0, level) for b in cb])

        def slope(samples: np.ndarray) -> float:  # samples: (systems, beta)
            with np.errstate(all="ignore"):
                mean = np.nanmean(samples, axis=0)
            ok = np.isfinite(mean) & (mean > 0)
            return float(np.polyfit(cb[ok], np.log(mean[ok]), 1)[0]) if ok.sum() >= 2 else float("nan")

        samples = T[:, k].T
        rows.append({"quantity": "slope of log(merge time) vs β", "where": f"{pair}, β = {cb.min():g}..{cb.max():g}",
                     "ours": slope(samples), "se": bootstrap_se(samples, slope), "paper": None,
                     "reference": f"two-cluster ODE: {np.polyfit(cb, np.log(ode), 1)[0]:.3f}; asymptote 1 - ρ0 = {1 - rho0:g}",
                     "source": "META, MODELS.md"})
        last = T[-1, k][np.isfinite(T[-1, k])]
        rows.append({"quantity": "mean merge time", "where": f"{pair}, β = {cb[-1]:g}",
                     "ours": float(np.mean(last)) if last.size else None,
                     "se": float(np.std(last, ddof=1) / np.sqrt(last.size)) if last.size > 1 else None,
                     "paper": None, "reference": f"two-cluster ODE: {ode[-1]:.4g}", "source": "META, MODELS.md"})
    return rows


# ------------------------------------------------------------ sweep tasks
def _cluster_levels(x: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Cluster counts and the staircase level sum_q (m_q / n)^2 of each system, (batch,) each."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = x.shape[-2]
    counts = np.empty(x.shape[0], dtype=np.int64)
    level = np.empty(x.shape[0])
    for b, g in enumerate(x @ np.swapaxes(x, -1, -2)):
        k, lab = connected_components(csr_matrix(g > 1.0 - delta), directed=False)
        counts[b] = k
        level[b] = float(np.sum((np.bincount(lab) / n) ** 2))
    return counts, level


@register_task(
    "flow.trajectory",
    defaults={**FLOW_DEFAULTS, "d": 2, "beta": 4.0, "method": "rk4", "batch": 8, "t_end": 60.0, "n_save": 301, "delta": 1e-3},
    dims={"t": ("t",), "clusters": ("t", "system"), "energy": ("t", "system"), "level": ("t", "system")},
    **CHECKED,
)
def trajectory(p: dict, seed: int) -> dict:
    """Cluster count, normalised energy (1/n^2) sum e^{beta(<x_i,x_j> - 1)} and its staircase level over time.

    The level sum_q (m_q/n)^2 uses the clusters of the graph <x_i, x_j> > 1 - delta;
    on a metastable plateau the energy sits just above it (META).
    """
    from particles import normalized_energy, uniform_sphere

    rng = np.random.default_rng(seed)
    model = build_model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    delta, beta = p["delta"], p["beta"]
    obs = {
        "cl": lambda x, m: np.stack(_cluster_levels(x, delta), axis=1),
        "energy": lambda x, m: normalized_energy(x, beta=beta),
    }
    sol = solve_checked(model, x0, p, p["t_end"], t, obs)
    cl = sol.observables["cl"]  # (time, batch, 2)
    return {"t": t, "clusters": cl[..., 0].astype(np.int64), "level": cl[..., 1], "energy": sol.observables["energy"]}


def _two_caps_state(p: dict, rng: np.random.Generator) -> np.ndarray:
    """(batch, m1 + m2, d): two caps of angular radius ``cap`` whose centres have inner product rho0."""
    d, m1, m2, batch = p["d"], p["m1"], p["m2"], p["batch"]
    c1 = np.zeros(d)
    c1[0] = 1.0
    c2 = np.zeros(d)
    c2[0], c2[1] = p["rho0"], np.sqrt(1.0 - p["rho0"] ** 2)
    centres = np.concatenate([np.repeat(c1[None], m1, 0), np.repeat(c2[None], m2, 0)])
    x = centres[None] + p["cap"] * rng.standard_normal((batch, m1 + m2, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    # random orientation per system (the flow is rotation equivariant)
    from particles import random_rotation

    return np.stack([xb @ random_rotation(d, rng).T for xb in x])


def _centre_ip(m1: int):
    def fn(x, model=None):
        a = x[:, :m1].sum(axis=1)
        b = x[:, m1:].sum(axis=1)
        return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    return fn


@register_task(
    "flow.two_caps",
    defaults={**FLOW_DEFAULTS, "d": 2, "beta": 4.0, "method": "rk4", "backend": "numpy", "batch": 4, "m1": 16, "m2": 16,
              "rho0": 0.5, "cap": 0.02, "level": 0.99, "n_save": 2001, "horizon": 3.0},
    dims={"merge_time": ("system",)},
    **CHECKED,
)
def two_caps(p: dict, seed: int) -> dict:
    """Merge time of two tight caps: first time the centres' inner product reaches ``level``.

    Integrated up to ``horizon`` times the two-cluster ODE prediction (returned
    as ``merge_time_theory``), with ``n_save`` save points for the crossing
    (linear interpolation between them); NaN if a system has not merged.
    """
    rng = np.random.default_rng(seed)
    model = build_model({**p, "qkv": "identity"}, rng)
    x0 = _two_caps_state(p, rng)
    theory = two_cluster_merge_time(p["beta"], p["m1"], p["m2"], p["rho0"], p["level"])
    t_end = p["horizon"] * theory + 5.0
    t = np.linspace(0.0, t_end, p["n_save"])
    sol = solve_checked(model, x0, p, t_end, t, {"rho": _centre_ip(p["m1"])})
    rho = sol.observables["rho"]  # (time, batch)
    out = np.full(rho.shape[1], np.nan)
    for b in range(rho.shape[1]):
        hit = np.nonzero(rho[:, b] >= p["level"])[0]
        if hit.size and hit[0] > 0:
            i = hit[0]
            w = (p["level"] - rho[i - 1, b]) / (rho[i, b] - rho[i - 1, b])
            out[b] = t[i - 1] + w * (t[i] - t[i - 1])
    return {"merge_time": out, "merge_time_theory": theory}
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
