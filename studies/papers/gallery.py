"""The gallery (issue 13 item 2): a study's figures with its command, time, commit and comparable numbers.

Each study module may define ``gallery_numbers(out: Path) -> list[dict]``, reading its
output files in ``out`` (the HDF5 files of ``STUDIES[name].outputs``) and returning rows

``{"quantity": str, "where": str, "ours": float | None, "se": float | None,
"paper": float | str | None, "reference": str | None, "source": str}``

- ``ours``: our number; None when it does not exist in this run (e.g. P never crosses 1/2);
- ``se``: its standard error over samples, or None;
- ``paper``: the value the paper states, or None when it states none (only a figure);
- ``reference``: an optional theory value we compare with, e.g. ``"equiangular ODE: 3.41"``;
- ``source``: where the quantity comes from, e.g. ``"GLPR Fig. 3"``, ``"GLPR Thm 6.9"``.

:func:`write_entry` writes ``INTO/NAME.json`` (study, size, command, wall time, git commit
from the HDF5 provenance attributes, figures, rows) and copies the study's PNG figures into
``INTO``, shrunk below 300 KB; :func:`markdown_table` renders the rows for docs/gallery.md.
Never the raw HDF5: the gallery holds only the figures and these small summaries.

Usage::

    python -m studies.papers.gallery collapse --out runs/collapse --into docs/gallery \\
        --seconds 410 --command "attnflow study collapse --size paper --out runs/collapse"
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import h5py

__all__ = ["ROW_KEYS", "MAX_PNG_BYTES", "gallery_rows", "check_rows", "provenance", "shrink_png", "write_entry",
           "markdown_table", "format_value", "main"]

#: the keys of one gallery row, in table order
ROW_KEYS = ("quantity", "where", "ours", "se", "paper", "reference", "source")
#: issue 13: each gallery figure is a PNG under 300 KB
MAX_PNG_BYTES = 300_000


def _finite_or_none(v: Any, key: str, quantity: str) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gallery row {quantity!r}: {key} must be a number or None, not {v!r}") from exc
    return x if math.isfinite(x) else None


def check_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows in the contract's form: all keys present, numbers as floats, non-finite numbers as None.

    Raises
    ------
    ValueError
        A row lacks a key, has an unknown one, or a number is not a number.
    """
    clean = []
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row and k not in ("se", "paper", "reference")]
        extra = [k for k in row if k not in ROW_KEYS]
        if missing or extra:
            raise ValueError(f"gallery row {row.get('quantity', row)!r}: missing {missing}, unknown {extra}")
        q = str(row["quantity"])
        paper = row.get("paper")
        if paper is not None and not isinstance(paper, str):
            paper = _finite_or_none(paper, "paper", q)
        clean.append({"quantity": q, "where": str(row["where"]), "ours": _finite_or_none(row["ours"], "ours", q),
                      "se": _finite_or_none(row.get("se"), "se", q), "paper": paper,
                      "reference": None if row.get("reference") is None else str(row["reference"]),
                      "source": str(row["source"])})
    return clean


def _entry(name: str):
    from studies.errors import UserError
    from studies.papers.registry import STUDIES

    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return STUDIES[name]


def gallery_rows(name: str, out: Path) -> list[dict]:
    """The rows of study ``name`` from its outputs in ``out`` (its module's ``gallery_numbers``), checked."""
    from studies.errors import UserError

    entry = _entry(name)
    mod = importlib.import_module(entry.module)
    fn = getattr(mod, "gallery_numbers", None)
    if fn is None:
        raise UserError(f"study {name!r} has no gallery_numbers (in {entry.module})")
    h5 = [Path(out) / f for f in entry.outputs if f.endswith(".h5")]
    missing = [str(p) for p in h5 if not p.exists()]
    if missing:
        raise UserError(f"{', '.join(missing)} not found: run `attnflow study {name} --out {out}` first")
    return check_rows(fn(Path(out)))


def provenance(name: str, out: Path) -> dict:
    """``{"size", "git_commit", "created"}`` from the attributes of the study's HDF5 outputs in ``out``.

    ``size`` is the attribute ``size`` where a study stores it, else None; several
    files with different commits give them all, comma-separated.
    """
    sizes, commits, created = [], [], []
    for f in _entry(name).outputs:
        path = Path(out) / f
        if not f.endswith(".h5") or not path.exists():
            continue
        with h5py.File(path, "r") as h:
            a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h.attrs.items()}
        for key, acc in (("size", sizes), ("git_commit", commits), ("created", created)):
            if key in a and str(a[key]) not in acc:
                acc.append(str(a[key]))
    return {"size": ", ".join(sizes) or None, "git_commit": ", ".join(commits) or None,
            "created": max(created) if created else None}


