"""Figures of a stored covariance run (``attnflow plot`` on ``simulate shaped-*`` or ``finite-network`` output).

Four panels over depth t = layer / n, every path and every token pair pooled:
the correlations rho^{ab} = V^{ab} / sqrt(V^{aa} V^{bb}) (a < b) with their median
and 50% / 90% quantile bands; the density of rho^{ab} at the last save (against
the first); the diagonal V^{aa} (median and bands); the spectrum of V (median of
each ordered eigenvalue, log scale: rank collapse shows as all but the top
eigenvalue falling). Quantities are computed from the stored states V when
there are any, else taken from the stored observables ``rho``, ``diagonal``,
``spectrum`` (:mod:`particles.covariance.observables`). For the correlation SDE
(state x = artanh(rho)) only the rho panels are drawn.

References
----------
Noci et al., "The Shaped Transformer", arXiv:2306.17759, Fig. 1 and section 4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from particles.covariance.observables import correlations, diagonal, spectrum

__all__ = ["handles", "plot_run", "quantile_bands"]

_Q = (0.05, 0.25, 0.5, 0.75, 0.95)


def handles(run) -> bool:
    """Covariance runs: state ``V`` (SDEs and finite networks), or the correlation SDE."""
    model = str(run.attrs.get("model", ""))
    return run.state_name == "V" or model == "shaped-correlation" or "rho" in run.observables and "energy" not in run.observables


def quantile_bands(y: np.ndarray) -> np.ndarray:
    """Quantiles 5, 25, 50, 75, 95% over every axis but time, ignoring NaN: (5, time)."""
    flat = np.asarray(y, dtype=float).reshape(y.shape[0], -1)
    out = np.full((len(_Q), flat.shape[0]), np.nan)
    ok = np.isfinite(flat).any(axis=1)
    if ok.any():
        out[:, ok] = np.nanquantile(flat[ok], _Q, axis=1)
    return out


def _quantities(run) -> dict[str, tuple[np.ndarray, str]]:
    """name -> ((time, batch, ...) values, where they came from)."""
    out = {}
    V = run.state
    if str(run.attrs.get("model", "")) == "shaped-correlation":
        if V is not None:
            out["rho"] = (np.tanh(V), "tanh of the stored artanh(rho)")
        elif "rho" in run.observables:
            out["rho"] = (run.observables["rho"], "stored")
        return out
    fns = {"rho": correlations, "diagonal": diagonal, "spectrum": spectrum}
    for name, fn in fns.items():
        if V is not None:
            out[name] = (np.stack([fn(v) for v in V]), "from V")
        elif name in run.observables:
            out[name] = (np.asarray(run.observables[name], dtype=float), "stored")
    return out


def _bands(ax, t, y, color, label):
    q = quantile_bands(y)
    ax.fill_between(t, q[0], q[4], color=color, alpha=0.15, lw=0, label="5-95%")
    ax.fill_between(t, q[1], q[3], color=color, alpha=0.35, lw=0, label="25-75%")
    ax.plot(t, q[2], color=color, lw=1.8, label=label)


def _missing(ax, what: str, correlation_sde: bool = False) -> None:
    why = "the correlation SDE tracks rho only" if correlation_sde else f"store V or --observables {what}"
    ax.text(0.5, 0.5, f"{what}: not stored\n({why})", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_axis_off()


def plot_run(run, out: str | Path, system: int = 0) -> Path:
    """Draw the four panels of a covariance ``run`` (:class:`studies.store.Run`) into ``out``.

    ``system`` is accepted for the ``attnflow plot`` interface: every path is pooled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from integrators.validation import ParameterError

    t = run.t
    if len(t) == 0:
        raise ParameterError("file", f"{run.path} holds no saved frame yet")
    q = _quantities(run)
    corr = str(run.attrs.get("model", "")) == "shaped-correlation"
    fig = plt.figure(figsize=(11, 8), layout="constrained")
    (ax0, ax1), (ax2, ax3) = fig.subplots(2, 2)
    xlabel = "depth t = layer / n"
    if "rho" in q:
        rho, src = q["rho"]
        _bands(ax0, t, rho, "C0", "median")
        ax0.set(xlabel=xlabel, ylabel=r"$\rho^{ab}$, $a < b$", ylim=(-1.02, 1.02))
        ax0.set_title(rf"correlations over depth ({rho[0].size} values per save, {src})", fontsize=9)
        ax0.legend(fontsize=7, frameon=False)
        ax0.grid(alpha=0.3)
        bins = np.linspace(-1, 1, 61)
        end = rho[-1][np.isfinite(rho[-1])].ravel()
        if end.size:
            ax1.hist(end, bins=bins, density=True, color="C0", alpha=0.6, label=f"t = {t[-1]:.3g}")
        # The start is often one value (V0 = (1 - rho0) I + rho0 11^T): a line, not a histogram spike.
        ax1.axvline(float(np.nanmedian(rho[0])), color="0.3", ls="--", lw=1.2, label=f"median at t = {t[0]:.3g}")
        ax1.set(xlabel=r"$\rho^{ab}$", ylabel="density", xlim=(-1, 1))
        ax1.set_title(r"density of $\rho^{ab}$ at the last save", fontsize=9)
        ax1.legend(fontsize=7, frameon=False)
    else:
        _missing(ax0, "rho")
        _missing(ax1, "rho")
    if "diagonal" in q:
        dg, src = q["diagonal"]
        _bands(ax2, t, dg, "C2", "median")
        ax2.set(xlabel=xlabel, ylabel=r"$V^{aa}$")
        ax2.set_title(f"diagonal over depth ({src})", fontsize=9)
        ax2.legend(fontsize=7, frameon=False)
        ax2.grid(alpha=0.3)
    else:
        _missing(ax2, "diagonal", corr)
    if "spectrum" in q:
        lam, src = q["spectrum"]
        med = np.nanmedian(lam.reshape(lam.shape[0], -1, lam.shape[-1]), axis=1)  # (time, m), ascending
        cmap = plt.get_cmap("viridis")
        m = med.shape[1]
        for k in range(m):
            ax3.plot(t, np.clip(med[:, k], 1e-16, None), color=cmap(k / max(m - 1, 1)), lw=1.4,
                     label=rf"$\lambda_{{{m - k}}}$" if m <= 8 else None)  # fmt: skip
        ax3.set_yscale("log")
        ax3.set(xlabel=xlabel, ylabel="eigenvalue of V (median over paths)")
        ax3.set_title(f"spectrum over depth ({src})", fontsize=9)
        if m <= 8:
            ax3.legend(fontsize=7, frameon=False, ncol=2)
        ax3.grid(alpha=0.3)
    else:
        _missing(ax3, "spectrum", corr)
    p = run.params
    shown = ", ".join(f"{k} = {p[k]:.4g}" for k in ("gamma", "tau0", "heads", "n") if isinstance(p.get(k), (int, float)))
    batch = next(iter(q.values()))[0].shape[1] if q else "?"
    title = f"{run.attrs.get('model')}: {shown}{', ' if shown else ''}{batch} paths, {run.attrs.get('integrator')}"
    if run.status != "complete":
        title += f"   [{run.status}]"
    fig.suptitle(title)
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
