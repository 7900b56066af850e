"""What every pipeline's preflight shares.

A params model checks only shapes (types, ranges, fields that must agree); a pipeline's
`tasks/<pipeline>/preflight.py` checks the world those params point at — files and folders,
weights that must fit a network, a search space a limit must meet, the device — before any
work. The flow calls it right after loading the params and `spnas check-params` / `spnas run`
call it client-side, so a bad file is still one line naming its field, worded as if a params
validator had raised it (`params.loader.locate`).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.paths import unwritable_reason
from engine.runtime import resolve_device
from params.loader import locate
from params.models import RunParams


@contextmanager
def at(loc: str, value: Any = None) -> Iterator[None]:
    """A ValueError raised inside (an InputError included) becomes the InputError naming `loc`
    (dotted field or section; "" = the whole model) that pydantic would have reported, a
    message without a field of its own ending in `(got <value>)`."""
    try:
        yield
    except ValueError as exc:
        raise InputError(*locate(loc, str(exc), value)) from None


def existing_dir(value: str | None, loc: str, what: str) -> None:
    with at(loc, value):
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"must be an existing folder ({what})")


def existing_file(value: str | None, loc: str, what: str) -> None:
    if value is None:
        return
    with at(loc, value):
        if Path(value).is_dir():
            raise ValueError(f"is a folder; give a file ({what})")
        if not Path(value).is_file():
            raise ValueError(f"must be an existing file ({what})")


def writable_root(value: str | None, loc: str = "output_root") -> None:
    """`output_root` may not exist yet, but it must be creatable: tried, and left as it was."""
    if value is None:
        return
    with at(loc, value):
        reason = unwritable_reason(Path(value))
        if reason:
            raise ValueError(f"cannot be created: {reason}")


def check_run(p: RunParams) -> None:
    """The fields every pipeline has: where outputs go and which device the stages run on."""
    writable_root(p.output_root)
    with at("device", p.device):
        resolve_device(p.device)  # refuses cuda on a machine without it
