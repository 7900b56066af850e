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
    from core.errors import InputError
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


def _extreme_tokens() -> tuple[list[int], list[int]]:
    """The cheapest and the most expensive BlazeFace of the SANAS space: every token at its first
    or last value (each value list grows, and token 8 adds 5x5 kernels, so cost is monotone in
    every token)."""
    from nas_models.blazeface import RANGE_TABLE

    return [0] * len(RANGE_TABLE), [r - 1 for r in RANGE_TABLE]


@lru_cache(maxsize=4)
def sanas_macs_range(image_size: int) -> tuple[int, int]:
    from latency.measure import tokens_cost

    low, high = _extreme_tokens()
    return tokens_cost(low, image_size)["macs"], tokens_cost(high, image_size)["macs"]


def check_range(ctype: str, low: float | None, high: float | None, feasible: tuple[float, float],
                unit: str) -> None:
    """ValueError naming constraint.min/max when [low, high] misses every architecture."""
    def f(v: float) -> str:
        return f"{v:,.0f}" if unit == "MACs" else f"{v:.4g}"

    span = f"the space's {ctype} range is [{f(feasible[0])}, {f(feasible[1])}] {unit}"
    if high is not None and high < feasible[0]:
        raise ValueError(f"constraint.max: {f(high)} is below the cheapest architecture; {span}")
    if low is not None and low > feasible[1]:
        raise ValueError(f"constraint.min: {f(low)} is above the most expensive architecture; {span}")


def check_sanas(constraint: Any, table_file: str | None, image_size: int) -> None:
    """FLOPs mode: the [min, max] window against the space's MACs range. Latency mode with a
    given table: the table holds every op the space can run, and the window meets the table's
    latency range. (A table measured here is checked when it is built, in the first stage.)"""
    high = None if constraint.max == "start" else constraint.max
    if constraint.ctype == "flops":
        check_range("MACs", constraint.min, high, sanas_macs_range(image_size), "MACs")
        return
    if table_file is None:
        return
    from latency.measure import space_ops
    from latency.table import LatencyTable
    from nas_models.blazeface import build_from_tokens, ops_of_model

    table = LatencyTable.read(table_file)
    missing = table.missing(space_ops(image_size=image_size))
    if missing:
        raise ValueError(f"latency.table_file: {table_file} lacks {len(missing)} op(s) the search space runs at "
                         f"{image_size} px, e.g. {missing[0]}; measure a table here (leave table_file empty) or add them")
    low_t, high_t = _extreme_tokens()
    feasible = tuple(table.sum(ops_of_model(build_from_tokens(t, image_size=image_size).eval()))
                     for t in (low_t, high_t))
    check_range("latency", constraint.min, high, feasible, "ms")  # type: ignore[arg-type]
