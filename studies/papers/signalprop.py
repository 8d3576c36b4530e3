"""Geometric signal propagation: theory vs finite networks, and (lambda_a, lambda_g) phase diagrams.

Two parts, one HDF5 file (``signalprop.h5``) and two figures:

(a) ``trajectories``: c and q over 20 blocks from a regular simplex at c0 = 0.5, the
    large-width (q, p) map against finite random transformers (n = 16) at several
    widths d and seeds, for an ordered, a chaotic and an attention-only setting (no MLP:
    COWSIK's rank collapse, 1 - c -> 0 geometrically); the RMS deviation vs d
    with its log-log slope (expected ~ -1/2, with a finite-n floor from the O(1)
    randomness of the attention matrix in the chaotic phase).
(b) ``phase_alpha_sigma_w`` and ``phase_alpha_sigma_b``: lambda_a (angle exponent at
    collapse) and lambda_g (growth rate of E||J||_F^2 at the forward attractor) from the
    maps on a G x G grid (alpha = alpha_A = alpha_M), with lambda_a = 0 and lambda_g = 0
    drawn and the phases labelled (ordered/chaotic x vanishing/exploding gradients),
    beside finite-network measurements on a coarser grid (lambda_a from the slope of
    log(1 - c) near collapse, lambda_g from Hutchinson JVPs after a burn-in).

Sizes: ``smoke`` (seconds; the tests), ``default`` (about a minute), ``full``
(64 x 64 theory grids, 8 x 8 finite grids at d = 512, d in {256, 1024, 4096}: several
minutes on 2 cores), ``paper`` (the full grids, 16 seeds per width, 4 networks per
finite point at d = 1024 for standard errors; Cowsik et al.'s token count, widths and
network counts are not stated in the sources we have, so n = 16 and these counts are our
choice; 249 s measured on 2 cores, 694 s with other work on the machine).

Usage: ``python -m studies.papers.signalprop [--smoke | --size S] [--out DIR]``.

References
----------
Cowsik, Nebabu, Qi, Ganguli, arXiv:2403.02579 (phase diagrams, lambda_a, lambda_g);
MODELS.md section 3 (reference model, maps, checks) and section 4 (HDF5 contract).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from particles.signalprop import (
    SignalPropParams,
    coefficients,
    exponents,
    gradient_transfer,
    hutchinson_slope,
    iterate_map,
)
from particles.signalprop.finite import RandomTransformer
from particles.signalprop.measure import (
    measure_angle_exponent,
    measure_gradient_exponent,
)
from particles.signalprop.states import simplex_tokens
from integrators.validation import ParameterError, check_choice
from studies.papers.gallery_nets import seed_bootstrap_rms
from studies.papers.gallery_nets import signalprop_numbers as gallery_numbers  # the gallery table (issue 13)

__all__ = ["gallery_numbers", "PHASE_POINT_DEFAULTS", "SIZES", "H5Writer", "StudySize", "main", "phase_point", "plot", "run"]

SIZES = ("smoke", "default", "full", "paper")
SETTINGS = {
    "ordered": dict(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0),
    "chaotic": dict(alpha_A=0.3, alpha_M=0.8, sigma_w=2.0),
    # COWSIK's rank collapse without the MLP: 1 - c shrinks by e^lambda_a = 1 - alpha_A^2 a block
    "attention-only": dict(alpha_A=0.5, alpha_M=0.0, sigma_w=1.0),
}
PLANES = {  # name -> (second axis, its range, fixed parameters)
    "phase_alpha_sigma_w": ("sigma_w", (0.1, 5.0), dict(sigma_b=0.5)),
    "phase_alpha_sigma_b": ("sigma_b", (0.0, 3.0), dict(sigma_w=2.0)),
}


@dataclass(frozen=True)
class StudySize:
    n: int
    depth: int
    widths: tuple[int, ...]
    seeds: int
    grid: int
    finite_grid: int
    finite_d: int
    finite_depth: int
    finite_batch: int
    burn_in: int


_SIZES = {
    "smoke": StudySize(8, 6, (32, 128), 2, 8, 2, 64, 6, 1, 8),
    "default": StudySize(16, 20, (256, 1024), 4, 32, 4, 256, 12, 2, 24),
    "full": StudySize(16, 20, (256, 1024, 4096), 8, 64, 8, 512, 16, 2, 40),
    # Cowsik's token count and widths are not stated in our sources: n = 16 kept, more networks per point
    "paper": StudySize(16, 20, (256, 1024, 4096), 16, 64, 8, 1024, 16, 4, 40),
}


# ------------------------------------------------------------------------------- HDF5
class H5Writer:
    """A study file with the attributes of MODELS.md section 4, written group by group.

    The root carries model, params (each and as ``params_json``), seed, backend, dtype,
    package version, git commit, creation time and ``status`` ("incomplete" until
    :meth:`close`). Datasets get named dimensions through HDF5 dimension scales, so
    ``xarray.open_dataset(path, group=..., engine="h5netcdf")`` labels them. Each
    group is flushed when written: a killed study keeps its finished groups.
    """

    def __init__(self, path: Path, model: str, params: dict, seed: int, extra: dict | None = None):
        from studies.provenance import git_commit, package_version

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(self.path, "w")
        pkg = package_version()
        commit = git_commit()
        attrs = {
            "model": model,
            "params_json": json.dumps(params, sort_keys=True, default=str),
            "seed": int(seed),
            "integrator": "none (deterministic maps; finite networks block by block)",
            "dt": 1.0,
            "backend": "numpy+torch",
            "dtype": "float64",
            "package_version": pkg,
            "git_commit": commit,
            "created": _dt.datetime.now(_dt.UTC).isoformat(),
            "status": "incomplete",
        }
        for key, val in params.items():
            if isinstance(val, (bool, int, float, str)):
                attrs.setdefault(key, val)
        attrs.update(extra or {})
        self.f.attrs.update(attrs)
        self.f.flush()

    def group(self, name: str, attrs: dict | None = None) -> h5py.Group:
        g = self.f.create_group(name)
        for k, v in (attrs or {}).items():
            g.attrs[k] = v if not isinstance(v, dict) else json.dumps(v, sort_keys=True)
        return g

    @staticmethod
    def coord(g: h5py.Group, name: str, values) -> None:
        ds = g.create_dataset(name, data=np.asarray(values))
        ds.make_scale(name)

    @staticmethod
    def data(g: h5py.Group, name: str, values, dims: tuple[str, ...], attrs: dict | None = None) -> None:
        arr = np.asarray(values)
        if arr.ndim != len(dims):
            raise ValueError(f"{name}: {arr.ndim} axes but dims {dims}")
        kw = dict(compression="gzip", chunks=True) if arr.size > 1024 else {}
        ds = g.create_dataset(name, data=arr, **kw)
        for ax, dim in enumerate(dims):
            if dim not in g:
                H5Writer.coord(g, dim, np.arange(arr.shape[ax]))
            ds.dims[ax].attach_scale(g[dim])
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v

    def flush(self) -> None:
        self.f.flush()

    def close(self, status: str = "complete") -> None:
        self.f.attrs["status"] = status
        self.f.attrs["completed"] = _dt.datetime.now(_dt.UTC).isoformat()
        self.f.close()


# ------------------------------------------------------------------------------- computations
#: Parameters of :func:`phase_point` (the sweep task "signalprop.phase_point"): the model's
#: hyperparameters and the finite-network measurement settings.
PHASE_POINT_DEFAULTS = {**SignalPropParams().params(), "d": 256, "depth": 12, "batch": 2, "burn_in": 30}


def phase_point(params: dict, seed: int) -> dict[str, np.ndarray]:
    """One phase-diagram point: theory exponents and finite-network measurements.

    ``params``: SignalPropParams fields plus ``d``, ``depth``, ``batch``, ``burn_in``
    (finite networks). Returns lambda_a, lambda_g, lambda_mean, c_state (theory),
    lambda_g_window (the theory's prediction of the finite-depth Hutchinson slope over the
    measured window, blocks depth//2..depth) and lambda_a_meas, lambda_g_meas with
    standard errors.
    """
    keys = set(SignalPropParams.__dataclass_fields__)
    net = {k: params[k] for k in ("d", "depth", "batch", "burn_in") if k in params}
    unknown = set(params) - keys - set(net)
    if unknown:
        raise ParameterError(min(unknown), "not a parameter of the signal-propagation phase point")
    P = SignalPropParams(**{k: v for k, v in params.items() if k in keys})
    th = exponents(P)
    d, depth, batch = int(net.get("d", 256)), int(net.get("depth", 12)), int(net.get("batch", 2))
    T = gradient_transfer(coefficients(P), th.q_state, th.c_state * th.q_state)
    window = hutchinson_slope(T, P.n, depth // 2, depth)  # the fit window of measure_gradient_exponent
    la = measure_angle_exponent(P, d=d, depth=depth, batch=batch, seed=seed, linear_max=1e-2)
    lg = measure_gradient_exponent(P, d=d, depth=depth, batch=batch, seed=seed + 7, burn_in=int(net.get("burn_in", 30)))
    return {
        "lambda_a": np.float64(th.lambda_a),
        "lambda_g": np.float64(th.lambda_g),
        "lambda_mean": np.float64(th.lambda_mean),
        "lambda_g_window": np.float64(window),
        "c_state": np.float64(th.c_state),
        "lambda_a_meas": np.float64(la.value),
        "lambda_a_meas_err": np.float64(la.stderr),
        "lambda_g_meas": np.float64(lg.value),
        "lambda_g_meas_err": np.float64(lg.stderr),
    }


def _trajectories(w: H5Writer, sz: StudySize, seed: int, progress: bool) -> None:
    g = w.group("trajectories", {"c0": 0.5, "q0": 1.0, "settings_json": SETTINGS})
    names = list(SETTINGS)
    layers = np.arange(sz.depth + 1)
    c_map = np.empty((len(names), sz.depth + 1))
    q_map = np.empty_like(c_map)
    c_fin = np.empty((len(names), len(sz.widths), sz.seeds, sz.depth + 1))
    q_fin = np.empty_like(c_fin)
    for i, name in enumerate(names):
        P = SignalPropParams(n=sz.n, **SETTINGS[name])
        tr = iterate_map(P, 1.0, 0.5, sz.depth)
        c_map[i], q_map[i] = tr.c, tr.q
        for j, d in enumerate(sz.widths):
            run_ = RandomTransformer(P, d).run(simplex_tokens(sz.seeds, sz.n, d, 1.0, 0.5, seed=seed + d), sz.depth, seed=seed + d + 1)
            c_fin[i, j] = run_.c.T
            q_fin[i, j] = run_.q.T
            if progress:
                print(f"  trajectories: {name} d={d} done", flush=True)
    rms = np.sqrt(np.mean((c_fin - c_map[:, None, None, :]) ** 2, axis=(2, 3)))
    slope = np.array([np.polyfit(np.log(sz.widths), np.log(r), 1)[0] for r in rms])
    w.coord(g, "setting", np.array(names, dtype="S"))
    w.coord(g, "d", np.array(sz.widths))
    w.coord(g, "seed", np.arange(sz.seeds))
    w.coord(g, "layer", layers)
    w.data(g, "c_map", c_map, ("setting", "layer"))
    w.data(g, "q_map", q_map, ("setting", "layer"))
    w.data(g, "c_finite", c_fin, ("setting", "d", "seed", "layer"))
    w.data(g, "q_finite", q_fin, ("setting", "d", "seed", "layer"))
    w.data(g, "rms_dev_c", rms, ("setting", "d"), {"description": "RMS over seeds and layers of c_finite - c_map"})
    w.data(g, "loglog_slope", slope, ("setting",), {"description": "slope of log rms_dev_c vs log d (theory: -1/2)"})
    w.flush()


def _phase_plane(w: H5Writer, name: str, sz: StudySize, seed: int, progress: bool) -> None:
    yname, (lo, hi), fixed = PLANES[name]
    base = SignalPropParams(n=sz.n, **fixed)
    alpha = np.linspace(0.02, 0.98, sz.grid)
    yv = np.linspace(lo, hi, sz.grid)
    A, Y = np.meshgrid(alpha, yv, indexing="ij")
    t0 = time.perf_counter()
    th = exponents(coefficients(base, alpha=A, **{yname: Y}))
    t_theory = time.perf_counter() - t0
    g = w.group(name, {"y_name": yname, "fixed_json": fixed, "base_params_json": base.params(), "theory_seconds": t_theory})
    w.coord(g, "alpha", alpha)
    w.coord(g, yname, yv)
    for key in ("lambda_a", "lambda_g", "lambda_mean", "c_state", "q_state"):
        w.data(g, key, getattr(th, key), ("alpha", yname))
    w.data(g, "converged", th.converged.astype(np.int8), ("alpha", yname))
    af = np.linspace(0.1, 0.9, sz.finite_grid)
    yf = np.linspace(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo), sz.finite_grid)
    keys = ("lambda_a_meas", "lambda_a_meas_err", "lambda_g_meas", "lambda_g_meas_err", "lambda_a", "lambda_g",
            "lambda_g_window")
    out = {k: np.full((sz.finite_grid, sz.finite_grid), np.nan) for k in keys}
    t0 = time.perf_counter()
    for i, a in enumerate(af):
        for j, y in enumerate(yf):
            pt = dict(base.params(), alpha_A=float(a), alpha_M=float(a), **{yname: float(y)})
            pt.update(d=sz.finite_d, depth=sz.finite_depth, batch=sz.finite_batch, burn_in=sz.burn_in)
            res = phase_point(pt, seed + 1000 * i + j)
            for k in keys:
                out[k][i, j] = res[k]
        if progress:
            print(f"  {name}: finite row {i + 1}/{sz.finite_grid}", flush=True)
    t_finite = time.perf_counter() - t0
    g.attrs["finite_seconds"] = t_finite
    w.coord(g, "alpha_finite", af)
    w.coord(g, f"{yname}_finite", yf)
    for k in keys:
        w.data(g, k + ("_theory" if k in ("lambda_a", "lambda_g") else ""), out[k], ("alpha_finite", f"{yname}_finite"))
    w.flush()


def run(out: Path, size: str = "full", executor=None, progress: bool = True) -> dict[str, list[Path]]:
    """Compute both parts, write ``out/signalprop.h5`` and the figures; return their paths.

    ``executor`` is accepted for the ``attnflow study`` interface and not used: the maps
    are cheap and the finite networks run batched in torch in this process.
    """
    check_choice("size", size, SIZES)
    sz = _SIZES[size]
    out = Path(out)
    seed = 20240305
    meta = dict(SignalPropParams(n=sz.n).params(), size=size, **{f"size_{k}": v for k, v in sz.__dict__.items()})
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
    w = H5Writer(out / "signalprop.h5", SignalPropParams.name, meta, seed)
    try:
        _trajectories(w, sz, seed, progress)
        for name in PLANES:
            _phase_plane(w, name, sz, seed, progress)
    except BaseException as exc:
        w.close(status=f"failed: {type(exc).__name__}: {exc}")
        raise
    w.close()
    figs = plot(out / "signalprop.h5", out)
    return {"hdf5": [out / "signalprop.h5"], "figure": figs}


# ------------------------------------------------------------------------------- figures
_PHASES = {(-1, -1): "ordered,\nvanishing grads", (-1, 1): "ordered,\nexploding grads",
           (1, -1): "chaotic,\nvanishing grads", (1, 1): "chaotic,\nexploding grads"}  # fmt: skip


def plot(h5: Path, outdir: Path) -> list[Path]:
    """Draw ``signalprop_trajectories.png`` and ``signalprop_phase.png`` from the study file."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    outdir = Path(outdir)
    paths = []
    with h5py.File(h5, "r") as f:
        g = f["trajectories"]
        names = [s.decode() for s in g["setting"][()]]
        fig = Figure(figsize=(3.7 * (len(names) + 1), 3.6), layout="constrained")
        axs = fig.subplots(1, len(names) + 1)
        widths = g["d"][()]
        for i, name in enumerate(names):
            ax = axs[i]
            for j, d in enumerate(widths):
                cf = g["c_finite"][i, j]
                ax.plot(g["layer"][()], cf.T, color=f"C{j}", alpha=0.35, lw=0.8)
                ax.plot([], [], color=f"C{j}", label=f"finite, d={d}")
            ax.plot(g["layer"][()], g["c_map"][i], "k--", lw=2, label="map (d = inf)")
            ax.set(xlabel="block", ylabel="c = p / q", title=f"{name}: c through depth")
            ax.legend(fontsize=7)
        ax = axs[-1]
        for i, name in enumerate(names):
            boot = seed_bootstrap_rms(g["c_finite"][i], g["c_map"][i])  # SE over seeds (bootstrap)
            err = boot.std(axis=0, ddof=1) if len(boot) > 1 else None
            ax.errorbar(widths, g["rms_dev_c"][i], yerr=err, fmt="o-", capsize=3,
                        label=f"{name} (slope {g['loglog_slope'][i]:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ref = g["rms_dev_c"][:, 0].max() * (widths / widths[0]) ** -0.5
        ax.loglog(widths, ref, "k:", label="d^{-1/2}")
        ax.set(xlabel="d", ylabel="RMS deviation of c", title="finite networks -> map\n(bars: standard error over seeds)")
        ax.set_xticks(widths, labels=[str(int(w)) for w in widths])
        ax.xaxis.set_minor_locator(__import__("matplotlib").ticker.NullLocator())
        ax.legend(fontsize=7)
        p = outdir / "signalprop_trajectories.png"
        fig.savefig(p, dpi=120)
        paths.append(p)

        fig = Figure(figsize=(15, 9), layout="constrained")
        axs = fig.subplots(2, 3)
        for r, name in enumerate(PLANES):
            g = f[name]
            yname = g.attrs["y_name"]
            alpha, yv = g["alpha"][()], g[yname][()]
            la, lg = g["lambda_a"][()], g["lambda_g"][()]
            af, yf = g["alpha_finite"][()], g[f"{yname}_finite"][()]
            AF, YF = np.meshgrid(af, yf, indexing="ij")
            for c, key in enumerate(("lambda_a", "lambda_g")):
                ax = axs[r, c]
                z = g[key][()]
                zm = g[key + "_meas"][()]
                lim = min(max(np.nanmax(np.abs(z)), 1e-3), 1.0)  # saturate: alpha -> 1 reaches -6
                norm = TwoSlopeNorm(0.0, -lim, lim)
                im = ax.pcolormesh(alpha, yv, z.T, cmap="RdBu_r", norm=norm, shading="auto")
                ax.scatter(AF.ravel(), YF.ravel(), c=zm.ravel(), cmap="RdBu_r", norm=norm, s=80, edgecolors="k")
                ax.contour(alpha, yv, la.T, levels=[0.0], colors="k", linewidths=2)
                ax.contour(alpha, yv, lg.T, levels=[0.0], colors="k", linewidths=2, linestyles="--")
                for (sa, sg), text in _PHASES.items():
                    mask = (np.sign(la) == sa) & (np.sign(lg) == sg)
                    if mask.sum() > 0.02 * mask.size:
                        ia, iy = np.nonzero(mask)
                        ax.text(alpha[int(np.median(ia))], yv[int(np.median(iy))], text, ha="center", va="center",
                                fontsize=8, bbox=dict(fc="white", alpha=0.7, lw=0))
                fig.colorbar(im, ax=ax, label=f"{key} per block (clipped at +-{lim:.2g})", extend="both")
                ax.set(xlabel="alpha = alpha_A = alpha_M", ylabel=yname)
                ax.set_title(f"{key}: map (colour), finite d={int(f.attrs['size_finite_d'])} (dots)\n"
                             "solid: lambda_a = 0, dashed: lambda_g = 0", fontsize=9)
            ax = axs[r, 2]
            for key, th_key, mk, lab in (("lambda_a", "lambda_a_theory", "o", "lambda_a"),
                                         ("lambda_g", "lambda_g_theory", "s", "lambda_g (asymptotic)"),
                                         ("lambda_g", "lambda_g_window", "^", "lambda_g (same fit window)")):
                th, me, err = g[th_key][()].ravel(), g[key + "_meas"][()].ravel(), g[key + "_meas_err"][()].ravel()
                ax.errorbar(th, me, yerr=np.nan_to_num(err), fmt=mk, ms=5, label=lab, alpha=0.7)
            lo_, hi_ = ax.get_xlim()
            ax.plot([lo_, hi_], [lo_, hi_], "k:", lw=1)
            ax.set(xlabel="theory (maps)", ylabel="finite network", title=f"{name}: measured vs theory")
            ax.legend(fontsize=8)
        p = outdir / "signalprop_phase.png"
        fig.savefig(p, dpi=110)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.papers.signalprop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny size used by the tests")
    p.add_argument("--size", choices=SIZES, default=None)
    p.add_argument("--out", default="runs/signalprop")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.smoke and args.size not in (None, "smoke"):
        raise SystemExit("--smoke and --size disagree")
    size = "smoke" if args.smoke else (args.size or "full")
    for kind, items in run(Path(args.out), size, progress=not args.no_progress).items():
        for item in items:
            print(f"{kind}: {item}")
    return 0


def _register() -> None:
    """Make one phase-diagram point a sweep task, so diagrams can run through ``attnflow sweep``."""
    try:
        from studies.sweep.tasks import register_task
    except ImportError:  # pragma: no cover - the sweep machinery is optional here
        return
    register_task("signalprop.phase_point", phase_point, defaults=PHASE_POINT_DEFAULTS)


_register()

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
