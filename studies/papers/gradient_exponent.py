"""Cowsik's gradient exponent: four candidate definitions of lambda_g and where their zero lines meet lambda_a's.

Cowsik et al. claim that minimal test loss is reached where the angle exponent lambda_a
and the gradient exponent lambda_g vanish together. With attention present, the growth
rate of E||J||_F^2 at collapse exceeds lambda_a, so the two zero lines of the natural
definition never meet. This study draws, over the (alpha = alpha_A = alpha_M, sigma_w)
plane (sigma_b = 0.5, the other hyperparameters at their defaults, n tokens), lambda_a and
the four candidates of :mod:`particles.signalprop.candidates`:

(i) the token-mean mode at collapse, (ii) the token-differential mode at collapse
(= lambda_a), (iii) the growth rate at the forward fixed point (the simplex with cosine c*
in the chaotic phase), (iv) the finite-depth random-readout estimator
(1/L) log(||J^T R||^2 / ||R||^2) from random embeddings (c0 = 0, q0 = 1) through L blocks,

each with its zero line over the lambda_a = 0 line, and each along the lambda_a = 0 line
against sigma_w (the two lines meet where a candidate changes sign there). On a coarser grid
finite random transformers (width d, ``batch`` networks per point) measure each candidate
with its standard error: (i), (ii) with token-mean / token-differential probes at
collapse, (iii) with Hutchinson probes after a burn-in (compared with the theory's
prediction of the same fit window, both modes weighed, ``attractor_window``), (iv) with
reverse-mode readouts through explicit weights.

Answer (default size, n = 256, L = 16, sigma_b = 0.5; numbers in ``gradient_exponent.json``):
no definition makes the claim true with attention present. (i) and (iii) stay positive on the
lambda_a = 0 line (there e^{lambda_mean - lambda_a} = 1 + alpha_A^2 sigma_V^2 / ((1 - alpha_A^2) q*) > 1,
and the attractor at the order-chaos boundary is the collapsed point, so (iii) = (i)); (ii)
vanishes on the whole line, trivially, because it *is* lambda_a (one condition, not two); (iv),
the finite-depth random-readout estimator, comes closest (its smallest value on the line is
about 0.01, at the smallest alpha) and its zero line approaches the lambda_a = 0 line only as
alpha -> 0, where attention vanishes and all four candidates equal lambda_a. (iv) depends on
L and on the start c0 and tends to (iii) as L grows.

Sizes: ``smoke`` (n = 16, seconds; the tests), ``default`` (n = 256, L = 16, a 32 x 32
theory grid, 2 x 2 finite points at d = 256 with 3 networks each; time in
``studies/papers/registry.py``). No ``paper`` size: the paper's finite-network grid is not
stated, and the default already runs at the re-implementations' n and L.

Usage: ``attnflow study gradient-exponent [--smoke] --out DIR``.

References
----------
Cowsik, Nebabu, Qi, Ganguli, arXiv:2403.02579, sections 3.3-3.4 and the conclusion (the two
exponents vanishing together); MODELS.md section 3 ("Exponents at collapse").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from integrators.validation import check_choice
from particles.signalprop import SignalPropParams, coefficients, exponents, gradient_transfer, hutchinson_slope
from particles.signalprop.candidates import CANDIDATES, gradient_candidates
from particles.signalprop.measure import measure_gradient_exponent, measure_gradient_modes
from particles.signalprop.overlaps import overlap_table
from particles.signalprop.readout import measure_readout_exponent

from studies.papers.common import study_main
from studies.papers.signalprop import H5Writer

__all__ = ["SIZES", "StudySize", "finite_point", "on_zero_line", "plot", "run", "gallery_numbers"]

SIGMA_B = 0.5
ALPHA_RANGE = (0.02, 0.98)
SIGMA_W_RANGE = (0.1, 5.0)
LABELS = {
    "token_mean": "(i) token-mean mode at collapse",
    "token_diff": "(ii) token-differential mode at collapse",
    "attractor": "(iii) at the forward fixed point c*",
    "readout": "(iv) random readout, (1/L) log ||J^T R||^2",
}


@dataclass(frozen=True)
class StudySize:
    """n tokens, L blocks of (iv), theory grid G x G, finite grid F x F at width d."""

    n: int
    depth: int
    grid: int
    finite_grid: int
    d: int
    batch: int
    probes: int
    burn_in: int
    table_samples: int


SIZES = {
    "smoke": StudySize(n=16, depth=8, grid=12, finite_grid=2, d=64, batch=2, probes=2, burn_in=10, table_samples=512),
    "default": StudySize(n=256, depth=16, grid=32, finite_grid=2, d=256, batch=3, probes=1, burn_in=20,
                         table_samples=64),
}  # fmt: skip
# issue 13 item 4 names the sizes of public re-implementations (n = 256 tokens, L = 16 blocks): the default is that size
SIZES["paper"] = SIZES["default"]


def finite_point(params: SignalPropParams, sz: StudySize, seed: int) -> dict[str, float]:
    """The four candidates measured on finite networks at one point, each with its standard error."""
    mean, diff = measure_gradient_modes(params, d=sz.d, depth=sz.depth, batch=sz.batch, n_probes=sz.probes, seed=seed)
    attr = measure_gradient_exponent(params, d=sz.d, depth=sz.depth, batch=sz.batch, n_probes=sz.probes,
                                     burn_in=sz.burn_in, seed=seed + 10)
    rr = measure_readout_exponent(params, d=sz.d, depth=sz.depth, batch=sz.batch, n_readouts=sz.probes, seed=seed + 20)
    out = {}
    for name, m in zip(CANDIDATES, (mean, diff, attr, rr)):
        out[name] = m.value
        out[name + "_err"] = m.stderr
    return out


def on_zero_line(alpha: np.ndarray, lam_a: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha0, value): for each column (sigma_w) the first alpha where lambda_a changes sign
    (linear interpolation) and ``values`` interpolated there; NaN where lambda_a keeps its sign."""
    cols = lam_a.shape[1]
    a0, v0 = np.full(cols, np.nan), np.full(cols, np.nan)
    for j in range(cols):
        s = lam_a[:, j]
        idx = np.nonzero(np.sign(s[:-1]) * np.sign(s[1:]) < 0)[0]
        if idx.size:
            i = int(idx[0])
            w = s[i] / (s[i] - s[i + 1])
            a0[j] = alpha[i] + w * (alpha[i + 1] - alpha[i])
            v0[j] = values[i, j] + w * (values[i + 1, j] - values[i, j])
    return a0, v0


