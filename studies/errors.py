"""The one error type every layer of ``studies`` raises for bad user input.

It lives below the command line so that the sweep engine and the studies can
raise it without importing the CLI; the CLI prints it on one line, exit 2.
"""

from __future__ import annotations

__all__ = ["UserError", "SweepError"]


class UserError(Exception):
    """An error caused by the user's input: reported without a traceback."""


class SweepError(UserError):
    """A sweep cannot start as asked (reported to CLI users in one line)."""
