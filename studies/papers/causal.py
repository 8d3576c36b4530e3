"""The causal limit: under a causal mask every token converges to the first token's start.

With the causal mask token k attends to j <= k only, in the numerator and in Z_k
(Karagodin, Polyanskiy, Rigollet, arXiv:2411.04990; MODELS.md section 1):

    dx_k/dt = P_{x_k}( (1/Z_k) sum_{j <= k} exp(beta <Q x_k, K x_j>) V x_j ),
    Z_k = sum_{j <= k} exp(beta <Q x_k, K x_j>).

For V = I token 1 sees only itself, so P_{x_1}(x_1) = 0 and x_1(t) = x_1(0); for any Q, K
every token converges to x_1(0) for almost every start (KPR Thm 1), token k only after the
tokens before it (tokens arrive in order). This study runs batches of uniform starts
(``particles.uniform_sphere``) of n tokens for Q = K = V = I and for one random Q, K
(entries N(0, 1/d), V = I) over d and beta, and measures at the saved times

- dist_k(t) = 1 - <x_k(t), x_1(0)> and its maximum over k per system (median and quantiles
  over starts: the figure's bands);
- the drift of token 1, max_t max_i |x_1(t) - x_1(0)|_i (0 up to rounding for V = I);
- the arrival time of token k: the first saved time from which dist_k stays below
  ``TOL`` = 1e-3 (NaN if it never does by t_end); the collapse time is the last arrival;
- which token arrives last, and whether the arrival times are nondecreasing in k.

Answer (paper size, 256 starts per point, t to 60): token 1 never moves (largest drift
7e-16 in both settings); at beta = 1 every start of every d collapses onto x_1(0) (median
collapse time 13-14); at larger beta the collapse is metastable and slower: with Q = K = V = I
54% of starts have collapsed by t = 60 at beta = 4 and none at beta = 9 (the tokens sit in
metastable clusters longer than t = 60), with the random Q, K 98% and 65%. Token n arrives last
in 91-95% of the collapsed starts; the arrival times are nondecreasing in k (ties on the save
grid counted as in order) in 68-82% of them: a token that starts near x_1(0) may arrive early.

Sizes: ``smoke`` (seconds, the tests), ``default`` (under a minute), ``paper`` (n = 32,
d in {2, 3, 8, 32}, beta in {1, 4, 9}, 256 starts per point, t to 60; wall time in
``studies/papers/registry.py``). The numpy backend: for n = 32 it was the fastest on 2 cores
(numba's and torch's per-step overheads dominate at this size), and it supports the mask.

Usage: ``attnflow study causal [--smoke | --size paper] --out DIR``.

References
----------
Karagodin, Polyanskiy, Rigollet, "Clustering in causal attention masking", arXiv:2411.04990
(Thm 1: convergence to x_1(0) for V = I and any Q, K); Geshkovski, Letrouit, Polyanskiy,
Rigollet, arXiv:2312.10794 (GLPR), where the causal limit is listed among the open figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from integrators import solve
from integrators.validation import check_choice
from particles import SelfAttention, uniform_sphere

from studies.papers.common import study_main

__all__ = ["SIZES", "StudySize", "TOL", "SETTINGS", "arrival_times", "measure", "run", "plot", "gallery_numbers",
           "main"]

#: a token has arrived when 1 - <x_k, x_1(0)> stays below this
TOL = 1e-3
#: the attention matrices: Q = K = V = I, and one random Q, K (V = I)
SETTINGS = ("identity", "random_qk")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class StudySize:
    """n tokens, the grids of d and beta, starts per point, time span, step and saves."""

    n: int
    dims: tuple[int, ...]
    betas: tuple[float, ...]
    batch: int
    t_end: float
    dt: float
    n_save: int


SIZES = {
    "smoke": StudySize(n=8, dims=(2, 3), betas=(1.0, 4.0), batch=16, t_end=20.0, dt=0.2, n_save=41),
    "default": StudySize(n=32, dims=(2, 3, 8), betas=(1.0, 4.0), batch=64, t_end=40.0, dt=0.2, n_save=81),
    "paper": StudySize(n=32, dims=(2, 3, 8, 32), betas=(1.0, 4.0, 9.0), batch=256, t_end=60.0, dt=0.2, n_save=121),
}  # fmt: skip


def _model(setting: str, d: int, beta: float, seed: int) -> SelfAttention:
    """The causal SA model of one setting; the random Q, K are drawn from ``seed`` (one pair per d)."""
    if setting == "identity":
        return SelfAttention(beta=beta, causal=True)
    rng = np.random.default_rng([seed, d])
    q, k = rng.standard_normal((2, d, d)) / np.sqrt(d)
    return SelfAttention(beta=beta, Q=q, K=k, causal=True)


def arrival_times(t: np.ndarray, dist: np.ndarray, tol: float = TOL) -> np.ndarray:
    """First saved time from which ``dist`` stays below ``tol``, NaN where it never does.

    Parameters
    ----------
    t : (n_save,) saved times.
    dist : (n_save, ...) distances at those times.

    Returns
    -------
    (...) arrival times.
    """
    below = dist < tol
    # stays below from save i on: the reversed cumulative AND
    stays = np.flip(np.logical_and.accumulate(np.flip(below, 0), axis=0), 0)
    first = np.argmax(stays, axis=0)
    return np.where(stays.any(axis=0), t[first], np.nan)


def measure(t: np.ndarray, dist: np.ndarray, drift: np.ndarray) -> dict[str, np.ndarray]:
    """The study's numbers of one point from dist (n_save, batch, n) and drift (n_save, batch).

    Returns arrays: ``max_dist_q`` (quantile, n_save), ``arrival`` (batch, n), ``collapse_time``
    (batch,), ``last_token`` (batch,; -1 where not collapsed), ``monotone`` (batch,; 1 when the
    arrival times are nondecreasing in k, -1 where not collapsed), ``x1_drift`` (batch,).
    """
    maxd = np.max(dist, axis=-1)
    arr = arrival_times(t, dist)
    collapsed = np.all(np.isfinite(arr), axis=-1)
    collapse = np.where(collapsed, np.max(np.where(np.isfinite(arr), arr, -np.inf), axis=-1), np.nan)
    # the last token: ties on the save grid go to the highest index (the order KPR predicts)
    last = np.where(collapsed, arr.shape[-1] - 1 - np.argmax(np.flip(np.nan_to_num(arr, nan=-1.0), -1), axis=-1), -1)
    mono = np.where(collapsed, np.all(np.diff(arr, axis=-1) >= 0, axis=-1).astype(int), -1)
    return {"max_dist_q": np.quantile(maxd, QUANTILES, axis=1), "arrival": arr, "collapse_time": collapse,
            "last_token": last, "monotone": mono, "x1_drift": np.max(drift, axis=0)}


def _point(setting: str, d: int, beta: float, sz: StudySize, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    model = _model(setting, d, beta, seed)
    x0 = uniform_sphere(sz.batch, sz.n, d, seed=[seed, d, int(round(beta * 1000))])
    first = x0[:, 0].copy()
    obs = {"dist": lambda x, m: 1.0 - np.einsum("bnd,bd->bn", np.asarray(x), first),
           "x1_drift": lambda x, m: np.max(np.abs(np.asarray(x)[:, 0] - first), axis=-1)}
    sol = solve(model, x0, sz.t_end, dt=sz.dt, method="rk4", backend="numpy", save_at=sz.n_save, save_states=False,
                observables=obs)
    if sol.status != "complete":
        raise RuntimeError(f"causal study, {setting}, d = {d}, beta = {beta}: {sol.status}")
    return np.asarray(sol.t), measure(np.asarray(sol.t), sol.observables["dist"], sol.observables["x1_drift"])


def _commit() -> str:
    from studies.provenance import git_commit

    return git_commit()


def run(out: Path, size: str = "default", executor: Any = None, progress: bool = True) -> dict[str, list[Path]]:
    """All (setting, d, beta) points, ``out/causal.h5`` and ``out/causal.png``.

    ``executor`` is accepted for the ``attnflow study`` interface and not used (each point is
    one batched numpy integration of seconds).
    """
    check_choice("size", size, tuple(SIZES))
    sz = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = 2411_04990
    shape = (len(SETTINGS), len(sz.dims), len(sz.betas))
    res: dict[str, np.ndarray] = {}
    t = None
    t_start = time.perf_counter()
    for a, setting in enumerate(SETTINGS):
        for i, d in enumerate(sz.dims):
            for j, beta in enumerate(sz.betas):
                t, m = _point(setting, d, beta, sz, seed)
                for k, v in m.items():
                    if k not in res:
                        res[k] = np.zeros(shape + v.shape, dtype=v.dtype)
                    res[k][a, i, j] = v
                if progress:
                    done = (a * len(sz.dims) + i) * len(sz.betas) + j + 1
                    print(f"  causal: {setting}, d = {d}, beta = {beta:g} ({done}/{int(np.prod(shape))})", flush=True)
    seconds = time.perf_counter() - t_start
    h5 = out / "causal.h5"
    with h5py.File(h5, "w") as f:
        f.attrs.update({"study": "causal", "size": size, "git_commit": _commit(), "seed": seed, "tol": TOL,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds": round(seconds, 1), "method": "rk4", "backend": "numpy",
                        "size_json": json.dumps(asdict(sz)), "status": "complete"})
        for name, values in (("setting", np.array(SETTINGS, dtype="S")), ("d", np.array(sz.dims)),
                             ("beta", np.array(sz.betas)), ("quantile", np.array(QUANTILES)), ("t", t),
                             ("start", np.arange(sz.batch)), ("token", np.arange(1, sz.n + 1))):
            f[name] = values
            f[name].make_scale(name)
        dims = {"max_dist_q": ("quantile", "t"), "arrival": ("start", "token"), "collapse_time": ("start",),
                "last_token": ("start",), "monotone": ("start",), "x1_drift": ("start",)}
        for k, v in res.items():
            ds = f.create_dataset(k, data=v)
            for axis, dim in enumerate(("setting", "d", "beta") + dims[k]):
                ds.dims[axis].attach_scale(f[dim])
        f["last_token"].attrs["description"] = "0-based index of the last token to arrive; -1: not collapsed by t_end"
        f["monotone"].attrs["description"] = "1: arrival times nondecreasing in k; 0: not; -1: not collapsed by t_end"
    return {"hdf5": [h5], "figure": [plot(h5, out / "causal.png")]}


def plot(h5: Path, path: Path) -> Path:
    """Top rows: max_k (1 - <x_k, x_1(0)>) over t with quantile bands, per d (columns) and beta (colours),
    one row per setting; bottom row: median arrival time against the token index."""
    from matplotlib.figure import Figure

    with h5py.File(h5, "r") as f:
        settings = [s.decode() for s in f["setting"][()]]
        dims, betas, t = f["d"][()], f["beta"][()], f["t"][()]
        q, arr = f["max_dist_q"][()], f["arrival"][()]
        n = arr.shape[-1]
        fig = Figure(figsize=(3.6 * len(dims), 3.0 * (len(settings) + 1)), layout="constrained")
        axs = fig.subplots(len(settings) + 1, len(dims), squeeze=False)
        for a, setting in enumerate(settings):
            for i, d in enumerate(dims):
                ax = axs[a, i]
                for j, beta in enumerate(betas):
                    c = f"C{j}"
                    ax.fill_between(t, q[a, i, j, 0], q[a, i, j, -1], color=c, alpha=0.12, lw=0)
                    ax.fill_between(t, q[a, i, j, 1], q[a, i, j, -2], color=c, alpha=0.25, lw=0)
                    ax.plot(t, q[a, i, j, 2], color=c, lw=1.3, label=rf"$\beta$ = {beta:g}")
                ax.axhline(TOL, color="k", ls=":", lw=0.8)
                ax.set_yscale("log")
                ax.set_ylim(1e-12, 3)
                ax.set_title(f"{setting.replace('_', ' ')}, d = {d}", fontsize=9)
                ax.set_xlabel("t")
                if i == 0:
                    ax.set_ylabel(r"max$_k$ 1 - <x$_k$(t), x$_1$(0)>")
                    ax.legend(fontsize=7, title="median, 50% and 80% bands", title_fontsize=7)
        tok = np.arange(1, n + 1)
        for i, d in enumerate(dims):
            ax = axs[-1, i]
            for a, setting in enumerate(settings):
                for j, beta in enumerate(betas):
                    x = arr[a, i, j]
                    with np.errstate(all="ignore"):
                        med = np.where(np.isfinite(x).mean(0) >= 0.5, np.nanmedian(x, axis=0), np.nan)
                    ax.plot(tok, med, ("o-" if a == 0 else "s--"), ms=2.5, lw=1, color=f"C{j}",
                            label=f"{setting.replace('_', ' ')}, β = {beta:g}")
            ax.set_xlabel("token k")
            ax.set_title(f"d = {d}: median arrival time\n(1 - <x_k, x_1(0)> stays < {TOL:g})", fontsize=8)
            if i == 0:
                ax.set_ylabel("t")
                ax.legend(fontsize=6)
        fig.suptitle(f"Causal mask, n = {n}, V = I: every token converges to x_1(0) (KPR arXiv:2411.04990)")
        fig.savefig(path, dpi=80)
    return Path(path)


def gallery_numbers(out: Path) -> list[dict]:
    """Per setting and beta (over d): the fraction of starts collapsed onto x_1(0) by t_end (KPR: almost
    every start, so 1 as t_end grows), the median collapse time, the fraction with arrivals in token
    order (ties on the save grid count as in order) and the fraction where token n arrives last; and per setting the largest drift of x_1 (0 for V = I)."""
    with h5py.File(Path(out) / "causal.h5", "r") as f:
        settings = [s.decode() for s in f["setting"][()]]
        dims, betas, t_end = f["d"][()], f["beta"][()], float(f["t"][-1])
        ct, mono, drift = f["collapse_time"][()], f["monotone"][()], f["x1_drift"][()]
        lt = f["last_token"][()]
        n = f["arrival"].shape[-1]
    where_d = f"n = {n}, d ∈ {{{', '.join(str(int(d)) for d in dims)}}}"
    rows = []
    for a, setting in enumerate(settings):
        label = "Q = K = V = I" if setting == "identity" else "random Q, K, V = I"
        rows.append({"quantity": f"largest drift of x_1, max_t |x_1(t) - x_1(0)| ({label})", "where": where_d,
                     "ours": float(np.max(drift[a])), "se": None, "paper": 0.0, "reference": "token 1 is fixed",
                     "source": "KPR (V = I)"})
        for j, beta in enumerate(betas):
            c = ct[a, :, j].ravel()
            ok = np.isfinite(c)
            frac = float(ok.mean())
            rows.append({"quantity": f"fraction of starts collapsed onto x_1(0) by t = {t_end:g} ({label})",
                         "where": f"{where_d}, β = {beta:g}", "ours": frac,
                         "se": float(np.sqrt(frac * (1 - frac) / c.size)), "paper": "1 (almost every start)",
                         "reference": None, "source": "KPR Thm 1"})
            med = float(np.median(c[ok])) if ok.any() else None
            rows.append({"quantity": f"median collapse time, all tokens within {TOL:g} ({label})",
                         "where": f"{where_d}, β = {beta:g}, collapsed starts", "ours": med, "se": None,
                         "paper": None, "reference": None, "source": "KPR"})
            m = mono[a, :, j].ravel()
            m = m[m >= 0]
            rows.append({"quantity": f"fraction of collapsed starts whose tokens arrive in order ({label})",
                         "where": f"{where_d}, β = {beta:g}", "ours": float(m.mean()) if m.size else None,
                         "se": float(np.sqrt(m.mean() * (1 - m.mean()) / m.size)) if m.size else None,
                         "paper": "tokens arrive in order", "reference": None, "source": "KPR"})
            last = lt[a, :, j].ravel()
            last = last[last >= 0]
            share = float(np.mean(last == n - 1)) if last.size else None
            rows.append({"quantity": f"fraction of collapsed starts where token n arrives last ({label})",
                         "where": f"{where_d}, β = {beta:g}", "ours": share,
                         "se": float(np.sqrt(share * (1 - share) / last.size)) if last.size else None,
                         "paper": "tokens arrive in order", "reference": None, "source": "KPR"})
    return rows


def main(argv: list[str] | None = None) -> int:
    return study_main("causal", run, __doc__, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