def _meets(v0: np.ndarray, tol: float = 1e-9) -> str:
    """Whether a candidate vanishes on the lambda_a = 0 line: 'everywhere', 'crosses' or 'never'."""
    v = v0[np.isfinite(v0)]
    if v.size and np.all(np.abs(v) < tol):
        return "everywhere"
    if v.size and (np.any(np.abs(v) < tol) or (v.min() < 0 < v.max())):
        return "crosses"
    return "never"


def run(out: Path, size: str = "default", executor: Any = None, progress: bool = True) -> dict[str, list[Path]]:
    """Theory grid, finite points, ``out/gradient_exponent.h5``, the figure and the JSON summary.

    ``executor`` is accepted for the ``attnflow study`` interface and not used (the maps take
    seconds; the finite networks run batched in torch in this process).
    """
    check_choice("size", size, tuple(SIZES))
    sz = SIZES[size]
    out = Path(out)
    seed = 20240306
    base = SignalPropParams(n=sz.n, sigma_b=SIGMA_B)
    meta = dict(base.params(), size=size, **{f"size_{k}": v for k, v in asdict(sz).items()}, c0=0.0, q0=1.0)
    t_start = time.perf_counter()
    w = H5Writer(out / "gradient_exponent.h5", SignalPropParams.name, meta, seed)
    try:
        table = overlap_table(sz.n, base.sigma_A, samples=sz.table_samples)
        alpha = np.linspace(*ALPHA_RANGE, sz.grid)
        sw = np.linspace(*SIGMA_W_RANGE, sz.grid)
        A, S = np.meshgrid(alpha, sw, indexing="ij")
        gc = gradient_candidates(coefficients(base, alpha=A, sigma_w=S), depth=sz.depth, table=table)
        g = w.group("theory", {"overlap_table_max_error": table.max_error()})
        w.coord(g, "alpha", alpha)
        w.coord(g, "sigma_w", sw)
        w.coord(g, "candidate", np.array(CANDIDATES, dtype="S"))
        w.data(g, "lambda_a", gc.lambda_a, ("alpha", "sigma_w"))
        for name in CANDIDATES:
            w.data(g, name, gc.candidate(name), ("alpha", "sigma_w"), {"description": LABELS[name]})
        w.data(g, "c_star", gc.c_star, ("alpha", "sigma_w"))
        w.data(g, "converged", gc.converged.astype(np.int8), ("alpha", "sigma_w"))
        lines = np.stack([on_zero_line(alpha, gc.lambda_a, gc.candidate(k))[1] for k in CANDIDATES])
        w.data(g, "alpha_on_order_chaos_line", on_zero_line(alpha, gc.lambda_a, gc.lambda_a)[0], ("sigma_w",))
        w.data(g, "on_order_chaos_line", lines, ("candidate", "sigma_w"),
               {"description": "each candidate interpolated on the lambda_a = 0 line (NaN: no crossing in that column)"})
        meets = {k: _meets(lines[i]) for i, k in enumerate(CANDIDATES)}
        g.attrs["meets_json"] = json.dumps(meets)
        w.flush()

        af = np.linspace(0.3, 0.7, sz.finite_grid)
        swf = np.linspace(1.5, 3.5, sz.finite_grid)
        keys = [k + s for k in CANDIDATES for s in ("", "_err")]
        meas = {k: np.full((sz.finite_grid, sz.finite_grid), np.nan) for k in keys}
        th = {k: np.full((sz.finite_grid, sz.finite_grid), np.nan) for k in CANDIDATES + ("lambda_a", "attractor_window")}
        for i, a in enumerate(af):
            for j, s in enumerate(swf):
                P = base.replace(alpha_A=float(a), alpha_M=float(a), sigma_w=float(s))
                res = finite_point(P, sz, seed + 100 * i + j)
                for k in keys:
                    meas[k][i, j] = res[k]
                pt = gradient_candidates(P, depth=sz.depth, table=table)
                for k in CANDIDATES + ("lambda_a",):
                    th[k][i, j] = float(pt.candidate(k) if k != "lambda_a" else pt.lambda_a)
                ex = exponents(P, table=table)
                T = gradient_transfer(coefficients(P), ex.q_state, ex.c_state * ex.q_state, table)
                th["attractor_window"][i, j] = float(hutchinson_slope(T, sz.n, sz.depth // 2, sz.depth))
            if progress:
                print(f"  gradient-exponent: finite row {i + 1}/{sz.finite_grid}", flush=True)
        g = w.group("finite", {"d": sz.d, "batch": sz.batch, "probes": sz.probes, "burn_in": sz.burn_in})
        w.coord(g, "alpha_finite", af)
        w.coord(g, "sigma_w_finite", swf)
        dims = ("alpha_finite", "sigma_w_finite")
        for k in keys:
            w.data(g, k + "_meas" if not k.endswith("_err") else k[:-4] + "_meas_err", meas[k], dims)
        for k, v in th.items():
            w.data(g, k + "_theory", v, dims)
        w.flush()
    except BaseException as exc:
        w.close(status=f"failed: {type(exc).__name__}: {exc}")
        raise
    w.close()
    seconds = time.perf_counter() - t_start
    fig = plot(out / "gradient_exponent.h5", out / "gradient_exponent.png")
    summary = out / "gradient_exponent.json"
    summary.write_text(json.dumps(_summary(out / "gradient_exponent.h5", seconds), indent=2) + "\n")
    return {"hdf5": [out / "gradient_exponent.h5"], "figure": [fig], "summary": [summary]}


def _commit(stored: str) -> str:
    if stored not in ("", "none", "unknown"):
        return stored
    from studies.provenance import git_commit

    return git_commit()


def _summary(h5: Path, seconds: float) -> dict:
    """The numbers of the gallery table: per candidate, whether and where its zero line meets lambda_a's."""
    with h5py.File(h5, "r") as f:
        g, fin = f["theory"], f["finite"]
        sw, a0 = g["sigma_w"][()], g["alpha_on_order_chaos_line"][()]
        lines = g["on_order_chaos_line"][()]
        out = {"size": str(f.attrs["size"]), "n": int(f.attrs["n"]), "L": int(f.attrs["size_depth"]),
               "git_commit": _commit(str(f.attrs["git_commit"])), "seconds": round(seconds, 1), "candidates": {}}
        meets = json.loads(g.attrs["meets_json"])
        for i, name in enumerate(CANDIDATES):
            v = lines[i]
            ok = np.isfinite(v)
            entry = {"label": LABELS[name], "meets_lambda_a_zero_line": meets[name],
                     "min_on_line": float(np.min(v[ok])) if ok.any() else None,
                     "max_on_line": float(np.max(v[ok])) if ok.any() else None}
            if meets[name] == "crosses":
                k = np.nonzero(ok)[0]
                s = np.sign(v[k])
                idx = np.nonzero(s[:-1] * s[1:] <= 0)[0]
                if idx.size:
                    j0, j1 = k[idx[0]], k[idx[0] + 1]
                    t = v[j0] / (v[j0] - v[j1]) if v[j0] != v[j1] else 0.0
                    entry["crossing"] = {"sigma_w": float(sw[j0] + t * (sw[j1] - sw[j0])),
                                         "alpha": float(a0[j0] + t * (a0[j1] - a0[j0]))}
            m, e = fin[name + "_meas"][()], fin[name + "_meas_err"][()]
            ref = fin[("attractor_window" if name == "attractor" else name) + "_theory"][()]
            entry["finite_max_abs_dev"] = float(np.nanmax(np.abs(m - ref)))
            entry["finite_max_dev_in_stderr"] = float(np.nanmax(np.abs(m - ref) / e))
            out["candidates"][name] = entry
    return out


def gallery_numbers(out: Path) -> list[dict]:
    """The summary's numbers as gallery rows (:mod:`studies.papers.gallery`).

    Per candidate: its smallest value on the lambda_a = 0 line (the paper's claim, that
    lambda_a and lambda_g vanish together at minimal test loss, needs 0 there) and the
    largest deviation of the finite networks from the maps, with that deviation in
    standard errors as the reference.
    """
    summary = _summary(Path(out) / "gradient_exponent.h5", float("nan"))
    rows = []
    for c in summary["candidates"].values():
        rows.append({"quantity": f"smallest λ_g on the λ_a = 0 line: {c['label']}",
                     "where": f"meets that line: {c['meets_lambda_a_zero_line']}", "ours": c["min_on_line"], "se": None,
                     "paper": "0 (λ_a, λ_g vanish together)", "reference": None, "source": "Cowsik et al."})
        rows.append({"quantity": f"largest |finite - map|: {c['label']}",
                     "where": f"n = {summary['n']}, L = {summary['L']}", "ours": c["finite_max_abs_dev"], "se": None,
                     "paper": None, "reference": f"{c['finite_max_dev_in_stderr']:.1f} standard errors",
                     "source": "Cowsik et al. (maps)"})
    return rows


def plot(h5: Path, path: Path) -> Path:
    """Four candidate panels (colour, zero lines, finite dots), the candidates on the lambda_a = 0 line, measured vs theory."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    with h5py.File(h5, "r") as f:
        g, fin = f["theory"], f["finite"]
        alpha, sw, la = g["alpha"][()], g["sigma_w"][()], g["lambda_a"][()]
        af, swf = fin["alpha_finite"][()], fin["sigma_w_finite"][()]
        AF, SF = np.meshgrid(af, swf, indexing="ij")
        n, depth = int(f.attrs["n"]), int(f.attrs["size_depth"])
        fig = Figure(figsize=(16, 9), layout="constrained")
        axs = fig.subplots(2, 3)
        panels = [axs[0, 0], axs[0, 1], axs[1, 0], axs[1, 1]]
        for ax, name in zip(panels, CANDIDATES):
            z = g[name][()]
            lim = min(max(np.nanmax(np.abs(z)), 1e-3), 1.0)
            norm = TwoSlopeNorm(0.0, -lim, lim)
            im = ax.pcolormesh(alpha, sw, z.T, cmap="RdBu_r", norm=norm, shading="auto")
            ax.scatter(AF.ravel(), SF.ravel(), c=fin[name + "_meas"][()].ravel(), cmap="RdBu_r", norm=norm, s=90,
                       edgecolors="k")
            ax.contour(alpha, sw, la.T, levels=[0.0], colors="k", linewidths=2)
            if np.nanmin(z) < 0 < np.nanmax(z) and name != "token_diff":
                ax.contour(alpha, sw, z.T, levels=[0.0], colors="m", linewidths=2, linestyles="--")
            fig.colorbar(im, ax=ax, label="per block (clipped)", extend="both")
            ax.set(xlabel="alpha = alpha_A = alpha_M", ylabel="sigma_w")
            ax.set_title(f"{LABELS[name]}\nsolid black: lambda_a = 0; dashed magenta: candidate = 0; dots: finite",
                         fontsize=9)
        ax = axs[0, 2]
        lines = g["on_order_chaos_line"][()]
        for i, name in enumerate(CANDIDATES):
            ax.plot(sw, lines[i], "o-", ms=3, label=LABELS[name])
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set(xlabel="sigma_w", ylabel="candidate on the lambda_a = 0 line",
               title="where a curve crosses 0, the two zero lines meet")
        ax.legend(fontsize=7)
        ax = axs[1, 2]
        for k, (name, mk) in enumerate(zip(CANDIDATES, "osD^")):
            ref = fin[("attractor_window" if name == "attractor" else name) + "_theory"][()].ravel()
            ax.errorbar(ref, fin[name + "_meas"][()].ravel(), yerr=np.nan_to_num(fin[name + "_meas_err"][()].ravel()),
                        fmt=mk, color=f"C{k}", ms=5, alpha=0.8,
                        label=LABELS[name] + (" (same fit window)" if name == "attractor" else ""))
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set(xlabel="maps (d = inf)", ylabel=f"finite, d = {int(fin.attrs['d'])}",
               title="finite networks against the maps (+- standard error)")
        ax.legend(fontsize=7)
        fig.suptitle(f"Candidates for Cowsik's lambda_g, n = {n}, L = {depth}, sigma_b = {SIGMA_B}")
        fig.savefig(path, dpi=90)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    return study_main("gradient_exponent", run, __doc__, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
