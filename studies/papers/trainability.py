"""Trainability: final held-out loss of deep transformers over the (lambda_a, lambda_g) plane.

A grid of initialisations (alpha = alpha_A = alpha_M, sigma_w, sigma_b; the other
hyperparameters at their defaults) of the reference architecture
(:class:`particles.signalprop.trainable.TrainableTransformer`); each model is trained
briefly with Adam on a task generated on the fly (no downloads):

* ``reverse`` (default): n random tokens, the target at position i is token n - 1 - i;
* ``modadd``: the target at position i is (t_i + t_{i+1 mod n}) mod vocab.

Training batches are fresh samples; the held-out loss is measured on a fixed set drawn
from a separate seed. For each initialisation the exponents lambda_a and lambda_g come
from the large-width maps (:func:`particles.signalprop.exponents`). The one-number
summary is the R^2 of a quadratic least-squares fit of the final held-out loss (averaged
over a grid point's seeds) in (lambda_a, lambda_g), with its leave-one-out (predictive)
version and, with several seeds, a 95% bootstrap interval over seeds; with fewer than 12
grid points the fit is linear (3 coefficients, at least 6 points); also reported: R^2
with lambda_a alone and with lambda_g alone, and the Spearman rank correlation of the
loss with the distance |(lambda_a, lambda_g)| from the simultaneous zero (the paper's
claim: the loss is smallest where both exponents vanish). A run
whose loss becomes non-finite is marked diverged and scored at chance level log(vocab).

Sizes: ``smoke`` (seconds; the tests), ``default`` (32 models, depth 8, d = 32, 150
steps: about 1.5 minutes with 2 workers), ``full`` (72 models, depth 16, d = 64, 300 Adam
steps each: 16 minutes measured on 2 shared cores with the default ``--workers 2``; there,
R^2 = 0.85, leave-one-out 0.80, Spearman(loss, |(lambda_a, lambda_g)|) = 0.97), ``paper``
(the full grid, 3 seeds per point, 150 steps each: R^2 with its interval over seeds;
14 minutes on 2 cores: 822 s measured, with other work on the machine; R^2 = 0.87, 95% interval
over seeds [0.845, 0.871]).

Usage: ``python -m studies.papers.trainability [--smoke | --size S] [--out DIR] [--workers K]``.

References
----------
Cowsik, Nebabu, Qi, Ganguli, arXiv:2403.02579, section 4 (test loss predicted by the
two exponents at initialisation); MODELS.md section 3 ("Trainability experiment").
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from particles.signalprop import SignalPropParams, exponents
from integrators.validation import ParameterError, check_choice, check_positive_int

from studies.papers.signalprop import H5Writer
from studies.papers.gallery_nets import trainability_numbers as gallery_numbers  # the gallery table (issue 13)

__all__ = ["gallery_numbers", "SIZES", "TASKS_SP", "main", "make_batch", "plot", "quadratic_r2", "run", "train_one"]

TASKS_SP = ("reverse", "modadd")
SIZES = ("smoke", "default", "full", "paper")


@dataclass(frozen=True)
class TrainSize:
    n: int
    vocab: int
    d: int
    depth: int
    alphas: tuple[float, ...]
    sigma_ws: tuple[float, ...]
    sigma_bs: tuple[float, ...]
    seeds: int
    steps: int
    batch: int
    eval_size: int
    lr: float
    log_every: int


_SIZES = {
    # 3 x 2 models: enough for the linear fit in (lambda_a, lambda_g) (3 coefficients) to be finite
    "smoke": TrainSize(6, 6, 16, 2, (0.3, 0.6, 0.9), (1.0, 3.0), (0.0,), 1, 12, 16, 64, 3e-3, 4),
    "default": TrainSize(8, 8, 32, 8, (0.2, 0.45, 0.7, 0.95), (0.5, 1.5, 3.0, 4.5), (0.0, 1.0), 1, 150, 32, 256, 2e-3, 10),
    "full": TrainSize(8, 8, 64, 16, (0.1, 0.3, 0.5, 0.7, 0.85, 0.95), (0.5, 1.0, 2.0, 3.0, 4.0, 5.0), (0.0, 1.0), 1, 300, 64,
                      512, 2e-3, 20),
    # the full grid with 3 seeds per point and half the steps, so that it fits 30 minutes on 2 cores
    "paper": TrainSize(8, 8, 64, 16, (0.1, 0.3, 0.5, 0.7, 0.85, 0.95), (0.5, 1.0, 2.0, 3.0, 4.0, 5.0), (0.0, 1.0), 3, 150,
                       64, 512, 2e-3, 10),
}  # fmt: skip

#: bootstrap resamples for the confidence interval of R^2 over seeds
N_BOOT = 1000


def make_batch(task: str, batch: int, n: int, vocab: int, gen):
    """(tokens, targets), both (batch, n) int64, for ``task`` drawn with torch generator ``gen``."""
    import torch

    check_choice("task", task, TASKS_SP)
    tokens = torch.randint(0, vocab, (batch, n), generator=gen)
    if task == "reverse":
        return tokens, tokens.flip(1)
    return tokens, (tokens + tokens.roll(-1, dims=1)) % vocab


def train_one(job: dict) -> dict:
    """Train one model (a picklable job dict) and return its losses; used by the worker pool."""
    import torch

    torch.set_num_threads(1)
    sz = TrainSize(**job["size"])
    P = SignalPropParams(n=sz.n, alpha_A=job["alpha"], alpha_M=job["alpha"], sigma_w=job["sigma_w"], sigma_b=job["sigma_b"])
    from particles.signalprop.trainable import TrainableTransformer

    model = TrainableTransformer(P, sz.vocab, sz.d, sz.depth, seed=job["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=sz.lr)
    gen = torch.Generator().manual_seed(job["seed"] + 1)
    held = torch.Generator().manual_seed(10**6 + job["seed"])
    x_eval, y_eval = make_batch(job["task"], sz.eval_size, sz.n, sz.vocab, held)
    lossf = torch.nn.functional.cross_entropy

    def held_out() -> float:
        with torch.no_grad():
            return float(lossf(model(x_eval).reshape(-1, sz.vocab), y_eval.reshape(-1)))

    curve, train_curve = [held_out()], []
    diverged = False
    t0 = time.perf_counter()
    for step in range(1, sz.steps + 1):
        x, y = make_batch(job["task"], sz.batch, sz.n, sz.vocab, gen)
        loss = lossf(model(x).reshape(-1, sz.vocab), y.reshape(-1))
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % sz.log_every == 0:
            train_curve.append(float(loss.detach()))
            curve.append(held_out())
    n_log = sz.steps // sz.log_every + 1
    chance = math.log(sz.vocab)
    final = curve[-1] if not diverged and math.isfinite(curve[-1]) else chance
    curve = curve + [np.nan] * (n_log - len(curve))
    train_curve = train_curve + [np.nan] * (n_log - 1 - len(train_curve))
    return dict(job, final_loss=final, diverged=diverged, held_out_curve=curve, train_curve=train_curve,
                seconds=time.perf_counter() - t0)


def quadratic_r2(a: np.ndarray | None, g: np.ndarray | None, y: np.ndarray) -> tuple[float, float]:
    """(R^2, leave-one-out R^2) of the least-squares fit y ~ quadratic polynomial in (a, g).

    The polynomial is c0 + c1 a + c2 a^2 + c3 g + c4 g^2 + c5 a g (terms of a missing
    variable dropped). The leave-one-out R^2 uses the exact PRESS residuals e_i / (1 - h_ii)
    and says how well the exponents *predict* an unseen model's loss. Both are NaN when there
    are not more models than coefficients.
    """
    cols = [np.ones_like(y)]
    for v in (a, g):
        if v is not None:
            cols += [v, v**2]
    if a is not None and g is not None:
        cols.append(a * g)
    return _r2_of(np.stack(cols, axis=1), y)


def fit_r2(a: np.ndarray, g: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """(R^2, leave-one-out R^2, basis) of the largest polynomial fit the number of models supports.

    The quadratic basis (6 coefficients) needs at least 12 models, the linear one
    c0 + c1 a + c2 g (3 coefficients) at least 6; with fewer both are NaN. Two models per
    coefficient keep the leave-one-out residuals e_i / (1 - h_ii) from blowing up.
    """
    if len(y) >= 12:
        return (*quadratic_r2(a, g, y), "quadratic")
    if len(y) >= 6:
        X = np.stack([np.ones_like(y), a, g], axis=1)
        return (*_r2_of(X, y), "linear")
    return float("nan"), float("nan"), "none"


def _r2_of(X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(R^2, leave-one-out R^2) of the least-squares fit y ~ X (NaN when undetermined or y constant)."""
    if X.shape[0] <= X.shape[1]:
        return float("nan"), float("nan")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    hat = np.einsum("ij,ji->i", X, np.linalg.pinv(X))
    press = resid / np.clip(1.0 - hat, 1e-12, None)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan"), float("nan")
    return 1.0 - float(np.sum(resid**2)) / ss_tot, 1.0 - float(np.sum(press**2)) / ss_tot


