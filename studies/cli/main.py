"""The ``attnflow`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``;
this file only joins them and turns user errors into one-line messages
(no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from studies.errors import UserError

__all__ = ["main", "build_parser", "UserError", "package_version"]

# Modules that add sub-commands; each has register(subparsers).
COMMAND_MODULES = (
    "studies.cli.simulate",
    "studies.cli.info",
    "studies.cli.plot",
    "studies.cli.sweep",
    "studies.cli.study",
    "studies.cli.warmup",
)


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
    from integrators.validation import ParameterError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # the reader went away (`attnflow info f.h5 | head -1`): stop quietly, like any Unix filter
        _silence_stdout()
        return 128 + 13  # as if killed by SIGPIPE
    except (UserError, ParameterError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"attnflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"attnflow {args.command}: error: out of memory ({exc or 'allocation failed'}); "
              "try fewer tokens, a smaller batch or fewer saves", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"attnflow {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
