"""Command-line options that can also come from a TOML file.

An :class:`Option` is declared once and serves both sources: ``--t-end 4`` on
the command line and ``t-end = 4`` (or ``t_end = 4``) in the file given by
``--config``. Precedence: the option's default < the TOML file < the flags
actually typed. Every value passes through the option's converter, which
raises :class:`~integrators.validation.ParameterError` naming the option, so a bad
value reads the same whichever source it came from. argparse itself only
collects strings (converting there would print argparse's two-line usage
error instead of the one-line message of :mod:`studies.cli`).
"""

from __future__ import annotations

import argparse
import math
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from integrators.validation import ParameterError

__all__ = [
    "load_npy",
    "Option",
    "add_options",
    "load_toml",
    "resolve_options",
    "integer",
    "real",
    "choice",
    "text",
    "float_list",
    "name_list",
    "boolean",
    "exit_threshold",
    "with_help",
]

Converter = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Option:
    """One option: ``--name`` on the command line, ``name`` (or ``name`` with _) in TOML.

    Attributes
    ----------
    name : the flag without dashes ("t-end"), also the TOML key.
    convert : (name, raw) -> value, raw being a string (command line) or a TOML value;
        raises ParameterError(name, ...) on bad input.
    default : value when neither source gives one (not converted).
    help : help text.
    flag : a boolean switch (``--name`` / ``--no-name``; TOML true / false).
    path : the value is a file path; relative paths in a TOML file are taken
        relative to that file's folder.
    metavar : placeholder in the help text.
    """

    name: str
    convert: Converter
    default: Any = None
    help: str = ""
    flag: bool = False
    path: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def with_help(options: Sequence[Option], name: str, help: str) -> tuple[Option, ...]:
    """``options`` with the help text of option ``name`` replaced (e.g. a family's own --method default)."""
    if name not in {o.name for o in options}:
        raise KeyError(f"no option {name!r}")
    return tuple(replace(o, help=help) if o.name == name else o for o in options)


