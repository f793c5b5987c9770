"""The errors a user can cause when asking for a task: each message says what was wrong and what to do."""

from __future__ import annotations


class UnknownTaskError(KeyError):
    """A task id that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(ImportError):
    """A task whose simulator is not installed; the message names the extra to install."""
