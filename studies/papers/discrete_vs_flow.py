"""The authors' discrete transformer against the converged flow: P_discrete(t, beta) - P_flow(t, beta).

GLPR's published phase diagrams (Fig. 3) come from the authors' code, which steps a
post-LN transformer: x_i <- (x_i + h A_i(x)) / |x_i + h A_i(x)| with the unprojected
attention A_i(x) = sum_j softmax_j(beta <x_i, x_j>) x_j, h = 0.1, for 300 layers
(:class:`particles.sphere.DiscreteTransformer` with ``norm="post"``). That is a
first-order scheme for the flow xdot_i = P_{x_i} A_i(x) (GLPR eqs. 2.3-2.4), not the
flow itself. Each task draws ``batch`` uniform starts of n tokens and measures, on the
same starts,

* P_discrete(t): the fraction of pairs with <x_i, x_j> >= 1 - delta after layer t / h;
* P_flow(t): the flow solved with ``method`` (RK4) at dt, dt/2, ... until P stops moving
  (max_t |P_dt - P_dt/2| <= tol) or dt would fall below ``dt_min``; a point whose flow
  did not converge (USA at large beta is stiff: its rate grows like e^beta) is stored
  with ``flow_converged = 0`` and P_flow = NaN, never as a number;

and their difference with its standard error over the starts (the two P share starts,
so the difference's error is that of the paired per-start differences).

The figure has one row per normalisation (SA, USA) and one panel per d, the heat map of
P_discrete - P_flow over (t, beta) with non-converged points hatched; its title names the
largest |gap| and where it is. The same numbers go to ``discrete_vs_flow.json``.

Sizes: ``smoke`` (seconds, the tests), ``default`` (the paper's n and t, d in {2, 8, 32},
beta = 0.5, 1, ..., 9, 8 starts per point: a few minutes),
``paper`` (GLPR Fig. 3's grid: d in {2, 8, 32, 128}, beta = 0.1, 0.2, ..., 9, t in [0, 30],
n = 32, 16 starts per point instead of the authors' 256-odd: 9 minutes on 2 cores, 535 s
measured with other work on the machine).

Usage: ``attnflow study discrete-vs-flow [--smoke | --size S] --out DIR``.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on Transformers",
arXiv:2312.10794, eqs. (2.1)-(2.4), Fig. 3; MODELS.md section 1 ("first-order equivalence
is not closeness at step 0.1 near a sharp transition").
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from studies.papers._flow import CHECKED, FLOW_DEFAULTS, build_model
from studies.papers.common import study_main, study_spec, sweep_and_merge
from studies.sweep import load_study
from studies.sweep.devices import backend_device
from studies.sweep.spec import SweepSpec
from studies.sweep.tasks import register_task

__all__ = ["run", "plot", "spec_for", "discrete_vs_flow_point", "discrete_P", "converged_flow_P", "largest_gap",
           "gallery_numbers"]

_SIZES = {
    "smoke": {"sweep": {"seeds": 1}, "params": {"n": 6, "batch": 3, "t_end": 3.0, "n_save": 7},
              "grid": {"normalization": ["sa", "usa"], "d": [2, 3], "beta": [1.0, 4.0]}},
    "default": {"sweep": {"seeds": 1}, "params": {"batch": 8},
                "grid": {"normalization": ["sa", "usa"], "d": [2, 8, 32], "beta": {"start": 0.5, "stop": 9.0, "num": 18}}},
    "paper": {},
}


def spec_for(size: str) -> SweepSpec:
    """The sweep spec at ``size``: the TOML beside this module (the paper size) with the size's overrides."""
    if size not in _SIZES:
        from integrators.validation import ParameterError

        raise ParameterError("size", f"must be one of {', '.join(_SIZES)}, got {size!r}")
    return study_spec("discrete_vs_flow", _SIZES[size] or None)


def run(out: Path, size: str = "default", executor: Any = None, progress: bool = True) -> dict[str, list[Path]]:
    """Sweep, merge, draw ``out/discrete_vs_flow.png`` and write ``out/discrete_vs_flow.json``."""
    out = Path(out)
    spec = spec_for(size)
    h5 = sweep_and_merge(spec, out, executor, progress)
    fig = plot(h5, out / "discrete_vs_flow.png")
    summary = out / "discrete_vs_flow.json"
    summary.write_text(json.dumps(largest_gap(h5), indent=1) + "\n")
    if progress:
        for norm, g in largest_gap(h5).items():
            print(f"{norm}: largest |P_discrete - P_flow| = {g['gap']:.3f} at d = {g['d']}, beta = {g['beta']:g}, "
                  f"t = {g['t']:g}; {g['not_converged']} of {g['points']} points' flow did not converge")
    return {"hdf5": [h5], "figure": [fig], "summary": [summary]}


