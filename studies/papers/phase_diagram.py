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
have), P with its standard error over the starts; about 21 minutes on 2 cores, an estimate
from 12 timed tasks (one per (Q, K, V) kind and d); ``smoke``: seconds.

Usage: ``attnflow study phase-diagram [--size full|default|smoke] --out DIR``
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

__all__ = ["run", "plot", "spec_for", "phase_point"]

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


def plot(study_file: Path, figure: Path) -> Path:
    """Heat maps of P(t, beta) (mean over seeds), one panel per (qkv, d), boundary curve over Q=K=V=I."""
    from matplotlib.figure import Figure

    st = load_study(study_file)
    dims, P = st["vars"]["P"]
    c = st["coords"]
    fixed = json.loads(st["attrs"]["fixed_parameters"])
    n, delta = int(fixed["n"]), float(fixed["delta"])
    P = np.nanmean(P, axis=dims.index("seed"))
    dims = tuple(d for d in dims if d != "seed")
    if "qkv" not in dims:  # one row: the identity case
        P, dims, kinds = P[None], ("qkv",) + dims, np.array(["identity"])
    else:
        kinds = c["qkv"]
    P = np.transpose(P, [dims.index(k) for k in ("qkv", "d", "beta", "t")])
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
        ax.set_title(f"d = {d}, Q,K,V: {kind}", fontsize=9)
        if k // ncols == nrows - 1 or k + ncols >= len(panels):
            ax.set_xlabel("t")
        if k % ncols == 0:
            ax.set_ylabel(r"$\beta$")
    grid[0, 0].legend(loc="upper left", fontsize=7, framealpha=0.8)
    fig.colorbar(mesh, ax=grid[:, -1].tolist(), label=r"$P(t, \beta)$", shrink=0.9, pad=0.02, aspect=30)
    fig.suptitle(rf"SA phase diagram (GLPR Fig. 3/5), n = {n}: fraction of pairs with "
                 rf"$\langle x_i,x_j\rangle \geq 1-\delta$, $\delta$ = {delta:g}", fontsize=10)
    figure = Path(figure)
    fig.savefig(figure, dpi=130)
    return figure



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
