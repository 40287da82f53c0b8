"""Errors a user can cause and fix. Each message is one line; the CLI prints it as is.

Library code raises these; only ``xtune.cli`` turns them into exit codes:
``UsageError`` subclasses exit with 2 (a bad argument or file the user passed),
everything else with 1 (a bad dataset, missing credentials, a locked project).
"""

__all__ = ["DataError", "ProjectError", "SpaceError", "UsageError", "XtuneError"]


class XtuneError(Exception):
    """An error the user can fix. ``str(error)`` is a one-line explanation."""

    exit_code = 1


class UsageError(XtuneError):
    """A bad argument, option or input file (exit code 2)."""

    exit_code = 2


class SpaceError(UsageError, ValueError):
    """A search-space file or override that the family does not allow."""


class DataError(XtuneError):
    """A dataset that cannot be prepared or trained on."""


class ProjectError(XtuneError):
    """A search directory that cannot be used as asked (locked, finished, damaged)."""
