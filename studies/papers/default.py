"""The README's main command: a small SA phase diagram P(t, beta) (GLPR Fig. 3), sweep + merge + figure.

The phase diagram of :mod:`studies.papers.phase_diagram` at a size that fits a laptop:
identity Q, K, V, n = 32, d in {2, 8, 32, 128}, 36 betas in [0.25, 9], 64 starts per point
(studies/papers/default.toml). Every size writes ``default.h5`` and ``default.png``.

Sizes: ``default`` (about 3 minutes measured on 2 cores) and ``smoke`` (seconds; the
tests). The full-size phase diagram is ``attnflow study phase-diagram --size full``.

References
----------
Geshkovski, Letrouit, Polyanskiy, Rigollet, "A mathematical perspective on
Transformers", arXiv:2312.10794, Fig. 3, Thm 6.8 (eq. 6.9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from integrators.validation import ParameterError

from studies.papers import phase_diagram
from studies.papers.common import study_main

__all__ = ["run", "NAME", "gallery_numbers"]

#: the file stem of this study's outputs at every size
NAME = "default"


def run(out: Path, size: str = "default", executor: Any = None, progress: bool = True) -> dict[str, list[Path]]:
    """Sweep, merge and draw ``out/default.h5`` and ``out/default.png``; returns their paths."""
    if size == "full":
        raise ParameterError("size", "the default study has sizes smoke and default; the full phase diagram is "
                                     "`attnflow study phase-diagram --size full`")
    return phase_diagram.run(out, size, executor, progress, name=NAME)


def gallery_numbers(out: Path) -> list[dict]:
    """The phase diagram's gallery rows (:func:`studies.papers.phase_diagram.gallery_numbers`) from ``default.h5``."""
    return phase_diagram.gallery_numbers(out, name=NAME)


if __name__ == "__main__":
    raise SystemExit(study_main("default", run, __doc__))
