"""The errors a user can fix: the entry points print them as one ``error: ...`` line and exit with
``USER_ERROR_EXIT_CODE`` (a traceback only with ``HYDRA_FULL_ERROR=1``)."""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A bad config value, a missing or unreadable file, an output that exists: the message says which and what
    to do."""


class ConfigError(UserError, ValueError):
    """The config names an unknown choice, lacks a required key or holds an impossible value; ``problems`` lists
    each, naming the key."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]
