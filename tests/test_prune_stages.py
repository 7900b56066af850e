"""Choosing which front members the retrain stage trains from scratch."""
from __future__ import annotations

from tasks.prune_search import spread


def _front(*pairs):
    return [{"id": i, "macs": m, "acc": a} for i, (m, a) in enumerate(pairs)]


def test_spread_takes_both_ends_and_skips_chance_level_members() -> None:
    front = _front((1e5, 0.10), (2e5, 0.12), (5e6, 0.5), (1e7, 0.8), (2e7, 0.9), (3e7, 0.95))
    picked = spread(front, 3, num_classes=10)
    assert [r["id"] for r in picked] == [2, 4, 5]  # 0.10 / 0.12 are no better than chance (≤ 0.15)
    assert [r["id"] for r in spread(front, 10, num_classes=10)] == [2, 3, 4, 5]
    assert [r["id"] for r in spread(front, 1, num_classes=10)] == [5]


def test_spread_of_an_all_chance_front_still_returns_members() -> None:
    front = _front((1e5, 0.1), (2e5, 0.11))
    assert len(spread(front, 2, num_classes=10)) == 2