def seed_interval(a: np.ndarray, g: np.ndarray, loss: np.ndarray, seed: int = 0,
                  n_boot: int = N_BOOT) -> tuple[float, float, np.ndarray]:
    """A 95% bootstrap interval of R^2 over seeds, and the R^2 of each seed's own grid.

    ``loss`` has shape (points, seeds); ``a``, ``g`` shape (points,). Each resample draws,
    independently at every grid point, ``seeds`` seeds with replacement and fits the
    mean loss (the fit of :func:`fit_r2`), so the interval shows how much R^2 owes to the
    training noise of the particular seeds. NaN bounds with a single seed.
    """
    points, seeds = loss.shape
    per_seed = np.array([fit_r2(a, g, loss[:, s])[0] for s in range(seeds)])
    if seeds < 2:
        return float("nan"), float("nan"), per_seed
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, seeds, size=(points, seeds))
        boot[b] = fit_r2(a, g, np.take_along_axis(loss, pick, axis=1).mean(axis=1))[0]
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return float(lo), float(hi), per_seed


def run(out: Path, size: str = "full", executor=None, progress: bool = True, task: str = "reverse",
        workers: int = 2) -> dict[str, list[Path]]:
    """Train the grid, write ``out/trainability.h5`` and ``out/trainability.png``; return their paths.

    ``executor`` is accepted for the ``attnflow study`` interface and not used; parallelism
    is ``workers`` processes (one torch thread each).
    """
    check_choice("size", size, SIZES)
    check_choice("task", task, TASKS_SP)
    workers = check_positive_int("workers", workers)
    sz = _SIZES[size]
    out = Path(out)
    points = list(itertools.product(sz.alphas, sz.sigma_ws, sz.sigma_bs))
    # model order: grid point slowest, replica fastest, so reshape(points, seeds) groups a point's seeds
    jobs = [dict(size=asdict(sz), task=task, alpha=a, sigma_w=w, sigma_b=b, replica=s, seed=1000 * s + k)
            for k, (a, w, b) in enumerate(points) for s in range(sz.seeds)]
    # exponents at initialisation, from the large-width maps (large-d theory of the same architecture)
    lam = []
    for j in jobs:
        e = exponents(SignalPropParams(n=sz.n, alpha_A=j["alpha"], alpha_M=j["alpha"], sigma_w=j["sigma_w"], sigma_b=j["sigma_b"]))
        lam.append((float(e.lambda_a), float(e.lambda_g), float(e.lambda_mean)))
    results: list[dict] = [None] * len(jobs)  # type: ignore[list-item]
    t0 = time.perf_counter()
    if workers == 1:
        for i, j in enumerate(jobs):
            results[i] = train_one(j)
            if progress:
                print(f"  model {i + 1}/{len(jobs)}: loss {results[i]['final_loss']:.3f}", flush=True)
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(train_one, j): i for i, j in enumerate(jobs)}
            for done, fut in enumerate(cf.as_completed(futs), 1):
                results[futs[fut]] = fut.result()
                if progress:
                    print(f"  model {done}/{len(jobs)} done", flush=True)
    wall = time.perf_counter() - t0
    lam_a, lam_g, lam_m = (np.array(v) for v in zip(*lam))
    final = np.array([r["final_loss"] for r in results])
    # the fit is over grid points, of the loss averaged over a point's seeds
    per_point = final.reshape(len(points), sz.seeds)
    pa, pg, mean_loss = lam_a[:: sz.seeds], lam_g[:: sz.seeds], per_point.mean(axis=1)
    r2, r2_loo, basis = fit_r2(pa, pg, mean_loss)
    r2_lo, r2_hi, r2_seed = seed_interval(pa, pg, per_point)
    r2_a, _ = quadratic_r2(pa, None, mean_loss)
    r2_g, _ = quadratic_r2(None, pg, mean_loss)
    from scipy.stats import spearmanr

    rho = float(spearmanr(np.hypot(pa, pg), mean_loss).statistic) if len(mean_loss) > 2 else float("nan")
    meta = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(sz).items()}, "size": size, "task": task}
    w = H5Writer(out / "trainability.h5", SignalPropParams.name, meta, seed=0,
                 extra={"r2_quadratic": r2, "r2_quadratic_loo": r2_loo, "r2_lambda_a_only": r2_a, "r2_lambda_g_only": r2_g, "wall_seconds": wall,
                        "fit_basis": basis, "r2_ci95_low": r2_lo, "r2_ci95_high": r2_hi,
                        "r2_per_seed": r2_seed,
                        "spearman_loss_vs_exponent_norm": rho,
                        "summary": f"R^2 of a {basis} fit of the seed-mean final held-out loss in (lambda_a, lambda_g), "
                                   f"95% bootstrap interval over seeds"})
    try:
        g = w.group("models")
        w.coord(g, "model", np.arange(len(jobs)))
        w.coord(g, "log_step", np.arange(sz.steps // sz.log_every + 1) * sz.log_every)
        for key in ("alpha", "sigma_w", "sigma_b", "replica", "seed"):
            w.data(g, key, np.array([j[key] for j in jobs]), ("model",))
        w.data(g, "lambda_a", lam_a, ("model",))
        w.data(g, "lambda_g", lam_g, ("model",))
        w.data(g, "lambda_mean", lam_m, ("model",))
        w.data(g, "final_loss", final, ("model",))
        w.data(g, "diverged", np.array([r["diverged"] for r in results], dtype=np.int8), ("model",))
        w.data(g, "held_out_loss", np.array([r["held_out_curve"] for r in results]), ("model", "log_step"))
        w.data(g, "train_loss", np.array([[np.nan] + r["train_curve"] for r in results]), ("model", "log_step"))
        w.data(g, "train_seconds", np.array([r["seconds"] for r in results]), ("model",))
    except BaseException as exc:
        w.close(status=f"failed: {type(exc).__name__}: {exc}")
        raise
    w.close()
    fig = plot(out / "trainability.h5", out / "trainability.png")
    if progress:
        ci = f", 95% interval over seeds [{r2_lo:.3f}, {r2_hi:.3f}]" if np.isfinite(r2_lo) else ""
        print(f"R^2 ({basis} in lambda_a, lambda_g) = {r2:.3f} (leave-one-out {r2_loo:.3f}{ci}); "
              f"lambda_a only {r2_a:.3f}; lambda_g only {r2_g:.3f}; Spearman(loss, |(lambda_a, lambda_g)|) {rho:.3f}")
    return {"hdf5": [out / "trainability.h5"], "figure": [fig]}


def _fit_text(r2: float, r2_loo: float, models: int, basis: str = "quadratic",
              ci: tuple[float, float] = (float("nan"), float("nan"))) -> str:
    """The title's fit summary; "n/a" with the reason when the fit is undefined."""
    if np.isfinite(r2):
        band = f", 95% over seeds [{ci[0]:.2f}, {ci[1]:.2f}]" if np.isfinite(ci[0]) else ""
        return f"{basis} fit $R^2$ = {r2:.2f} (leave-one-out {r2_loo:.2f}{band})"
    if models < 6:
        return f"fit $R^2$ n/a ({models} grid points; the linear fit needs 6)"
    return "fit $R^2$ n/a (all final losses equal)"


def plot(h5: Path, figure: Path) -> Path:
    """Final held-out loss over the (lambda_a, lambda_g) plane, and the loss curves."""
    import h5py
    from matplotlib.figure import Figure

    with h5py.File(h5, "r") as f:
        g = f["models"]
        la, lg, loss = g["lambda_a"][()], g["lambda_g"][()], g["final_loss"][()]
        curves, steps = g["held_out_loss"][()], g["log_step"][()]
        r2, r2_loo = f.attrs["r2_quadratic"], f.attrs["r2_quadratic_loo"]
        basis = str(f.attrs.get("fit_basis", "quadratic"))
        ci = (float(f.attrs.get("r2_ci95_low", np.nan)), float(f.attrs.get("r2_ci95_high", np.nan)))
        seeds = max(int(f.attrs.get("seeds", 1)), 1)
        n_points = len(g["lambda_a"]) // seeds
        task = f.attrs.get("task", "")
        vocab = f.attrs.get("vocab")
    # a grid point's seeds share (lambda_a, lambda_g): show their mean, with its standard error on the right
    per_point = loss.reshape(n_points, seeds)
    mean_loss, pa, pg = per_point.mean(axis=1), la[::seeds], lg[::seeds]
    se_loss = per_point.std(axis=1, ddof=1) / np.sqrt(seeds) if seeds > 1 else None
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax, ax2, ax3 = fig.subplots(1, 3)
    sc = ax.scatter(pa, pg, c=mean_loss, cmap="viridis", s=60, edgecolors="k")
    ax.axvline(0, color="k", lw=1)
    ax.axhline(0, color="k", lw=1, ls="--")
    fig.colorbar(sc, ax=ax, label="final held-out loss" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
    ax.set(xlabel=r"$\lambda_a$ (angle exponent)", ylabel=r"$\lambda_g$ (gradient exponent)")
    ax.set_title(f"task {task}: {_fit_text(r2, r2_loo, n_points, basis, ci)}", fontsize=10)
    norm_loss = (loss - np.nanmin(loss)) / max(np.nanmax(loss) - np.nanmin(loss), 1e-12)
    cmap = __import__("matplotlib").colormaps["viridis"]
    for c, v in zip(curves, norm_loss):
        ax2.plot(steps, c, color=cmap(v), lw=0.8)
    # the legend names the line families (one line per model would not fit)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=cmap(0.5), lw=0.8, label=f"{len(loss)} models, colour = final loss (left)")]
    if np.isfinite(loss).any():
        best = int(np.nanargmin(loss))
        ax2.plot(steps, curves[best], color="k", lw=1.6, ls=":")
        handles.append(Line2D([], [], color="k", lw=1.6, ls=":", label=rf"lowest final loss: $\lambda_a$ = {la[best]:.2f}, "
                                                                         rf"$\lambda_g$ = {lg[best]:.2f}"))
    if vocab is not None:
        ax2.axhline(np.log(float(vocab)), color="0.5", lw=1, ls="--")
        handles.append(Line2D([], [], color="0.5", lw=1, ls="--", label=f"chance level log(vocab = {int(vocab)})"))
    ax2.legend(handles=handles, fontsize=7, loc="upper right")
    ax2.set(xlabel="Adam step", ylabel="held-out loss", title="held-out loss during training")
    ax3.errorbar(np.hypot(pa, pg), mean_loss, yerr=se_loss, fmt="o", ms=4, capsize=2)
    if vocab is not None:
        ax3.axhline(np.log(float(vocab)), color="0.5", lw=1, ls="--")
    bars = f"mean of {seeds} seeds +- 1 standard error" if seeds > 1 else "one seed: no standard error"
    ax3.set(xlabel=r"$|(\lambda_a, \lambda_g)|$", ylabel="final held-out loss",
            title=f"loss against the distance from (0, 0)\n({bars})")
    figure = Path(figure)
    fig.savefig(figure, dpi=120)
    return figure


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.papers.trainability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny size used by the tests")
    p.add_argument("--size", choices=SIZES, default=None)
    p.add_argument("--out", default="runs/trainability")
    p.add_argument("--task", choices=TASKS_SP, default="reverse")
    p.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each (default 2)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.smoke and args.size not in (None, "smoke"):
        raise SystemExit("--smoke and --size disagree")
    size = "smoke" if args.smoke else (args.size or "full")
    try:
        res = run(Path(args.out), size, progress=not args.no_progress, task=args.task, workers=args.workers)
    except ParameterError as exc:
        raise SystemExit(f"error: {exc}") from None
    for kind, items in res.items():
        for item in items:
            print(f"{kind}: {item}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
