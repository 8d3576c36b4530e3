"""The ``attnflow`` command line: one module per sub-command, joined in :mod:`studies.cli.main`."""

from studies.cli.main import build_parser, main
from studies.errors import UserError

__all__ = ["main", "build_parser", "UserError"]
