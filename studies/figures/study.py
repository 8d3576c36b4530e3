"""Figures of files that hold no run: merged studies, sweep shards and the studies' own files.

``attnflow plot FILE`` on

* a merged study file (``attnflow sweep merge`` / ``attnflow study``): the study's own
  figure, chosen by the sweep's task recorded in the file (:data:`STUDY_FIGURES`; the
  metastability figure needs both of its files, ``metastability.h5`` and ``two_caps.h5``,
  side by side); a sweep of another task gets a generic figure: each measurement, mean
  over seeds, over its own axis or the first grid axis, and the tasks' completion;
* a sweep shard: its measurements;
* ``cov_study.h5``, ``signalprop.h5``, ``trainability.h5``, ``causal.h5``: the study's figures
  (several files are written next to ``--out`` as ``<stem>_<figure>.png``).
"""

from __future__ import annotations

import importlib
import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from studies.store.files import STUDY_FIGURES, _partner, study_figure_of

__all__ = ["STUDY_FIGURES", "study_figure_of", "plot_study_file"]

_MAX_PANELS = 6


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _draw_merged_study(path: Path, out: Path) -> Path:
    with h5py.File(path, "r") as f:
        task = _s(f.attrs["task"])
        mod_name = study_figure_of(f)
    if mod_name is None:
        return _generic_study(path, out)
    mod = importlib.import_module(mod_name)
    if mod_name.endswith("metastability"):
        other = _partner(path, task)
        traj, caps = (path, other) if task == "flow.trajectory" else (other, path)
        with h5py.File(caps, "r") as f:
            fits = json.loads(_s(f.attrs["merge_time_fits"])) if "merge_time_fits" in f.attrs else None
        return mod.plot(traj, caps, fits if fits is not None else mod.fit_merge_times(caps), out)
    return mod.plot(path, out)


