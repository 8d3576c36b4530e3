"""Writing sweep specs back to TOML (the standard library only reads TOML).

Covers what a spec holds: tables ``sweep``, ``params``, ``grid`` and
``grid.zip.*`` whose values are booleans, integers, finite floats, strings,
lists and inline tables. ``tomllib.loads(to_toml(d)) == d`` for such documents.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["to_toml"]


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: dict) -> str:
    """TOML text of a sweep spec document (tables sweep, params, grid, grid.zip.*)."""
    lines: list[str] = []
    for table in ("sweep", "params"):
        if table in data:
            lines.append(f"[{table}]")
            lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in data[table].items()]
            lines.append("")
    grid = data.get("grid")
    if grid is not None:
        lines.append("[grid]")
        lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in grid.items() if k != "zip"]
        lines.append("")
        for name, group in grid.get("zip", {}).items():
            lines.append(f"[grid.zip.{_key(name)}]")
            lines += [f"{_key(k)} = {_toml_value(v)}" for k, v in group.items()]
            lines.append("")
    return "\n".join(lines)
