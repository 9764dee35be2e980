"""The errors a user can fix: the entry points print them as one ``error: ...`` line (and at most one ``hint: ...``
line) on stderr and exit with ``USER_ERROR_EXIT_CODE``; a traceback only with ``HYDRA_FULL_ERROR=1``.

Each subclass keeps the built-in exception it stands for as a base (``FileNotFoundError``, ``FileExistsError``,
``ValueError``), so code that catches those still does.
"""

from __future__ import annotations

import sys
from typing import NoReturn

USER_ERROR_EXIT_CODE = 2
"""The exit code of every refused command: a bad config value or key, a missing or unreadable file, bad data, an
output that exists. Other failures exit with 1 (Python's and Hydra's code for an uncaught exception)."""


class UserError(Exception):
    """A bad config value, a missing or unreadable file, an output that exists: the message says which and what
    to do; ``hint``, when given, is printed on a second line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(UserError, ValueError):
    """The config names an unknown choice, lacks a required key or holds an impossible value; ``problems`` lists
    each, naming the key."""

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.problems = problems if problems is not None else [message]


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the command names (a checkpoint, input images, an annotation file) does not exist."""


class BadInputError(UserError, ValueError):
    """An input the command names exists but cannot be used: a checkpoint that does not load, images whose names
    collide, ..."""


class OutputExistsError(UserError, FileExistsError):
    """An output the command would write exists already: outputs are never replaced."""


def one_line(error: BaseException) -> str:
    """The error's message on one line: a ConfigError's problems joined by '; ', other line breaks as spaces."""
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        return "invalid config: " + "; ".join(error.problems)
    if isinstance(error, ConfigError) and str(error).startswith("invalid config:"):
        return f"invalid config: {error.problems[0]}"
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def exit_for_user_error(error: UserError | str, hint: str | None = None) -> NoReturn:
    """Print ``error: <message>`` (and ``hint: <hint>``) on stderr and exit with USER_ERROR_EXIT_CODE."""
    message = error if isinstance(error, str) else one_line(error)
    hint = hint if hint is not None or isinstance(error, str) else error.hint
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(USER_ERROR_EXIT_CODE)
