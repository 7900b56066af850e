"""A constraint window against the cost range a search space can reach: plain numbers in, a
ValueError naming constraint.min/max out. The ranges themselves (built from networks and
tables) are computed by the callers: tasks/sanas/preflight.py before any work, and
tasks/sanas/shared.constraint_window for a table measured on this machine."""
from __future__ import annotations


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