def _generic_study(path: Path, out: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # entries of missing tasks are NaN: their means are NaN, not news
        warnings.simplefilter("ignore", RuntimeWarning)
        return _generic_study_figure(path, out)


def _generic_study_figure(path: Path, out: Path) -> Path:
    from matplotlib.figure import Figure

    from studies.sweep import load_study

    st = load_study(path)
    coords, attrs = st["coords"], st["attrs"]
    grid = list(st["vars"]["task_status"][0])  # grid dims..., seed
    axes_grid = [d for d in grid if d != "seed"]
    names = [k for k, (dims, a) in st["vars"].items()
             if "seed" in dims and not k.startswith("task_") and np.asarray(a).dtype.kind in "fiub"][:_MAX_PANELS]  # fmt: skip
    fig = Figure(figsize=(4.2 * min(3, len(names) + 1), 3.4 * ((len(names) + 1 + 2) // 3)), layout="constrained")
    axs = np.atleast_1d(fig.subplots((len(names) + 1 + 2) // 3, min(3, len(names) + 1), squeeze=False)).ravel()
    for ax, name in zip(axs, names):
        dims, a = st["vars"][name]
        a = np.nanmean(np.asarray(a, dtype=float), axis=dims.index("seed"))
        dims = [d for d in dims if d != "seed"]
        own = [d for d in dims if d not in axes_grid]
        x_dim = own[0] if own else (axes_grid[0] if axes_grid else None)
        line_dim = axes_grid[0] if own and axes_grid else (axes_grid[1] if len(axes_grid) > 1 else None)
        keep = [d for d in (x_dim, line_dim) if d is not None]
        a = np.nanmean(a, axis=tuple(i for i, d in enumerate(dims) if d not in keep)) if len(dims) > len(keep) else a
        kept = [d for d in dims if d in keep]
        if x_dim is None:
            ax.bar([0], [float(a)])
        else:
            a = np.moveaxis(a, [kept.index(d) for d in keep], list(range(len(keep))))
            x = coords.get(x_dim, np.arange(a.shape[0]))
            xs = np.arange(len(x)) if np.asarray(x).dtype.kind not in "fiu" else x
            if line_dim is None:
                ax.plot(xs, a, marker="o", ms=3)
            else:
                for j, v in enumerate(coords.get(line_dim, np.arange(a.shape[1]))):
                    ax.plot(xs, a[:, j], marker="o", ms=3, label=f"{line_dim} = {v}")
                ax.legend(fontsize=7, frameon=False)
            ax.set_xlabel(x_dim)
        ax.set_ylabel(name)
        ax.set_title(f"{name}, mean over seeds" + (" and other axes" if len(dims) > len(keep) else ""), fontsize=8)
        ax.grid(alpha=0.3)
    ax = axs[len(names)]
    st_flat = np.ravel(st["vars"]["task_status"][1])
    counts = [int((st_flat == k).sum()) for k in (1, 2, 0)]
    ax.bar(["complete", "failed", "missing"], counts, color=["C2", "C3", "0.6"])
    ax.set_title(f"tasks: {_s(attrs.get('completion_status', ''))}", fontsize=8)
    for extra in axs[len(names) + 1:]:
        extra.set_axis_off()
    fig.suptitle(f"{_s(attrs.get('title', path.name))} (task {_s(attrs.get('task', '?'))})", fontsize=10)
    fig.savefig(out, dpi=110)
    return out


def _shard(path: Path, out: Path) -> Path:
    from matplotlib.figure import Figure

    with h5py.File(path, "r") as f:
        attrs = {k: _s(v) for k, v in f.attrs.items() if k in ("task", "task_id", "status", "params")}
        g = f.get("measurements")
        data = {k: g[k][()] for k in list(g)[:_MAX_PANELS]} if g is not None else {}
    n = max(1, len(data))
    fig = Figure(figsize=(4.2 * min(3, n), 3.4 * ((n + 2) // 3)), layout="constrained")
    axs = np.atleast_1d(fig.subplots((n + 2) // 3, min(3, n), squeeze=False)).ravel()
    for ax, (name, a) in zip(axs, data.items()):
        a = np.asarray(a, dtype=float) if np.asarray(a).dtype.kind in "fiub" else None
        if a is None or a.ndim == 0:
            ax.text(0.5, 0.5, f"{name} = {'(not numeric)' if a is None else f'{float(a):.6g}'}", ha="center",
                    va="center", transform=ax.transAxes)  # fmt: skip
            ax.set_axis_off()
        elif a.ndim == 1:
            ax.plot(a, marker="o", ms=2)
        else:
            im = ax.imshow(a.reshape(a.shape[0], -1).T, aspect="auto", origin="lower", interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(f"{name} {np.shape(a) if a is not None else ''}", fontsize=8)
    if not data:
        axs[0].text(0.5, 0.5, "no measurements (failed task)", ha="center", va="center", transform=axs[0].transAxes)
        axs[0].set_axis_off()
    fig.suptitle(f"shard of {attrs.get('task', '?')}: {attrs.get('params', '')[:90]}  [{attrs.get('status', '?')}]",
                 fontsize=9)  # fmt: skip
    fig.savefig(out, dpi=110)
    return out


def _own_study_file(path: Path, out: Path, kind: str) -> list[Path]:
    """A study's own figures, renamed ``<out stem>_<figure>`` next to ``out``."""
    name = kind.split(":", 1)[1]
    mod = importlib.import_module({"cov": "studies.papers.cov", "signalprop": "studies.papers.signalprop",
                                   "trainability": "studies.papers.trainability",
                                   "causal": "studies.papers.causal"}[name])  # fmt: skip
    if name in ("trainability", "causal"):
        return [mod.plot(path, out)]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        made = mod.plot(path, Path(tmp))
        paths = []
        for p in made:
            dest = out.with_name(f"{out.stem}_{Path(p).name}")
            shutil.move(str(p), dest)
            paths.append(dest)
    return paths


def plot_study_file(path: str | Path, out: str | Path) -> list[Path]:
    """Draw a file that holds no run (see the module docstring); returns the figure(s) written."""
    from integrators.validation import ParameterError

    from studies.store.reader import _open_read
    from studies.store.files import file_kind

    path, out = Path(path), Path(out)
    with _open_read(path) as f:
        kind = file_kind(f)
    if kind == "study":
        return [_draw_merged_study(path, out)]
    if kind == "shard":
        return [_shard(path, out)]
    if kind.startswith("study:"):
        return _own_study_file(path, out, kind)
    raise ParameterError("file", f"{path} is not a file attnflow writes (no run, shard or study in it)")
