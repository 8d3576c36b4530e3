"""The ``attnflow`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``;
this file only joins them and turns user errors into one-line messages
(no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser", "UserError", "package_version"]

# Modules that add sub-commands; each has register(subparsers).
COMMAND_MODULES = (
    "studies.cli_simulate",
    "studies.cli_info",
    "studies.cli_plot",
    "studies.cli_sweep",
    "studies.cli_study",
    "studies.cli_warmup",
)


class UserError(Exception):
    """An error caused by the user's input: reported without a traceback."""


def package_version() -> str:
    """The installed distribution's version ("0+unknown" in a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnflow")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnflow",
        description="Transformers as interacting particle systems: simulate, sweep, store, plot.",
    )
    parser.add_argument("--version", action="version", version=f"attnflow {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name == mod_name:
                continue  # a sub-command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from particles.validation import ParameterError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (UserError, ParameterError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"attnflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    # `python -m studies.cli`: run the imported module's main so that its UserError is the one the
    # sub-commands raise (this file as __main__ would define a second, different class)
    from studies.cli import main as _main

    sys.exit(_main())
