"""High dimension: pairwise inner products of the SA flow vs the equiangular ODE (GLPR Thm 6.9).

For n fixed and d large, uniform starts have <x_i(0), x_j(0)> ~ N(0, 1/d), and
every pairwise inner product follows the solution g(t) of the equiangular ODE
(GLPR eq. 6.9) from g(0) = 0, with fluctuations of order d^{-1/2}. The figure
shows the histograms of all pairwise inner products at saved times (largest d)
with g(t) marked, the mean +- standard deviation against g(t) for every d, and
the spread at a middle time times sqrt(d) (flat if fluctuations ~ d^{-1/2}).

Sizes: ``full`` = studies/papers/high_dim.toml (n = 32, d in {64, ..., 2048},
beta in {1, 4}, 16 systems per point: about 20 s on 2 cores, measured);
``default``: d in {32, 128, 512} (under a minute); ``paper``: the full grid with 4 x 64
systems per point (Thm 6.9 is asymptotic; no count to follow), about 4 minutes on 2 cores
(measured); ``smoke``: seconds.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, arXiv:2312.10794, Thm 6.8 (eq. 6.9), Thm 6.9.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from particles.sphere.flow_theory import equiangular_solution
from studies.papers._flow import CHECKED, FLOW_DEFAULTS, build_model, solve_checked
from studies.papers.common import study_main, study_spec, sweep_and_merge
from studies.sweep import load_study
from studies.sweep.tasks import register_task

__all__ = ["run", "plot", "high_dim", "gallery_numbers"]

_SIZES = {
    "smoke": {"sweep": {"seeds": 1}, "params": {"batch": 2, "n_save": 7, "bins": 20, "backend": "numpy"},
              "grid": {"d": [16, 64], "zip": {"temperature": {"beta": [1.0], "t_end": [3.0]}}}},
    "default": {"sweep": {"seeds": 2}, "params": {"backend": "numpy"},
                "grid": {"d": [32, 128, 512], "zip": {"temperature": {"beta": [1.0, 4.0], "t_end": [6.0, 12.0]}}}},
    "full": {},
    # Thm 6.9's n = 32, d up to 2048: 4 x 64 starts per point for the pair histograms
    "paper": {"params": {"batch": 64}},
}


def run(out: Path, size: str = "full", executor=None, progress: bool = True) -> dict[str, list[Path]]:
    out = Path(out)
    h5 = sweep_and_merge(study_spec("high_dim", _SIZES[size]), out, executor, progress)
    return {"hdf5": [h5], "figure": [plot(h5, out / "high_dim.png")]}


def _arrange(st: dict, name: str) -> np.ndarray:
    """(d, temperature, seed, ...) for a variable of the merged file."""
    dims, a = st["vars"][name] if name in st["vars"] else (("t",), st["coords"][name])
    if "d" not in dims:
        return a
    return np.moveaxis(a, [dims.index("d"), dims.index("temperature"), dims.index("seed")], [0, 1, 2])


def plot(study_file: Path, figure: Path) -> Path:
    from matplotlib.figure import Figure

    st = load_study(study_file)
    ds = st["coords"]["d"]
    betas = st["vars"]["beta"][1]
    t = _arrange(st, "t")
    hist, bins = _arrange(st, "hist"), st["coords"]["bin"]
    mean, std, g = _arrange(st, "ip_mean"), _arrange(st, "ip_std"), _arrange(st, "g_theory")
    if t.ndim == 1:  # one time grid for all tasks: broadcast like the others
        t = np.broadcast_to(t, mean.shape)
    nb = len(betas)
    fig = Figure(figsize=(14, 3.6 * nb), layout="constrained")
    axes = fig.subplots(nb, 3, squeeze=False)
    for k, beta in enumerate(betas):
        ax = axes[k, 0]
        times = t[-1, k, 0]
        h = np.nanmean(hist[-1, k], axis=0)  # (t, bin), mean over seeds
        step = max(1, len(times) // 6)
        for i in range(0, len(times), step):
            c = f"C{(i // step) % 10}"
            ax.plot(bins, h[i], color=c, lw=1, drawstyle="steps-mid", label=f"t = {times[i]:.2g}")
            ax.axvline(g[-1, k, 0, i], color=c, ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-2)
        ax.set_xlabel(r"$\langle x_i, x_j\rangle$")
        ax.set_ylabel("density")
        ax.set_title(rf"d = {ds[-1]}, $\beta$ = {beta:g}: histograms, dashed: g(t)", fontsize=10)
        ax.legend(fontsize=7)
        ax = axes[k, 1]
        for j, d in enumerate(ds):
            m, s = np.nanmean(mean[j, k], axis=0), np.nanmean(std[j, k], axis=0)
            ax.plot(t[j, k, 0], m, color=f"C{j}", lw=1, label=f"d = {d}")
            ax.fill_between(t[j, k, 0], m - s, m + s, color=f"C{j}", alpha=0.15, lw=0)
        ax.plot(t[-1, k, 0], g[-1, k, 0], "k--", lw=1.2, label="equiangular ODE g(t)")
        ax.set_xlabel("t")
        ax.set_ylabel(r"mean $\pm$ sd of $\langle x_i,x_j\rangle$")
        ax.legend(fontsize=7)
        ax = axes[k, 2]
        mid = mean.shape[-1] // 3
        spread = np.array([np.nanmean(std[j, k, :, mid]) for j in range(len(ds))])
        devs = np.max(np.abs(mean[:, k] - g[:, k]), axis=-1)  # (d, seed)
        dev = np.nanmean(devs, axis=1)
        seeds = std.shape[2]
        # standard errors over the seeds (each a batch of systems); none with one seed
        se_sd = np.nanstd(std[:, k, :, mid], axis=1, ddof=1) / np.sqrt(seeds) if seeds > 1 else None
        se_dev = np.nanstd(devs, axis=1, ddof=1) / np.sqrt(seeds) if seeds > 1 else None
        ax.errorbar(ds, spread, yerr=se_sd, fmt="o-", capsize=2, label=f"sd at t = {t[-1, k, 0, mid]:.2g} (± SE)")
        ax.errorbar(ds, dev, yerr=se_dev, fmt="s-", capsize=2, label=r"max$_t$ |mean - g(t)| (± SE)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.loglog(ds, spread[0] * np.sqrt(ds[0] / ds), "k:", label=r"$\propto d^{-1/2}$")
        ax.set_xticks(ds, [str(d) for d in ds], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("d")
        ax.legend(fontsize=7)
        ax.set_title("fluctuations vs dimension", fontsize=10)
    fig.suptitle("SA flow in high dimension, n = 32 (GLPR Thm 6.9)", fontsize=10)
    figure = Path(figure)
    fig.savefig(figure, dpi=120)
    return figure



def _ks_to_normal(hist: np.ndarray, bins: np.ndarray, mean: float, sd: float) -> float:
    """Largest |F_hist - Phi((x - mean) / sd)| over the bin edges (the histogram's CDF is exact there)."""
    from scipy.stats import norm

    width = bins[1] - bins[0]
    edges = np.append(bins - 0.5 * width, bins[-1] + 0.5 * width)
    cdf = np.concatenate([[0.0], np.cumsum(hist) * width])
    return float(np.max(np.abs(cdf - norm.cdf(edges, loc=mean, scale=sd))))


def gallery_numbers(out: Path) -> list[dict]:
    """Pairwise inner products against the equiangular ODE (GLPR Thm 6.9), for the gallery table.

    Per beta, at the figure's middle time t_m: the mean of <x_i, x_j> at the largest d against g(t_m);
    max_t |mean - g(t)| at the smallest and largest d; the slope of log sd against log d
    (Thm 6.9: fluctuations of order d^{-1/2}, slope -1/2); and the Kolmogorov-Smirnov distance
    of the pair law at the largest d to N(g(t_m), sd^2) (0 if the pairs are Gaussian around
    the ODE; at bin edges). Standard errors are over the seeds (each a batch of systems).
    GLPR state no numbers here, so ``paper`` is None.
    """
    st = load_study(Path(out) / "high_dim.h5")
    ds = st["coords"]["d"]
    betas = st["vars"]["beta"][1]
    t = _arrange(st, "t")
    hist, bins = _arrange(st, "hist"), st["coords"]["bin"]
    mean, std, g = _arrange(st, "ip_mean"), _arrange(st, "ip_std"), _arrange(st, "g_theory")
    if t.ndim == 1:
        t = np.broadcast_to(t, mean.shape)
    seeds = mean.shape[2]

    def se(x: np.ndarray) -> float | None:
        return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None

    mid = mean.shape[-1] // 3  # the figure's middle time
    rows = []
    for k, beta in enumerate(betas):
        tm, gm = t[-1, k, 0, mid], g[-1, k, 0, mid]
        where = f"β = {beta:g}, t = {tm:g}"
        rows.append({"quantity": "mean ⟨x_i, x_j⟩", "where": f"{where}, d = {ds[-1]}", "ours": float(np.mean(mean[-1, k, :, mid])),
                     "se": se(mean[-1, k, :, mid]), "paper": None, "reference": f"equiangular ODE g(t): {gm:.4g}",
                     "source": "GLPR Thm 6.8 (eq. 6.9)"})
        for j in sorted({0, len(ds) - 1}):
            dev = np.max(np.abs(mean[j, k] - g[j, k]), axis=-1)  # (seed,)
            rows.append({"quantity": "max_t |mean - g(t)|", "where": f"β = {beta:g}, d = {ds[j]}", "ours": float(np.mean(dev)),
                         "se": se(dev), "paper": None, "reference": "→ 0 as d → ∞", "source": "GLPR Thm 6.9"})
        if len(ds) > 1:
            slopes = np.array([np.polyfit(np.log(ds), np.log(std[:, k, s, mid]), 1)[0] for s in range(seeds)])
            rows.append({"quantity": "slope of log sd vs log d", "where": f"{where}, d = {ds[0]}..{ds[-1]}",
                         "ours": float(np.mean(slopes)), "se": se(slopes), "paper": None,
                         "reference": "d^(-1/2): -0.5", "source": "GLPR Thm 6.9"})
        h = np.mean(hist[-1, k, :, mid], axis=0)
        rows.append({"quantity": "KS distance to N(g(t), sd²)", "where": f"{where}, d = {ds[-1]}",
                     "ours": _ks_to_normal(h, bins, gm, float(np.sqrt(np.mean(std[-1, k, :, mid] ** 2)))),
                     "se": None, "paper": None, "reference": "0 for Gaussian pairs around g(t)", "source": "GLPR Thm 6.9"})
    return rows


# ------------------------------------------------------------ sweep tasks
@register_task(
    "flow.high_dim",
    defaults={**FLOW_DEFAULTS, "d": 512, "method": "rk4", "dt": 0.05, "batch": 4, "t_end": 6.0, "n_save": 7, "bins": 80},
    dims={"t": ("t",), "hist": ("t", "bin"), "bin": ("bin",), "ip_mean": ("t",), "ip_std": ("t",), "g_theory": ("t",)},
    **CHECKED,
)
def high_dim(p: dict, seed: int) -> dict:
    """Histogram (density on [-1, 1]) of all pairwise inner products at saved times, vs the ODE g(t).

    GLPR Thm 6.9: for n fixed and d large, every <x_i(t), x_j(t)> is close to
    g(t) (equiangular ODE from g(0) = 0), with fluctuations of order d^{-1/2}.
    """
    from particles import pair_inner_products, uniform_sphere

    rng = np.random.default_rng(seed)
    model = build_model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    edges = np.linspace(-1.0, 1.0, p["bins"] + 1)
    sol = solve_checked(model, x0, p, p["t_end"], t, {"ip": lambda x, m: pair_inner_products(x)})
    ip = sol.observables["ip"].reshape(len(t), -1)  # (time, batch * pairs)
    hist = np.stack([np.histogram(np.clip(r, -1, 1), bins=edges, density=True)[0] for r in ip])
    return {"t": t, "hist": hist, "bin": 0.5 * (edges[1:] + edges[:-1]), "ip_mean": ip.mean(axis=1),
            "ip_std": ip.std(axis=1), "g_theory": equiangular_solution(t, p["beta"], p["n"])}


if __name__ == "__main__":
    raise SystemExit(study_main("high_dim", run, __doc__))