# ------------------------------------------------------------ the two computations
def discrete_P(model, x0: np.ndarray, h: float, t_end: float, save_every: int, delta: float,
               chunk: int = 16) -> np.ndarray:
    """P after layers 0, save_every, 2 save_every, ... of the authors' post-LN transformer, (saves, batch).

    ``layers = round(t_end / h)`` layers of :class:`DiscreteTransformer` (norm "post",
    float64); the batch is cut into ``chunk``-system pieces so the kept trajectory stays small.
    """
    from particles import fraction_close_pairs
    from particles.sphere import DiscreteTransformer

    layers = int(round(t_end / h))
    tr = DiscreteTransformer(model, layers=layers, t_end=layers * h, norm="post")
    out = []
    for i in range(0, len(x0), chunk):
        traj = tr.trajectory(x0[i:i + chunk])[::save_every].numpy()
        out.append(np.stack([fraction_close_pairs(x, delta=delta) for x in traj]))
    return np.concatenate(out, axis=1)


def converged_flow_P(model, x0: np.ndarray, t: np.ndarray, p: dict) -> tuple[np.ndarray | None, float, float]:
    """(P (saves, batch) or None, last dt tried, last change) of the flow refined until P stops moving.

    dt = p["dt"], dt/2, ... while dt >= p["dt_min"]; converged when the largest change over
    the saved times of P averaged over the starts, max_t |P_dt - P_dt/2|, is at most ``tol``. A level whose
    integration leaves the sphere (stiff USA) counts as not converged and is refined.
    """
    import warnings

    from integrators import solve
    from particles import fraction_close_pairs

    delta = p["delta"]
    obs = {"P": lambda x, m: fraction_close_pairs(x, delta=delta)}
    dt, prev, change = p["dt"], None, float("nan")
    while dt >= p["dt_min"] * (1 - 1e-12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow of a stiff level is expected and handled
            try:
                sol = solve(model, x0, float(t[-1]), dt=dt, method=p["method"], backend=p["backend"], save_at=t,
                            save_states=False, observables=obs, exit_threshold=10.0,
                            device=backend_device(p["backend"]))
                cur = None if sol.exited.any() else sol.observables["P"]
            except (FloatingPointError, RuntimeError):
                cur = None
        if cur is not None and prev is not None:
            change = float(np.max(np.abs(cur.mean(axis=1) - prev.mean(axis=1))))
            if change <= p["tol"]:
                return cur, dt, change
        prev, dt = cur, dt / 2
    return None, dt * 2, change


def _validate(p: dict) -> None:
    from integrators.validation import ParameterError, check_positive

    CHECKED["validate"](p)
    for key in ("h", "tol", "dt_min"):
        check_positive(key, p[key])
    layers = p["t_end"] / p["h"]
    if abs(layers - round(layers)) > 1e-9:
        raise ParameterError("h", f"t_end = {p['t_end']} must be a whole number of layers of h = {p['h']}")
    if round(layers) % (p["n_save"] - 1):
        raise ParameterError("n_save", f"n_save - 1 must divide the {round(layers)} layers")


@register_task(
    "flow.discrete_vs_flow",
    defaults={**FLOW_DEFAULTS, "method": "rk4", "backend": "numpy", "batch": 16, "t_end": 30.0, "n_save": 31,
              "delta": 1e-3, "qkv": "identity", "h": 0.1, "tol": 2e-3, "dt_min": 0.0125},
    dims={"t": ("t",), "P_discrete": ("t",), "P_flow": ("t",), "gap": ("t",), "gap_se": ("t",)},
    validate=_validate,
    validate_keys=CHECKED["validate_keys"] + ("h", "tol", "dt_min"),
)
def discrete_vs_flow_point(p: dict, seed: int) -> dict:
    """P of the authors' discrete scheme and of the converged flow from the same ``batch`` uniform starts."""
    from particles import uniform_sphere

    rng = np.random.default_rng(seed)
    model = build_model(p, rng)
    x0 = uniform_sphere(p["batch"], p["n"], p["d"], seed=rng)
    t = np.linspace(0.0, p["t_end"], p["n_save"])
    layers = int(round(p["t_end"] / p["h"]))
    Pd = discrete_P(model, x0, p["h"], p["t_end"], layers // (p["n_save"] - 1), p["delta"])
    Pf, dt, change = converged_flow_P(model, x0, t, p)
    if Pf is None:
        nan = np.full(len(t), np.nan)
        gap, se, flow = nan, nan, nan
    else:
        diff = Pd - Pf
        gap, flow = diff.mean(axis=1), Pf.mean(axis=1)
        se = diff.std(axis=1, ddof=1) / np.sqrt(diff.shape[1]) if diff.shape[1] > 1 else np.full(len(t), np.nan)
    return {"t": t, "P_discrete": Pd.mean(axis=1), "P_flow": flow, "gap": gap, "gap_se": se,
            "flow_dt": dt, "flow_change": change, "flow_converged": int(Pf is not None)}


# ------------------------------------------------------------ summary and figure
def _load(study_file: Path):
    st = load_study(study_file)
    c = st["coords"]
    order = ("normalization", "d", "beta", "seed", "t")
    out = {}
    for name in ("gap", "gap_se", "flow_converged"):
        dims, v = st["vars"][name]
        v = np.asarray(v, dtype=float)
        if "normalization" not in dims:
            v, dims = v[None], ("normalization",) + tuple(dims)
        out[name] = np.transpose(v, [dims.index(k) for k in order if k in dims])
    norms = c["normalization"] if "normalization" in c else np.array([json.loads(st["attrs"]["fixed_parameters"])
                                                                      ["normalization"]])
    return out, [str(x) for x in norms], c["d"], c["beta"], c["t"]


def largest_gap(study_file: Path) -> dict[str, dict]:
    """Per normalisation: the largest seed-mean |P_discrete - P_flow|, its (d, beta, t), its standard error,
    and how many grid points' flow did not converge."""
    v, norms, ds, betas, t = _load(study_file)
    res = {}
    for i, norm in enumerate(norms):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a non-converged point
            gap = np.nanmean(v["gap"][i], axis=2)  # over seeds: (d, beta, t)
            se = np.sqrt(np.nanmean(v["gap_se"][i] ** 2, axis=2) / v["gap"].shape[3])
        conv = np.nanmin(v["flow_converged"][i], axis=2)
        finite = np.isfinite(gap)
        entry = {"points": int(conv.size), "not_converged": int((conv < 1).sum()), "gap": float("nan"),
                 "gap_se": float("nan"), "d": None, "beta": None, "t": None}
        if finite.any():
            k = np.unravel_index(np.nanargmax(np.where(finite, np.abs(gap), -1.0)), gap.shape)
            entry.update(gap=float(gap[k]), gap_se=float(se[k]), d=int(ds[k[0]]), beta=float(betas[k[1]]),
                         t=float(t[k[2]]))
        res[norm] = entry
    return res


def gallery_numbers(out: Path) -> list[dict]:
    """:func:`largest_gap` as gallery rows: per normalisation, the largest P_discrete - P_flow and the non-converged points.

    GLPR show only the discrete scheme (their Fig. 3, the authors' code), so there is no
    paper value for the gap.
    """
    rows = []
    for norm, g in largest_gap(Path(out) / "discrete_vs_flow.h5").items():
        where = f"{norm.upper()}, d = {g['d']}, β = {g['beta']:g}, t = {g['t']:g}" if g["d"] is not None else norm.upper()
        rows.append({"quantity": "largest P_discrete - P_flow", "where": where, "ours": g["gap"], "se": g["gap_se"],
                     "paper": None, "reference": None, "source": "GLPR Fig. 3 (authors' post-LN step h = 0.1)"})
        rows.append({"quantity": "points whose flow did not converge", "where": f"{norm.upper()}, of {g['points']}",
                     "ours": float(g["not_converged"]), "se": None, "paper": None, "reference": None,
                     "source": "this study"})
    return rows


def plot(study_file: Path, figure: Path) -> Path:
    """Heat maps of P_discrete - P_flow over (t, beta): one row per normalisation, one panel per d."""
    from matplotlib.figure import Figure

    from matplotlib.colors import ListedColormap

    v, norms, ds, betas, t = _load(study_file)
    gaps = largest_gap(study_file)
    lines: list[str] = []
    fig = Figure(figsize=(3.0 * len(ds) + 1.2, 2.6 * len(norms) + 0.8), layout="constrained")
    grid = fig.subplots(len(norms), len(ds), squeeze=False, sharex=True, sharey=True)
    mesh = None
    for i, norm in enumerate(norms):
        for j, d in enumerate(ds):
            ax = grid[i, j]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a non-converged point
                gap = np.nanmean(v["gap"][i, j], axis=1)  # (beta, t)
            mesh = ax.pcolormesh(t, betas, gap, vmin=-1, vmax=1, cmap="RdBu_r", shading="nearest", rasterized=True)
            bad = np.nanmin(v["flow_converged"][i, j], axis=1) < 1
            if bad.any():  # grey: the flow did not converge above dt_min, no number is shown
                ax.pcolormesh(t, betas, np.where(bad[:, None], 1.0, np.nan) * np.ones((1, len(t))),
                              cmap=ListedColormap(["0.7"]), shading="nearest", rasterized=True)
            ax.set_title(f"{norm.upper()}, d = {d}", fontsize=9)
            if i == len(norms) - 1:
                ax.set_xlabel("t")
            if j == 0:
                ax.set_ylabel(r"$\beta$")
        g = gaps[norm]
        if g["d"] is not None:
            lines.append(f"{norm.upper()}: largest gap {g['gap']:+.2f} ± {g['gap_se']:.2f} at d = {g['d']}, "
                         f"β = {g['beta']:g}, t = {g['t']:g}; flow not converged (grey): "
                         f"{g['not_converged']}/{g['points']} points")
    fig.colorbar(mesh, ax=grid[:, -1].tolist(), label=r"$P_{\rm discrete} - P_{\rm flow}$", shrink=0.9)
    fig.suptitle("\n".join(["authors' post-LN transformer (h = 0.1) minus the converged flow, fraction of close pairs",
                            *lines]), fontsize=9)
    figure = Path(figure)
    fig.savefig(figure, dpi=110)
    return figure


if __name__ == "__main__":
    raise SystemExit(study_main("discrete-vs-flow", run, __doc__))