def shrink_png(src: Path, dst: Path, limit: int = MAX_PNG_BYTES) -> Path:
    """Copy the PNG ``src`` to ``dst``, shrinking it below ``limit`` bytes if it is larger.

    First an adaptive palette (256, then 128, 64 colours: figures have few distinct
    colours, so this is nearly lossless), then the palette image scaled down by 0.85
    per round until it fits.
    """
    from PIL import Image

    src, dst = Path(src), Path(dst)
    if src.stat().st_size <= limit:
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        return dst
    img = Image.open(src).convert("RGB")
    data = b""
    for colours in (256, 128, 64):
        buf = io.BytesIO()
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        data = buf.getvalue()
        if len(data) <= limit:
            break
    scale = 1.0
    while len(data) > limit and scale > 0.2:
        scale *= 0.85
        small = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        buf = io.BytesIO()
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        data = buf.getvalue()
    if len(data) > limit:
        raise ValueError(f"{src}: cannot shrink below {limit} bytes")
    dst.write_bytes(data)
    return dst


def write_entry(name: str, out: Path, into: Path, seconds: float | None = None, command: str | None = None,
                size: str | None = None) -> Path:
    """Write ``into/NAME.json`` and copy the study's PNG figures into ``into``; returns the JSON path.

    Parameters
    ----------
    name : the study (a key of ``studies.papers.registry.STUDIES``).
    out : the folder the study wrote into (``attnflow study NAME --out OUT``).
    into : the gallery folder, e.g. docs/gallery.
    seconds : the measured wall time of the run, if known.
    command : the exact command that made ``out``; default ``attnflow study NAME [--size SIZE] --out OUT``.
    size : the size that ran, when the HDF5 files do not store it.
    """
    from studies.errors import UserError

    entry = _entry(name)
    out, into = Path(out), Path(into)
    rows = gallery_rows(name, out)
    prov = provenance(name, out)
    size = size or prov["size"]
    figures = []
    into.mkdir(parents=True, exist_ok=True)
    for f in entry.outputs:
        if f.endswith(".png"):
            if not (out / f).exists():
                raise UserError(f"{out / f} not found: the study's figure is missing")
            figures.append(shrink_png(out / f, into / f).name)
    if command is None:
        command = f"attnflow study {name}" + (f" --size {size}" if size else "") + f" --out {out}"
    doc = {"study": name, "size": size, "command": command,
           "wall_seconds": None if seconds is None else float(seconds), "git_commit": prov["git_commit"],
           "created": prov["created"], "figures": figures, "rows": rows}
    path = into / f"{name.replace('-', '_')}.json"
    path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def format_value(v: float | None, se: float | None = None) -> str:
    """``"3.41 ± 0.12"``, ``"6.50 ± 0.05"``: the value rounded like its standard error (two significant
    digits when the error starts with 1 or 2, else one); ``"—"`` for None."""
    if v is None:
        return "—"
    if se is None:
        return f"{v:.4g}"
    if se <= 0:  # below the resolution of the stored data (e.g. times on the save grid)
        return f"{v:.4g} ± 0"
    # two significant digits of the error when it starts with 1 or 2, else one (the usual convention)
    lead = se / 10 ** math.floor(math.log10(se))
    digits = max(0, -math.floor(math.log10(se)) + (1 if lead < 3 else 0))
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    text = format_value(v) if isinstance(v, float) else str(v)
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a markdown table: quantity, where, ours (± SE), paper, reference, source."""
    lines = ["| quantity | where | ours | paper | reference | source |", "|---|---|---|---|---|---|"]
    for r in check_rows(rows):
        cells = [_cell(r["quantity"]), _cell(r["where"]), format_value(r["ours"], r["se"]), _cell(r["paper"]),
                 _cell(r["reference"]), _cell(r["source"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m studies.papers.gallery NAME --out RUN_DIR [--into docs/gallery] [--seconds S] [--command C]``."""
    from studies.errors import UserError

    p = argparse.ArgumentParser(prog="python -m studies.papers.gallery",
                                description="Write a study's gallery entry (JSON + figures) and print its table.")
    p.add_argument("name", help="the study, as in `attnflow study list`")
    p.add_argument("--out", required=True, help="the folder the study wrote into")
    p.add_argument("--into", default="docs/gallery", help="the gallery folder (default docs/gallery)")
    p.add_argument("--seconds", type=float, help="measured wall time of the run")
    p.add_argument("--command", help="the exact command that made --out")
    p.add_argument("--size", help="the size that ran (when the HDF5 files do not store it)")
    args = p.parse_args(argv)
    try:
        path = write_entry(args.name, Path(args.out), Path(args.into), args.seconds, args.command, args.size)
    except UserError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    doc = json.loads(path.read_text())
    print(f"wrote {path} and {', '.join(doc['figures'])}")
    print(markdown_table(doc["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
