"""The named studies: their modules, sizes with wall times on 2 cores, and output files.

``attnflow study`` and ``python -m studies.papers.<study>`` both read this table; adding a
study is one :class:`StudyEntry` here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LONG_S", "STUDIES", "StudyEntry", "chosen_size", "format_duration", "study_outputs"]

#: a full size whose estimate exceeds this many seconds runs only with an explicit --size full
LONG_S = 600.0


@dataclass(frozen=True)
class StudyEntry:
    """One named study.

    Attributes
    ----------
    module : the module with ``run(out, size, executor=None, progress=True) -> dict``.
    default_size : the size run when neither --smoke nor --size is given.
    seconds : wall time of each size on a 2-core machine, in seconds.
    measured : the sizes whose time was measured (the others are estimates from the
        module's notes or extrapolated from a timed fraction).
    outputs : the files the study writes into --out (the same names at every size).
    """

    module: str
    default_size: str
    seconds: dict[str, float]
    measured: frozenset[str]
    outputs: tuple[str, ...]


# Paper sizes (issue 13 item 1): each measured end to end with `attnflow study NAME --size paper` on a
# 2-core VM (2026-12-04), most of them while other developers' tests ran niced beside them, so
# these are upper bounds; gradient-exponent's paper size is its default (n = 256, L = 16).
# Smoke times measured with `attnflow study NAME --smoke --no-progress` on a shared 2-core VM
# (cold numba cache excluded); the larger sizes come from the studies' docstrings and closing notes.
STUDIES: dict[str, StudyEntry] = {
    "default": StudyEntry("studies.papers.default", "default", {"smoke": 6, "default": 180},
                          frozenset({"smoke", "default"}), ("default.h5", "default.png")),
    "phase-diagram": StudyEntry("studies.papers.phase_diagram", "full", {"smoke": 6, "default": 180, "full": 2700, "paper": 594},
                                frozenset({"smoke", "default", "paper"}), ("phase_diagram.h5", "phase_diagram.png")),
    "metastability": StudyEntry("studies.papers.metastability", "full", {"smoke": 8, "default": 75, "full": 45, "paper": 153},
                                frozenset({"smoke", "default", "full", "paper"}), ("metastability.h5", "two_caps.h5", "metastability.png")),
    "collapse": StudyEntry("studies.papers.collapse", "full", {"smoke": 5, "default": 20, "full": 110, "paper": 410},
                           frozenset({"smoke", "default", "full", "paper"}), ("collapse.h5", "collapse.png")),
    "high-dim": StudyEntry("studies.papers.high_dim", "full", {"smoke": 7, "default": 15, "full": 20, "paper": 240},
                           frozenset({"smoke", "default", "full", "paper"}), ("high_dim.h5", "high_dim.png")),
    "cov": StudyEntry("studies.papers.cov", "full", {"smoke": 17, "default": 180, "full": 1800, "paper": 419},
                      frozenset({"smoke", "paper"}), ("cov_study.h5", "cov_density.png", "cov_ks.png", "cov_collapse.png")),
    "signalprop": StudyEntry("studies.papers.signalprop", "full", {"smoke": 5, "default": 150, "full": 900, "paper": 249},
                             frozenset({"smoke", "paper"}),
                             ("signalprop.h5", "signalprop_trajectories.png", "signalprop_phase.png")),
    "trainability": StudyEntry("studies.papers.trainability", "full",
                               {"smoke": 15, "default": 90, "full": 960, "paper": 822},
                               frozenset({"smoke", "full", "paper"}), ("trainability.h5", "trainability.png")),
    "discrete-vs-flow": StudyEntry("studies.papers.discrete_vs_flow", "default",
                                   {"smoke": 6, "default": 61, "paper": 535}, frozenset({"smoke", "default", "paper"}),
                                   ("discrete_vs_flow.h5", "discrete_vs_flow.png", "discrete_vs_flow.json")),
    "gradient-exponent": StudyEntry("studies.papers.gradient_exponent", "default", {"smoke": 5, "default": 245, "paper": 245},
                                    frozenset({"smoke", "default", "paper"}),
                                    ("gradient_exponent.h5", "gradient_exponent.png", "gradient_exponent.json")),
    # causal: paper measured alone (not niced, after the other timed runs), smoke and default niced beside them
    "causal": StudyEntry("studies.papers.causal", "default", {"smoke": 2, "default": 11, "paper": 155},
                         frozenset({"smoke", "default", "paper"}), ("causal.h5", "causal.png")),
}  # fmt: skip


def format_duration(seconds: float) -> str:
    """``"about 45 s"``, ``"about 3 min"``, ``"about 1.5 h"``: a rounded wall time."""
    if seconds < 60:
        return f"about {round(seconds / 5) * 5 if seconds >= 10 else max(1, round(seconds))} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h".replace(".0 h", " h")


def study_outputs(name: str, out: Path) -> list[Path]:
    """The files study ``name`` writes into ``out``."""
    return [Path(out) / f for f in STUDIES[name].outputs]


def chosen_size(name: str, args: argparse.Namespace) -> str:
    """The size to run (--smoke, --size or the study's default); a long full size must be asked for by name."""
    from studies.errors import UserError

    entry = STUDIES[name]
    if args.smoke and args.size not in (None, "smoke"):
        raise UserError(f"--smoke and --size {args.size} disagree")
    size = "smoke" if args.smoke else (args.size or entry.default_size)
    if size not in entry.seconds:
        raise UserError(f"study {name!r} has sizes {', '.join(entry.seconds)}, not {size!r}")
    if size == "full" and args.size != "full" and entry.seconds["full"] > LONG_S:
        quick = format_duration(entry.seconds["default"])
        raise UserError(f"the full {name} study takes {format_duration(entry.seconds['full'])} on 2 cores (estimate): "
                        f"run it with --size full, or try --size default ({quick}) or --smoke")
    return size
