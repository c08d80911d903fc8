"""Errors the user can act on: the CLI prints them as one line and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix (bad input, missing data, a busy run dir, ...)."""


class ConfigError(UserError, ValueError):
    """Bad configuration: the message names the file and/or key and the bad value."""


class RunError(UserError, RuntimeError):
    """A run cannot go on (NaN loss, a finished or locked run dir, a corrupt checkpoint, ...)."""
