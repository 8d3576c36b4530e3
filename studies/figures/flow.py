"""Figures of a stored attention-flow run (``attnflow plot``).

Four panels: the tokens' trajectories (on the circle for d = 2, on the sphere
for d = 3; the final Gram matrix for d > 3), the histogram of the pairwise inner
products <x_i, x_j> over time (a heatmap), the number of clusters and the
energy E_beta = (1/(2 beta n^2)) sum_{ij} exp(beta <x_i, x_j>) (GLPR eq. 3.5)
over time, all three on the same time axis (first to last save). Quantities not
stored as observables are computed from the stored states when there are any; the
small grey note above a panel says which ("observable read from the file" or
"computed from the stored states").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from particles.sphere.observables import cluster_count, energy, gram, pair_inner_products

__all__ = ["handles", "plot_run", "FLOW_MODELS"]

FLOW_MODELS = ("sa", "usa", "usa-meta")
_BINS = np.linspace(-1.0, 1.0, 51)
_MAX_PAIR_TOKENS = 256  # pair statistics from more tokens than this use a fixed subset
_MAX_WORK = 2e8  # n^2 * batch * saves above which derived observables are not recomputed


def handles(run) -> bool:
    model = str(run.attrs.get("model", ""))
    return model.removeprefix("noisy-") in FLOW_MODELS


def _edges(t: np.ndarray) -> np.ndarray:
    """Cell edges around the saved times (for a heatmap over non-uniform times)."""
    if len(t) == 1:
        return np.array([t[0] - 0.5, t[0] + 0.5])
    mid = 0.5 * (t[1:] + t[:-1])
    return np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]])


def _pair_histogram(run) -> tuple[np.ndarray | None, str]:
    """(time, bins) density of the pairwise inner products, pooled over the batch."""
    if run.state is not None and run.state.shape[2] >= 2:
        x = run.state
        label = "all systems" if x.shape[1] > 1 else ""
        if x.shape[2] > _MAX_PAIR_TOKENS:
            idx = np.sort(np.random.default_rng(0).choice(x.shape[2], _MAX_PAIR_TOKENS, replace=False))
            x = x[:, :, idx]
            label = f"{_MAX_PAIR_TOKENS} of {run.state.shape[2]} tokens"
        h = np.stack([np.histogram(np.clip(pair_inner_products(xt), -1, 1), _BINS, density=True)[0] for xt in x])
        return h, label
    if "pair_histogram" in run.observables:
        return run.observables["pair_histogram"].mean(axis=1), "observable read from the file, mean over systems"
    return None, ""


def _series(run, name: str):
    """A stored (time, batch) observable, or one computed from the states; None if neither."""
    if name in run.observables:
        return np.asarray(run.observables[name], dtype=float), "observable read from the file"
    x = run.state
    if x is None or np.prod(x.shape[:3], dtype=float) * x.shape[2] > _MAX_WORK:
        return None, ""
    if name == "energy":
        beta = float(run.params.get("beta", 0.0))
        if beta <= 0:
            return None, ""
        return np.stack([energy(xt, beta=beta) for xt in x]), "computed from the stored states"
    return (np.stack([cluster_count(xt) for xt in x]).astype(float),
            r"computed from the stored states, $\langle x_i, x_j \rangle > 1 - 10^{-3}$")


def _draw_series(ax, t, y, ylabel, note, step=False):
    if y is None:
        ax.text(0.5, 0.5, f"{ylabel}: not stored\n(and no states to compute it)", ha="center", va="center",
                transform=ax.transAxes, color="0.4")  # fmt: skip
        ax.set_axis_off()
        return
    draw = (lambda a, b, **k: ax.step(a, b, where="post", **k)) if step else ax.plot
    dots = {"marker": "o", "ms": 3} if len(t) <= 25 else {}  # few saves: show where they are
    if y.shape[1] <= 8:
        for b in range(y.shape[1]):
            draw(t, y[:, b], lw=1.5, label=f"system {b}" if y.shape[1] > 1 else None, **dots)
        if y.shape[1] > 1:
            ax.legend(fontsize=7, frameon=False)
    else:
        ax.fill_between(t, np.nanmin(y, 1), np.nanmax(y, 1), color="C0", alpha=0.25, lw=0, label="min-max over systems")
        draw(t, np.nanmean(y, 1), color="C0", lw=1.8, label=f"mean of {y.shape[1]} systems")
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel("t")
    ax.set_ylabel(ylabel)
    _time_axis(ax, t)
    if step:  # counts: integer ticks, even when the count is constant (one integer in view)
        from matplotlib.ticker import MaxNLocator

        lo, hi = np.nanmin(y), np.nanmax(y)
        ax.set_ylim(max(0.0, lo - 1.0), hi + 1.0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if note:
        ax.set_title(note, fontsize=8, color="0.35", loc="right")
    ax.grid(alpha=0.3)


def _time_axis(ax, t: np.ndarray) -> None:
    """The time axis of every time panel: exactly the saved span, so the panels line up."""
    if len(t) > 1:
        ax.set_xlim(t[0], t[-1])


def _token_colors(n: int):
    import matplotlib.pyplot as plt

    return plt.get_cmap("twilight" if n > 10 else "tab10")(np.linspace(0, 1, n, endpoint=n <= 10))


def _draw_circle(ax, x, t):
    """x: (time, n, 2) on the unit circle; drawn at radius 0.5 + 0.5 t / T so that time runs outwards."""
    th = np.linspace(0, 2 * np.pi, 400)
    r = 0.5 + 0.5 * (t - t[0]) / max(t[-1] - t[0], 1e-300)
    for rad, ls in ((0.5, ":"), (1.0, "-")):
        ax.plot(rad * np.cos(th), rad * np.sin(th), color="0.75", lw=1, ls=ls, zorder=0)
    y = x * r[:, None, None]
    cols = _token_colors(x.shape[1])
    for i in range(x.shape[1]):
        ax.plot(y[:, i, 0], y[:, i, 1], color=cols[i], lw=1.2, alpha=0.85)
    ax.scatter(y[0, :, 0], y[0, :, 1], facecolors="none", edgecolors=cols, s=22, lw=1, label=f"t = {t[0]:.3g} (radius 1/2)")
    ax.scatter(y[-1, :, 0], y[-1, :, 1], color=cols, s=30, edgecolors="k", lw=0.5, zorder=3, label=f"t = {t[-1]:.3g} (radius 1)")
    ax.set_aspect("equal")
    ax.set_xlim(-1.12, 1.12)
    ax.set_ylim(-1.12, 1.12)
    ax.legend(fontsize=7, loc="lower right", frameon=False, title="angle = position, radius = time", title_fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_sphere(ax, x):
    """x: (time, n, 3) on S^2, in a 3D axes."""
    u, v = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.4)
    cols = _token_colors(x.shape[1])
    for i in range(x.shape[1]):
        ax.plot(x[:, i, 0], x[:, i, 1], x[:, i, 2], color=cols[i], lw=1, alpha=0.8)
    ax.scatter(*x[0].T, facecolors="none", edgecolors=cols, s=18, lw=1, depthshade=False, label="t = start")
    ax.scatter(*x[-1].T, color=cols, s=30, edgecolors="k", lw=0.5, depthshade=False, label="t = end")
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_zlim(-1, 1)
    ax.set_xticks([-1, 0, 1])
    ax.set_yticks([-1, 0, 1])
    ax.set_zticks([-1, 0, 1])
    ax.tick_params(labelsize=7)
    for axis, name in zip("xyz", ("$x_1$", "$x_2$", "$x_3$")):
        getattr(ax, f"set_{axis}label")(name, fontsize=8, labelpad=2)
    ax.legend(fontsize=7, loc="upper left", frameon=False)


def _draw_gram(fig, ax, x):
    """Final Gram matrix, tokens ordered by their first principal direction (clusters show as blocks)."""
    order = np.argsort(x @ np.linalg.svd(x, full_matrices=False)[2][0])
    g = gram(x[None, order])[0]
    im = ax.imshow(g, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label=r"$\langle x_i, x_j \rangle$")
    ax.set_xlabel("token (sorted)")
    ax.set_ylabel("token (sorted)")


def plot_run(run, out: str | Path, system: int = 0) -> Path:
    """Draw the four panels of ``run`` (a :class:`studies.store.Run`) into ``out`` (PNG, PDF, SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    from integrators.validation import ParameterError

    t = run.t
    if len(t) == 0:
        raise ParameterError("file", f"{run.path} holds no saved frame yet")
    x = run.state
    if x is not None and not 0 <= system < x.shape[1]:
        raise ParameterError("system", f"must lie in [0, {x.shape[1] - 1}], got {system}")
    fig = plt.figure(figsize=(11, 8.5), layout="constrained")
    gs = fig.add_gridspec(2, 2)
    d = None if x is None else x.shape[-1]
    ax0 = fig.add_subplot(gs[0, 0], projection="3d" if d == 3 else None)
    sys_note = f" (system {system} of {x.shape[1]})" if x is not None and x.shape[1] > 1 else ""
    if d == 2:
        _draw_circle(ax0, x[:, system], t)
        ax0.set_title("trajectories on the circle" + sys_note)
    elif d == 3:
        _draw_sphere(ax0, x[:, system])
        ax0.set_title("trajectories on the sphere" + sys_note)
    elif x is not None:
        _draw_gram(fig, ax0, x[-1, system])
        ax0.set_title(f"Gram matrix at t = {t[-1]:.4g}, d = {d}" + sys_note)
    else:
        ax0.text(0.5, 0.5, "states not stored", ha="center", va="center", transform=ax0.transAxes, color="0.4")
        ax0.set_axis_off()

    ax1 = fig.add_subplot(gs[0, 1])
    hist, note = _pair_histogram(run)
    if hist is None:
        ax1.text(0.5, 0.5, "pair histogram: not stored", ha="center", va="center", transform=ax1.transAxes)
        ax1.set_axis_off()
    else:
        masked = np.ma.masked_less_equal(hist.T, 0)
        vmax = float(masked.max()) if masked.count() else 1.0
        im = ax1.pcolormesh(_edges(t), _BINS, masked, cmap="magma", norm=LogNorm(vmin=max(vmax * 1e-4, 1e-3), vmax=vmax))
        fig.colorbar(im, ax=ax1, label="density")
        _time_axis(ax1, t)  # cells are centred on the saves: clip the half cells beyond the first and last
        ax1.set_xlabel("t")
        ax1.set_ylabel(r"$\langle x_i, x_j \rangle$,  $i < j$")
        ax1.set_title("pairwise inner products" + (f" ({note})" if note else ""))

    ax2 = fig.add_subplot(gs[1, 0])
    y, note = _series(run, "cluster_count")
    _draw_series(ax2, t, y, "number of clusters", note, step=True)
    ax3 = fig.add_subplot(gs[1, 1])
    y, note = _series(run, "energy")
    _draw_series(ax3, t, y, "energy $E_\\beta$", note)

    p = run.params
    n_tok = x.shape[2] if x is not None else run.attrs.get("n", "?")
    title = (
        f"{run.attrs.get('model')}: n = {n_tok}, d = {d or run.attrs.get('d', '?')}, "
        f"beta = {p.get('beta', '?')}, {run.attrs.get('integrator')} dt = {run.attrs.get('dt')}"
    )
    if run.status != "complete":
        title += f"   [{run.status}]"
    fig.suptitle(title)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
