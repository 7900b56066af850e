"""Limit-aware proposals in SP-NAS: the size gate measures a proposal before it is trained, and a
search with it never proposes (so never trains) a network over the limits."""
from __future__ import annotations

import pytest

from params.models import DetectorModel
from strategies.parallel import ParallelSearch
from strategies.serial import SerialSearch, SerialSearchConfig
from tasks.spnas.detectors import detector_for, measure, size_gate

MODEL = DetectorModel()
NUM_CLASSES = 11


@pytest.fixture(scope="module")
def start() -> dict[str, int]:
    return measure(detector_for(MODEL, NUM_CLASSES), MODEL.image_size)


def test_no_limits_no_gate() -> None:
    assert size_gate(MODEL, NUM_CLASSES, {}) is None


def test_gate_measures_what_training_would(start: dict[str, int]) -> None:
    fits = size_gate(MODEL, NUM_CLASSES, {"params": start["params"], "macs": start["macs"]})
    assert fits is not None
    assert fits(MODEL.backbone_code)  # the start network is within its own figures
    assert not fits("111-21-21-21")    # one more block: more parameters
    # a stride-2 block moved to the end of the first stage: fewer parameters, fewer MACs
    assert fits("112-1-21-21")
    # one block more in the first stage, the second one no longer halving: fewer parameters, more MACs
    assert size_gate(MODEL, NUM_CLASSES, {"params": start["params"]})("111-1-21-21")
    assert not fits("111-1-21-21")


def test_gate_on_necks_counts_the_fixed_serial_code(start: dict[str, int]) -> None:
    fits = size_gate(MODEL, NUM_CLASSES, {"macs": start["macs"] * 1.02}, MODEL.backbone_code)
    assert fits([0, 0, 0, 0]) and not fits([2, 2, 2, 2])


def test_limit_aware_searches_never_propose_over_the_limit(start: dict[str, int]) -> None:
    limits = {"params": float(start["params"])}
    fits = size_gate(MODEL, NUM_CLASSES, limits)
    search = SerialSearch([MODEL.backbone_code], SerialSearchConfig(max_sample=5), seed=0, fits=fits)
    while not search.done:
        for cand in search.ask(2):
            size = measure(detector_for(MODEL, NUM_CLASSES, cand.code), MODEL.image_size)
            assert size["params"] <= limits["params"]  # never handed out to train
            search.tell(cand.id, {"mAP": 0.5, "params": size["params"], "macs": size["macs"]})
    assert search.skipped > 0
    neck = ParallelSearch(4, [1.0, 1.0, 1.0, 1.0], 4, seed=0, max_per_stage=1, max_additions=1, include_plain=True,
                          fits=size_gate(MODEL, NUM_CLASSES, limits, MODEL.backbone_code))
    assert [c.code for c in neck.ask(4)] == [[0, 0, 0, 0]] and neck.skipped > 0  # every extra sub-network adds params