# ---------------------------------------------------------------- converters
def integer(minimum: int | None = None) -> Converter:
    def conv(name: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ParameterError(name, f"expected an integer, got {raw!r}")
        if isinstance(raw, int):
            v = raw
        else:
            try:
                v = int(str(raw).strip())
            except ValueError:
                raise ParameterError(name, f"expected an integer, got {raw!r}") from None
        if minimum is not None and v < minimum:
            raise ParameterError(name, f"expected an integer >= {minimum}, got {v}")
        return v

    return conv


def real(lower: float | None = None, upper: float | None = None, *, strict: bool = False) -> Converter:
    """A finite float in [lower, upper] ((lower, upper] with ``strict``)."""

    def conv(name: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ParameterError(name, f"expected a number, got {raw!r}")
        try:
            v = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
        except ValueError:
            raise ParameterError(name, f"expected a number, got {raw!r}") from None
        if not math.isfinite(v):
            raise ParameterError(name, f"expected a finite number, got {raw!r}")
        if lower is not None and (v <= lower if strict else v < lower):
            raise ParameterError(name, f"must be {'>' if strict else '>='} {lower:g}, got {v:g}")
        if upper is not None and v > upper:
            raise ParameterError(name, f"must be <= {upper:g}, got {v:g}")
        return v

    return conv


def choice(choices: Sequence[str]) -> Converter:
    def conv(name: str, raw: Any) -> str:
        v = str(raw)
        if v not in choices:
            raise ParameterError(name, f"unknown value {v!r}; choose one of {list(choices)}")
        return v

    return conv


def text(name: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ParameterError(name, f"expected a string, got {raw!r}")
    return raw


def exit_threshold(name: str, raw: Any) -> float:
    """A positive threshold, or "off" / "none" / "inf" (returned as inf: no threshold)."""
    if isinstance(raw, str) and raw.strip().lower() in ("off", "none", "inf"):
        return math.inf
    return real(0.0, strict=True)(name, raw)


def boolean(name: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ParameterError(name, f"expected true or false, got {raw!r}")
    return raw


def _items(name: str, raw: Any) -> list:
    if isinstance(raw, str):
        items = [s.strip() for s in raw.split(",")]
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise ParameterError(name, f"expected a comma-separated list, got {raw!r}")
    if not items or any(s == "" for s in items):
        raise ParameterError(name, f"empty entry in {raw!r}")
    return items


def float_list(name: str, raw: Any) -> list[float]:
    conv = real()
    return [conv(name, s) for s in _items(name, raw)]


def name_list(name: str, raw: Any) -> list[str]:
    return [text(name, s) for s in _items(name, raw)]


# ------------------------------------------------------------------- parsing
def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Declare ``options`` on ``parser``; absent flags leave no trace in the namespace."""
    for o in options:
        if o.flag:
            parser.add_argument(
                f"--{o.name}", dest=o.dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=o.help
            )
        else:
            default = "" if o.default is None else f" (default: {o.default})"
            parser.add_argument(
                f"--{o.name}", dest=o.dest, default=argparse.SUPPRESS, metavar=o.metavar or o.dest.upper(),
                help=o.help + default,
            )  # fmt: skip


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; missing or malformed files raise ParameterError("config", ...)."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError("config", f"no such file: {p}")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError("config", f"{p} is not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ParameterError("config", f"{p} is not a UTF-8 text file") from None


def resolve_options(
    options: Sequence[Option],
    args: argparse.Namespace,
    *,
    fixed: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], frozenset[str]]:
    """Merge default < TOML (``args.config``) < flags; convert and validate every value.

    Parameters
    ----------
    options : the options of the command.
    args : the parsed namespace (absent flags are not in it).
    fixed : TOML keys that are allowed but must equal a value fixed elsewhere
        (e.g. ``{"model": "sa"}``: the model is the sub-command).

    Returns
    -------
    (values by ``dest``, the set of dests given explicitly in the file or on the command line).
    """
    by_dest = {o.dest: o for o in options}
    values = {o.dest: o.default for o in options}
    given: set[str] = set()
    cfg = getattr(args, "config", None)
    if cfg is not None:
        cfg_path = Path(cfg)
        table = load_toml(cfg_path)
        for key, raw in table.items():
            dest = key.replace("-", "_")
            if fixed and key in fixed:
                if raw != fixed[key]:
                    raise ParameterError(key, f"{cfg_path} says {key} = {raw!r} but the command runs {fixed[key]!r}")
                continue
            if dest not in by_dest or dest == "config":
                known = ", ".join(sorted(o.name for o in options if o.dest != "config"))
                raise ParameterError(key, f"unknown key {key!r} in {cfg_path}; known keys: {known}")
            o = by_dest[dest]
            if o.path and isinstance(raw, str) and not Path(raw).is_absolute():
                raw = str(cfg_path.parent / raw)
            values[dest] = boolean(o.name, raw) if o.flag else o.convert(o.name, raw)
            given.add(dest)
    for dest, o in by_dest.items():
        if dest == "config" or not hasattr(args, dest):
            continue
        raw = getattr(args, dest)
        values[dest] = raw if o.flag else o.convert(o.name, raw)
        given.add(dest)
    return values, frozenset(given)


def load_npy(name: str, path: str) -> np.ndarray:
    """Load a numeric .npy file given on the command line; errors name the option."""
    p = Path(path)
    if not p.is_file():
        raise ParameterError(name, f"no such file: {p}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt files
        raise ParameterError(name, f"{p} is not a valid .npy array ({type(exc).__name__})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise ParameterError(name, f"{p} holds {arr.dtype}, not numbers")
    if np.iscomplexobj(arr):  # a cast to real would drop the imaginary part silently
        raise ParameterError(name, f"{p} holds complex numbers ({arr.dtype}); a real array is needed")
    if arr.size == 0:
        raise ParameterError(name, f"{p} holds an empty array of shape {arr.shape}")
    return arr.astype(np.float64)
