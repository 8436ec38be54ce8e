"""Errors that end in one clear line for the user, never a traceback wall."""

from __future__ import annotations


class SquallError(Exception):
    """A problem the user can fix; the command line prints it and exits with `exit_code`."""

    exit_code = 1


class UsageError(SquallError):
    """A bad command line or setting (exit status 2, like argparse)."""

    exit_code = 2


class BindError(SquallError):
    """A listening socket could not be created (port in use, bad address, permission)."""


class AppLoadError(SquallError):
    """`MODULE:ATTR` could not be imported or does not name an app."""
