"""The two error types users see, printed by the CLI as one line without a traceback.

InputError: bad input, raised at the edge (params, paths, data files, architecture codes,
environment variables) before any work starts, with a single sentence naming the field and
what is allowed. StackError: the local stack cannot be brought into the requested state.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: `field` names what was wrong, the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class StackError(RuntimeError):
    """The stack cannot be brought into the requested state; the message says why."""
