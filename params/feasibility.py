"""Checks of parameters against a search space itself (not just their types), run while the
params are validated so an impossible setting fails before any work: a SPOS MACs limit below the
cheapest path, or a MACs range with a bin no path falls into."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

# The check uses 10 classes: the classifier's share of a path's MACs (last width x classes) is
# tiny; the search stage re-checks against the data's real class count.
CHECK_CLASSES = 10


@lru_cache(maxsize=4)
def _table(preset: str) -> Any:
    from latency.macs_table import build_macs_table

    return build_macs_table(preset, CHECK_CLASSES)


def check_spos_macs(preset: str, macs_limit: int | None, macs_range: tuple[int, int] | None, bins: int) -> None:
    """ValueError("search.macs_limit: ..." / "supernet.macs_range: ...") when no path can meet them."""
    from spnas.errors import InputError
    from strategies.path_sampler import FlopsBinSampler

    table = _table(preset)
    if macs_limit is not None and macs_limit < table.min_macs():
        raise ValueError(f"search.macs_limit: {macs_limit} is below the smallest path of the {preset!r} space "
                         f"({table.min_macs()} MACs; the largest has {table.max_macs()})")
    if macs_range is not None:
        try:
            FlopsBinSampler(table.per_block, table.fixed_macs, macs_range[0], macs_range[1], bins,
                            field="supernet.macs_range")
        except InputError as exc:
            raise ValueError(str(exc)) from None
