"""The one error type users see for bad input.

Raised at the edge (params, paths, data files, architecture codes) before any work starts,
with a single sentence naming the field and what is allowed. The CLI prints it without a
traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input: `field` names what was wrong, the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
