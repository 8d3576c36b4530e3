"""Finite shaped transformers against their covariance SDE, and rank collapse of softmax attention.

1. Law at fixed depth-to-width ratio T = d/n: for widths n = n_1 < n_2 < ..., finite shaped
   transformer blocks (exact finite-width chain, and the plain torch network at one width)
   of depth d = T n, against the shaped-block SDE (PSD-projected Euler-Maruyama, dt and dt/10
   on the same Brownian path). Stored:
   samples of rho^{12}_T and V^{11}_T, their first four moments, two-sample KS statistics
   (and p-values) of every width against the SDE, and the SDE's own dt check. The KS
   statistic should fall as n grows (finite networks approach the SDE; NOCI Fig. 1).
2. Rank collapse: mean off-diagonal correlation vs layer for shaped attention, standard
   softmax attention (tau = sqrt(n_k)) and standard attention with pre-LN, all attention-only
   residual networks with the same gamma.

Output: ``cov_study.h5`` (groups ``law``, ``sde``, ``collapse``; named dimensions as HDF5
dimension scales, so ``xarray.open_dataset(path, group="law", engine="h5netcdf")`` works) and
figures ``cov_density.png`` (density of rho^{12}_T, finite networks over the SDE, with each bin's
standard error), ``cov_ks.png`` (KS statistic vs n, with the 5% critical value of sampling alone)
and ``cov_collapse.png`` (mean rho vs layer, with its standard error over networks,
``collapse/sem_rho``). :func:`gallery_numbers` summarises the file for the gallery.

Sizes: ``full``: T = 0.75, gamma = 1/sqrt(8), tau0 = 1, rho0 = 0.2, m = 4 tokens, widths
{50, 100, 200, 400, 800}, 4096 chain samples per width, 1024 plain-network samples at
n = 200, 16384 SDE paths at dt = 0.01 and 0.001; collapse at n = 200 over 150 layers
(256 networks, 64 for pre-LN): about 30 minutes on 2 cores (the plain network dominates).
``default``: widths {50, 100, 200}, 2048 samples, plain 256 (a few minutes).
``paper``: NOCI Fig. 1's n = 200, d = 150 (T = 0.75) among widths {50, 100, 200, 400}; the
paper's token count and sample counts are not stated in our sources, so m = 4, 2048 chain
samples, 512 plain-network samples at n = 200, 8192 SDE paths; rank collapse at n = 200 over
150 layers. 7 minutes on 2 cores (419 s measured, with other work on the machine; the plain
network at n = 200 dominates).
``smoke``: tiny (seconds; the tests run it).

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, Fig. 1 and section 4.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import stats

from studies.sweep.tasks import register_task
from studies.papers.gallery_nets import cov_numbers as gallery_numbers  # the gallery table (issue 13)
from studies.papers.gallery_nets import ks_critical

__all__ = ["gallery_numbers", "SIZES", "CovStudySize", "plot", "run", "rho_law"]


@dataclass(frozen=True)
class CovStudySize:
    widths: tuple[int, ...]
    T: float
    m: int
    samples: int
    plain_width: int
    plain_samples: int
    sde_paths: int
    dt: float
    collapse_n: int
    collapse_layers: int
    collapse_batch: int
    collapse_batch_preln: int
    gamma: float = 1 / math.sqrt(8)
    tau0: float = 1.0
    rho0: float = 0.2


SIZES = {
    "smoke": CovStudySize((16, 32), 0.5, 3, 256, 16, 64, 512, 0.05, 32, 24, 16, 8),
    "default": CovStudySize((50, 100, 200), 0.75, 4, 2048, 100, 256, 8192, 0.01, 100, 150, 128, 32),
    "full": CovStudySize((50, 100, 200, 400, 800), 0.75, 4, 4096, 200, 1024, 16384, 0.01, 200, 150, 256, 64),
    # NOCI Fig. 1: n = 200, d = 150 (T = 0.75), gamma = 1/sqrt(8), tau0 = 1, rho0 = 0.2, SDE step 0.01 [U];
    # the paper's token count m and sample counts are not stated in the sources we have: m = 4, 2048 / 512.
    "paper": CovStudySize((50, 100, 200, 400), 0.75, 4, 2048, 200, 512, 8192, 0.01, 200, 150, 256, 64),
}


def _moments(x: np.ndarray) -> np.ndarray:
    x = x[np.isfinite(x)]
    return np.array([x.mean(), x.var(ddof=1), stats.skew(x), stats.kurtosis(x)])


def _put(g: h5py.Group, name: str, data, dims: tuple[str, ...], coords: dict[str, np.ndarray]) -> None:
    """A dataset with its dimensions attached as dimension scales (created on first use)."""
    data = np.asarray(data)
    ds = g.create_dataset(name, data=data, compression="gzip" if data.size > 1024 else None)
    for ax, dim in enumerate(dims):
        if dim not in g:
            sc = g.create_dataset(dim, data=coords.get(dim, np.arange(data.shape[ax])))
            sc.make_scale(dim)
        ds.dims[ax].attach_scale(g[dim])


def _sde_samples(sz: CovStudySize, V0: np.ndarray, seed: int, progress: bool):
    from integrators import BrownianIncrements, solve
    from particles.covariance import ShapedBlockSDE

    model = ShapedBlockSDE(sz.gamma, sz.tau0)
    batch = np.repeat(V0[None], sz.sde_paths, axis=0)
    fine = BrownianIncrements(tuple(model.noise_shape(batch.shape)), sz.dt / 10, seed)
    out = {}
    for label, path in (("dt", fine.coarsen(10)), ("dt/10", fine)):
        sol = solve(model, batch, sz.T, dt=path.step, method="psd-euler-maruyama", backend="numba", brownian=path,
                    exit_threshold=1e6, save_states=True, progress=progress)  # fmt: skip
        out[label] = sol
    return model, out


def run(out: Path, size: str = "full", executor=None, progress: bool = True) -> dict[str, list[Path]]:
    """Run the study of size ``size`` into ``out``; returns {"hdf5": [...], "figure": [...]}.

    Runs in this process (``executor`` is accepted for the ``attnflow study`` interface and
    not used: the chains are vectorised over samples already).
    """
    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer, StandardTransformer
    from integrators.validation import check_choice

    check_choice("size", size, SIZES)
    sz = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    m = sz.m
    V0 = (1 - sz.rho0) * np.eye(m) + sz.rho0 * np.ones((m, m))
    model, sde = _sde_samples(sz, V0, seed=1, progress=progress)
    sols = {k: s for k, s in sde.items()}
    ok = ~(sols["dt"].exited | sols["dt/10"].exited)
    Vs = sols["dt"].final[ok]
    rho_sde = Vs[:, 0, 1] / np.sqrt(Vs[:, 0, 0] * Vs[:, 1, 1])
    Vf = sols["dt/10"].final[ok]
    rho_fine = Vf[:, 0, 1] / np.sqrt(Vf[:, 0, 0] * Vf[:, 1, 1])

    sims = [(f"chain n={n}", n, "chain", sz.samples) for n in sz.widths]
    sims.append((f"plain n={sz.plain_width}", sz.plain_width, "plain", sz.plain_samples))
    rho_f, diag_f, ks, ksp, ksd, kinds, ns, walls = [], [], [], [], [], [], [], []
    for i, (label, n, kind, samples) in enumerate(sims):
        net = ShapedTransformer(n, sz.gamma, sz.tau0)
        sim = FiniteWidthChain(net) if kind == "chain" else net
        depth = max(1, round(sz.T * n))
        res = sim.run(V0, depth, seed=100 + i, batch=samples, record_every=depth)
        r = res.rho()[-1]
        rho_f.append(np.pad(r, (0, sz.samples - len(r)), constant_values=np.nan)[: sz.samples])
        d = res.final[:, 0, 0]
        diag_f.append(np.pad(d, (0, sz.samples - len(d)), constant_values=np.nan)[: sz.samples])
        k = stats.ks_2samp(r, rho_sde)
        ks.append(k.statistic)
        ksp.append(k.pvalue)
        ksd.append(stats.ks_2samp(d, Vs[:, 0, 0]).statistic)
        kinds.append(kind)
        ns.append(n)
        walls.append(res.meta["wall_time_s"])
        if progress:
            print(f"cov study: {label} depth={depth}: KS(rho12)={k.statistic:.4f} ({walls[-1]:.1f} s)")

    collapse, collapse_sem = {}, {}
    archs = {
        "shaped": (FiniteWidthChain(ShapedTransformer(sz.collapse_n, sz.gamma, sz.tau0, layers="attention")),
                   sz.collapse_batch),
        "standard": (FiniteWidthChain(StandardTransformer(sz.collapse_n, sz.gamma)), sz.collapse_batch),
        "standard-preln": (StandardTransformer(sz.collapse_n, sz.gamma, pre_ln=True), sz.collapse_batch_preln),
    }  # fmt: skip
    iu = np.triu_indices(m, 1)
    for j, (name, (sim, b)) in enumerate(archs.items()):
        res = sim.run(V0, sz.collapse_layers, seed=500 + j, batch=b)
        V = res.V
        R = V / np.sqrt(np.einsum("lbii,lbjj->lbij", V, V))
        per_net = R[:, :, iu[0], iu[1]].mean(axis=2)  # (layer, network): each network's mean correlation
        collapse[name] = per_net.mean(axis=1)
        collapse_sem[name] = per_net.std(axis=1, ddof=1) / np.sqrt(per_net.shape[1])
    layers = np.arange(sz.collapse_layers + 1)

    h5 = out / "cov_study.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["study"] = "cov"
        f.attrs["size"] = size
        f.attrs["parameters_json"] = json.dumps(asdict(sz))
        f.attrs["model"] = model.name
        f.attrs["params_json"] = json.dumps(model.params())
        f.attrs["wall_time_s"] = time.perf_counter() - wall
        g = f.create_group("law")
        cs = {"simulation": np.arange(len(sims)), "moment": np.array([b"mean", b"var", b"skew", b"kurtosis"])}
        _put(g, "width", np.asarray(ns), ("simulation",), cs)
        _put(g, "simulator", np.array([k.encode() for k in kinds]), ("simulation",), cs)
        _put(g, "depth", np.asarray([max(1, round(sz.T * n)) for n in ns]), ("simulation",), cs)
        _put(g, "rho12", np.stack(rho_f), ("simulation", "sample"), cs)
        _put(g, "V11", np.stack(diag_f), ("simulation", "sample"), cs)
        _put(g, "rho12_moments", np.stack([_moments(r) for r in rho_f]), ("simulation", "moment"), cs)
        _put(g, "V11_moments", np.stack([_moments(d) for d in diag_f]), ("simulation", "moment"), cs)
        _put(g, "ks_rho12", np.asarray(ks), ("simulation",), cs)
        _put(g, "ks_rho12_pvalue", np.asarray(ksp), ("simulation",), cs)
        _put(g, "ks_V11", np.asarray(ksd), ("simulation",), cs)
        _put(g, "wall_time_s", np.asarray(walls), ("simulation",), cs)
        g = f.create_group("sde")
        g.attrs["dt"] = sz.dt
        g.attrs["exit_fraction"] = float(1 - ok.mean())
        g.attrs["ks_rho12_dt_vs_dt10"] = float(stats.ks_2samp(rho_sde, rho_fine).statistic)
        cs = {"moment": np.array([b"mean", b"var", b"skew", b"kurtosis"])}
        _put(g, "rho12", rho_sde, ("path",), cs)
        _put(g, "rho12_fine", rho_fine, ("path",), cs)
        _put(g, "V11", Vs[:, 0, 0], ("path",), cs)
        _put(g, "rho12_moments", _moments(rho_sde), ("moment",), cs)
        _put(g, "V11_moments", _moments(Vs[:, 0, 0]), ("moment",), cs)
        g = f.create_group("collapse")
        cs = {"architecture": np.array([k.encode() for k in collapse]), "layer": layers}
        _put(g, "mean_rho", np.stack(list(collapse.values())), ("architecture", "layer"), cs)
        _put(g, "sem_rho", np.stack(list(collapse_sem.values())), ("architecture", "layer"), cs)
        g["sem_rho"].attrs["description"] = "standard error of mean_rho over the networks (each averaged over token pairs)"
    figs = plot(h5, out)
    return {"hdf5": [h5], "figure": figs}


def plot(study_file: Path, out: Path) -> list[Path]:
    """Density of rho^{12}_T (finite networks over the SDE), KS vs n, mean rho vs layer."""
    from matplotlib.figure import Figure

    out = Path(out)
    with h5py.File(study_file, "r") as f:
        law, sde, col = f["law"], f["sde"], f["collapse"]
        widths, kinds = law["width"][()], [k.decode() for k in law["simulator"][()]]
        rho, ks = law["rho12"][()], law["ks_rho12"][()]
        rho_sde = sde["rho12"][()]
        mean_rho = col["mean_rho"][()]
        sem_rho = col["sem_rho"][()] if "sem_rho" in col else None  # files written before the SE was stored
        n_sde = int(np.isfinite(rho_sde).sum())
        archs = [a.decode() for a in col["architecture"][()]]
        layers = col["layer"][()]
        T = json.loads(f.attrs["parameters_json"])["T"]
    paths = []
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(-1, 1, 41)
    ax.hist(rho_sde, bins=bins, density=True, color="0.8", label="SDE")
    centres, width = (bins[1:] + bins[:-1]) / 2, bins[1] - bins[0]
    for i, (n, kind, r) in enumerate(zip(widths, kinds, rho)):
        r = r[np.isfinite(r)]
        dens, *_ = ax.hist(r, bins=bins, density=True, histtype="step", color=f"C{i}", label=f"{kind} n={n}")
        # binomial standard error of each bin's density: sqrt(p (1 - p) / N) / bin width
        p = dens * width
        ax.errorbar(centres, dens, yerr=np.sqrt(p * (1 - p) / max(r.size, 1)) / width, fmt="none", ecolor=f"C{i}",
                    elinewidth=0.6, alpha=0.6)
    ax.set_xlabel(r"$\rho^{12}_T$")
    ax.set_ylabel("density")
    ax.set_title(f"output correlation at T = d/n = {T:g} (bars: 1 standard error per bin)")
    ax.legend(fontsize=7)
    paths.append(out / "cov_density.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    chain = np.array([k == "chain" for k in kinds])
    ax.loglog(widths[chain], ks[chain], "o-", label="exact chain")
    ax.loglog(widths[~chain], ks[~chain], "s", label="plain network")
    # the KS statistic that sampling alone exceeds with probability 5%, for each comparison's sample sizes
    crit = np.array([ks_critical(int(np.isfinite(r).sum()), n_sde) for r in rho])
    ax.loglog(widths[chain], crit[chain], "k:", label="5% critical value (sampling alone)")
    ax.loglog(widths[~chain], crit[~chain], "k_", ms=14, mew=1.5, label="5% critical value (plain network)")
    ax.set_xlabel("width n")
    ax.set_ylabel(r"KS statistic of $\rho^{12}_T$ vs SDE")
    ax.set_title("finite networks approach the SDE as the width grows", fontsize=10)
    ax.legend()
    paths.append(out / "cov_ks.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (a, mr) in enumerate(zip(archs, mean_rho)):
        ax.plot(layers, mr, color=f"C{i}", label=a)
        if sem_rho is not None:
            ax.fill_between(layers, mr - sem_rho[i], mr + sem_rho[i], color=f"C{i}", alpha=0.3, lw=0)
    ax.set_xlabel("layer")
    ax.set_ylabel(r"mean $\rho$ (off-diagonal correlation)")
    ax.set_ylim(-0.05, 1.05)
    band = ", band: 1 standard error over networks" if sem_rho is not None else ""
    ax.set_title(f"rank collapse: mean token correlation over depth,\nattention-only residual networks{band}", fontsize=10)
    ax.legend()
    paths.append(out / "cov_collapse.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    return paths



# ------------------------------------------------------------ sweep task cov.rho_law
# Sweep task for the covariance study: finite shaped transformers against the block SDE.
_DEFAULTS = {
    "n": 64,
    "T": 0.5,
    "gamma": 1 / math.sqrt(8),
    "tau0": 1.0,
    "rho0": 0.2,
    "m": 3,
    "samples": 512,
    "dt": 0.02,
}


def _check(p: dict) -> None:
    """Errors naming the parameter (raised inside the task, so the sweep records them)."""
    from integrators.validation import (
        ParameterError,
        check_in_range,
        check_positive,
        check_positive_int,
    )

    check_positive_int("n", p["n"])
    check_positive("T", p["T"])
    check_positive("tau0", p["tau0"])
    check_positive("dt", p["dt"])
    check_positive_int("m", p["m"], minimum=2)  # rho^12 needs two tokens
    check_positive_int("samples", p["samples"], minimum=2)  # a KS statistic needs two samples
    # V0 = (1 - rho0) I + rho0 1 1^T is PSD iff -1/(m - 1) <= rho0 <= 1
    check_in_range("rho0", p["rho0"], -1.0 / (p["m"] - 1), 1.0)
    if p["n"] < p["m"]:
        raise ParameterError("n", f"the exact chain needs width n >= m tokens: n={p['n']}, m={p['m']}")
    if p["dt"] > p["T"]:
        raise ParameterError("dt", f"SDE step {p['dt']} exceeds the horizon T = {p['T']}")


def _rho12(V: np.ndarray) -> np.ndarray:
    return V[:, 0, 1] / np.sqrt(V[:, 0, 0] * V[:, 1, 1])


@register_task(
    "cov.rho_law",
    defaults=_DEFAULTS,
    validate=_check,  # also at spec time: every distinct (n, T, dt, ...) before any task runs
)
def rho_law(p: dict, seed: int) -> dict:
    """KS distance and moments of rho^{12}_T and V^{11}_T: exact finite-width chain vs block SDE.

    V0 = (1 - rho0) I + rho0 1 1^T (m x m); the chain runs depth round(T n) >= 1 blocks
    (its horizon ``t_chain`` = depth / n is returned: it differs from T when T n is not
    an integer), the SDE runs to T. Measurements, suffix ``_chain`` / ``_sde``:
    ``rho12_mean``, ``rho12_var``, ``V11_mean``, ``V11_var`` (unbiased variance), and
    ``ks_rho12``, ``ks_rho12_pvalue``, ``ks_V11``, ``ks_V11_pvalue`` (two-sample KS, chain vs
    SDE at dt), ``ks_rho12_sde_dt`` (SDE at dt vs dt/10 on the same noise: the
    discretisation check), ``sde_exit_fraction`` (paths exploding at dt or dt/10),
    ``sde_paths_used``, ``depth``, ``t_chain``.
    """
    from scipy import stats

    from particles.covariance import FiniteWidthChain
    from particles.networks import ShapedTransformer


    _check(p)
    n, m, samples = p["n"], p["m"], p["samples"]
    chain_seed, sde_seed = (int(s) for s in np.random.default_rng(seed).integers(0, 2**62, size=2))
    V0 = (1 - p["rho0"]) * np.eye(m) + p["rho0"] * np.ones((m, m))

    # the study's own SDE sampler (dt and dt/10 on one Brownian path); the width and
    # collapse fields of its size record are not used by it
    size = CovStudySize(widths=(n,), T=p["T"], m=m, samples=samples, plain_width=n, plain_samples=0,
                        sde_paths=samples, dt=p["dt"], collapse_n=n, collapse_layers=1, collapse_batch=1,
                        collapse_batch_preln=1, gamma=p["gamma"], tau0=p["tau0"], rho0=p["rho0"])  # fmt: skip
    _, sols = _sde_samples(size, V0, seed=sde_seed, progress=False)
    ok = ~(np.asarray(sols["dt"].exited) | np.asarray(sols["dt/10"].exited))
    if ok.sum() < 2:
        raise FloatingPointError(f"SDE diverged: {int((~ok).sum())} of {ok.size} paths exploded (dt = {p['dt']})")
    Vs = sols["dt"].final[ok]
    rho_sde, d_sde = _rho12(Vs), Vs[:, 0, 0]
    rho_fine = _rho12(sols["dt/10"].final[ok])

    depth = max(1, round(p["T"] * n))
    res = FiniteWidthChain(ShapedTransformer(n, p["gamma"], p["tau0"])).run(
        V0, depth, seed=chain_seed, batch=samples, record_every=depth)
    Vc = res.final
    rho_c, d_c = _rho12(Vc), Vc[:, 0, 0]
    if not (np.isfinite(rho_c).all() and np.isfinite(d_c).all()):
        raise FloatingPointError(f"finite-width chain produced non-finite V at n = {n}")

    ks_r, ks_d = stats.ks_2samp(rho_c, rho_sde), stats.ks_2samp(d_c, d_sde)
    out = {
        "ks_rho12": ks_r.statistic, "ks_rho12_pvalue": ks_r.pvalue,
        "ks_V11": ks_d.statistic, "ks_V11_pvalue": ks_d.pvalue,
        "ks_rho12_sde_dt": stats.ks_2samp(rho_sde, rho_fine).statistic,
        "sde_exit_fraction": float(1.0 - ok.mean()), "sde_paths_used": int(ok.sum()),
        "depth": depth, "t_chain": depth / n,
    }  # fmt: skip
    for label, r, d in (("chain", rho_c, d_c), ("sde", rho_sde, d_sde)):
        out[f"rho12_mean_{label}"] = r.mean()
        out[f"rho12_var_{label}"] = r.var(ddof=1)
        out[f"V11_mean_{label}"] = d.mean()
        out[f"V11_var_{label}"] = d.var(ddof=1)
    return out


if __name__ == "__main__":  # pragma: no cover
    import sys

    from studies.papers.common import study_main

    sys.exit(study_main("cov", run, __doc__))
