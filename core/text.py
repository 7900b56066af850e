"""Quoting user text in one-line messages: short, printable, never a whole section, a huge
number or a raw control/escape sequence from a file (the message is printed to a terminal)."""
from __future__ import annotations

import reprlib
from typing import Any

EXCERPT_CHARS = 60  # a quoted value in an error message


def printable(text: str) -> str:
    """`text` with every non-printable character (newlines, ANSI escapes, bidi controls)
    written as its Python escape, so a message stays one inert line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def clean_line(text: str, limit: int) -> str:
    """One printable line of at most `limit` characters (the middle elided)."""
    return _shorten(printable(_shorten(text, 4 * limit)), limit)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6
_REPR.maxdict = 4
_REPR.maxlevel = 3


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable, repr-like excerpt of `value` for "(got ...)": never a whole section,
    a huge number or a raw control character."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return clean_line(text, limit)
