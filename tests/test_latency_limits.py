"""Measured-latency limits (`max_latency_ms`): the gate measures each architecture once, every
search with it never hands a proposal over the limit to training, the params are bounded, and a
limit nothing can meet is one clear error naming the field."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.errors import InputError
from latency.direct import FeatureTuple, NetworkLatency
from params.models import (DetectorModel, EvolutionParams, ParallelSearchParams, PruneSearchParams,
                           SerialSearchParams)
from strategies.evolution import EvolutionSearch
from strategies.parallel import ParallelSearch
from strategies.prune_ea import PruneEASearch
from strategies.serial import SerialSearch, SerialSearchConfig
from tasks.spnas.detectors import check_latency_met, limits_of, size_gate, size_limits

MODEL = DetectorModel()
NUM_CLASSES = 11


class _Fake(NetworkLatency):
    """A gate whose 'measurement' is `ms_of(arch)`; `arches` lists what it really measured."""

    def __init__(self, ms_of: Any) -> None:
        self.arches: list[Any] = []

        def build(arch: Any) -> tuple[torch.nn.Module, torch.Tensor]:
            self.arches.append(arch)
            return torch.nn.Identity(), torch.zeros(1, 1)

        super().__init__(build, measure=lambda module, example, threads, timing: ms_of(self.arches[-1]))


# --- the gate ---------------------------------------------------------------------------------

def test_the_gate_measures_each_architecture_once() -> None:
    gate = _Fake(lambda arch: float(len(arch)))
    fits = gate.fits(3.0)
    assert fits([0, 1, 2]) and fits((0, 1, 2)) and gate([0, 1, 2]) == 3.0  # a list and a tuple: one key
    assert not fits("abcd") and not fits("abcd")
    assert gate.timed == 2 and gate.arches == [[0, 1, 2], "abcd"]
    gate.remember("xy", 9.0)  # a resumed search's saved figure wins over a new measurement
    assert gate("xy") == 9.0 and gate.timed == 2 and gate.known("zz") is None


def test_the_gate_times_a_real_network_with_onnx_runtime(one_thread) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    gate = NetworkLatency(lambda arch: (net, torch.rand(1, 3, 16, 16)))
    ms = gate("conv")
    assert 0 < ms < 1000 and gate("conv") == ms and gate.timed == 1


def test_the_gate_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="max_latency_ms"):
        _Fake(lambda a: 1.0).fits(0)
    with pytest.raises(InputError, match="threads"):
        NetworkLatency(lambda a: None, threads=0)
    gate = NetworkLatency(lambda arch: (torch.nn.Identity(), torch.zeros(2, 3)))
    with pytest.raises(InputError, match="batch 1"):
        gate("two images")


def test_feature_maps_become_a_tuple() -> None:
    out = FeatureTuple(torch.nn.Identity())(torch.ones(1, 2))
    assert isinstance(out, tuple) and len(out) == 1


# --- proposals over the limit are never handed to training -------------------------------------

def test_serial_search_never_proposes_a_backbone_over_the_latency_limit() -> None:
    # Latency grows with the blocks: the start ("11-21-21-21") has 8; a swap keeps them, an expansion adds one.
    gate = _Fake(lambda code: float(len(code.replace("-", ""))))
    fits = size_gate(MODEL, NUM_CLASSES, {"latency_ms": 8.0}, latency=gate)
    search = SerialSearch([MODEL.backbone_code], SerialSearchConfig(max_sample=6), seed=0, fits=fits)
    while not search.done:
        for cand in search.ask(2):
            if cand.parent_id is not None:  # the start is always trained (and timed by to_input)
                assert gate(cand.code) <= 8.0
            search.tell(cand.id, {"mAP": 0.5, "params": 1.0, "latency_ms": gate(cand.code)})
    assert search.skipped > 0 and len(search.candidates) > 1
    assert len(set(gate.arches)) == len(gate.arches)  # every backbone timed once


def test_parallel_search_never_proposes_a_neck_over_the_latency_limit() -> None:
    gate = _Fake(lambda neck: 10.0 + sum(neck))
    fits = size_gate(MODEL, NUM_CLASSES, {"latency_ms": 11.0}, MODEL.backbone_code, latency=gate)
    search = ParallelSearch(4, [1.0] * 4, 6, seed=0, max_per_stage=2, max_additions=3, include_plain=True, fits=fits)
    asked = [c.code for c in search.ask(7)]
    assert asked[0] == [0, 0, 0, 0] and all(sum(code) <= 1 for code in asked)
    assert search.skipped > 0


def _prune_search(fits: Any, **kw: Any) -> PruneEASearch:
    return PruneEASearch(24, seed=0, num_generation=3, num_individual=6, random_models=8, fits=fits, **kw)


def test_prune_ea_never_hands_out_an_encoding_over_the_limit_and_replays_its_refusals() -> None:
    gate = _Fake(lambda code: 1.0 + code.count("1"))
    fits = gate.fits(13.0)
    search = _prune_search(fits)
    trained = []
    while not search.done:
        batch = search.ask(10)
        if not batch:
            break
        for cand in batch:
            assert cand.kept <= 12  # never handed to training over the limit
            trained.append(cand.code)
            search.tell(cand.id, {"acc": cand.kept / 24, "macs": float(cand.kept)})
    assert search.skipped > 0 and search.generation == 3 and len(trained) == len(set(trained))
    # A restored search replays the saved decisions and never times anything again.
    timed = gate.timed
    restored = _prune_search(lambda code: pytest.fail("replay must not measure"))
    restored.load_state_dict(search.state_dict())
    assert [c.code for c in restored.candidates] == trained and restored.skipped == search.skipped
    assert gate.timed == timed


def test_prune_ea_with_refusals_is_the_same_every_run() -> None:
    """Refused encodings tie as infeasible in NSGA-III's tournament; pymoo drew such ties from
    numpy's global generator, so a search (and its replay) changed with it."""
    runs = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        search = _prune_search(lambda code: code.count("1") <= 12)
        while not search.done and (batch := search.ask(10)):
            for cand in batch:
                search.tell(cand.id, {"acc": cand.kept / 24, "macs": float(cand.kept)})
        runs.append([c.code for c in search.candidates])
    assert runs[0] == runs[1]


def test_prune_ea_can_minimise_measured_latency_instead_of_macs() -> None:
    search = PruneEASearch(24, seed=0, num_generation=2, num_individual=6, random_models=8,
                           objectives=("latency", "error"))
    assert search.goals() == (("acc", "latency_ms"), (True, False))
    while not search.done and (batch := search.ask(10)):
        for cand in batch:
            search.tell(cand.id, {"acc": cand.kept / 24, "latency_ms": 0.1 + cand.kept / 100, "macs": 1.0})
    assert search.generation == 2 and search.pareto_ids()
    with pytest.raises(ValueError, match="latency_ms"):
        PruneEASearch(24, seed=0, objectives=("latency", "error"), num_individual=2, random_models=2).tell(0, {})
    assert PruneSearchParams().objective == "macs" and PruneSearchParams(objective="latency").objective == "latency"
    with pytest.raises(ValidationError, match="objective"):
        PruneSearchParams(objective="flops")


def test_prune_ea_stops_when_nothing_fits() -> None:
    search = _prune_search(lambda code: False)
    assert search.ask(10) == [] and search.done and search.skipped > 0 and not search.history


def test_evolution_never_evaluates_a_path_over_the_latency_limit() -> None:
    gate = _Fake(lambda path: float(sum(path)))
    search = EvolutionSearch(lambda p: sum(p), None, seed=0, num_blocks=6, num_choices=4, population=6, topk=2,
                             mutation_count=3, crossover_count=3, generations=3, fits=gate.fits(6.0))
    while not search.done:
        batch = search.ask(10)
        if not batch:
            break
        for cand in batch:
            assert sum(cand.choices) <= 6
            search.tell(cand.id, {"acc": 1.0 / (1 + sum(cand.choices))})
    assert search.skipped > 0 and sum(search.rejected_over_limit) >= search.skipped


def test_evolution_under_an_impossible_latency_limit_stops_drawing_soon() -> None:
    gate = _Fake(lambda path: 5.0)
    search = EvolutionSearch(lambda p: sum(p), None, seed=0, num_blocks=6, num_choices=4, population=4, topk=2,
                             mutation_count=2, crossover_count=2, generations=2, fits=gate.fits(1.0))
    assert search.ask(8) == [] and search.done
    assert gate.timed <= 4 * 5  # FITS_TRIES per wanted path, not RANDOM_TRIES


# --- spnas: limits, the choice, the timed part ------------------------------------------------

def test_spnas_latency_limit_joins_the_choice_but_not_the_size_comparison() -> None:
    limits = limits_of("start", None, {"params": 10, "macs": 20}, 4.5)
    assert limits == {"params": 10.0, "latency_ms": 4.5} and size_limits(limits) == {"params": 10.0}
    assert limits_of(None, None, {}) == {}


def test_spnas_searches_can_weigh_measured_latency_against_map() -> None:
    from tasks.spnas.serial import search_config

    assert SerialSearchParams().objective == "params" and ParallelSearchParams().objective == "macs"
    assert search_config(SerialSearchParams(objective="latency")).objective_keys == ("mAP", "latency_ms")
    assert search_config(SerialSearchParams(objective="macs")).objective_keys == ("mAP", "macs")
    with pytest.raises(ValidationError, match="objective"):
        ParallelSearchParams(objective="flops")
    # Parents come from the [mAP, latency] front: a slower net of equal mAP is dominated.
    search = SerialSearch([MODEL.backbone_code], search_config(SerialSearchParams(objective="latency", max_sample=3)),
                          seed=0)
    [start] = search.ask(1)
    search.tell(start.id, {"mAP": 0.5, "params": 1.0, "macs": 1.0, "latency_ms": 12.0})
    a, b = search.ask(2)
    search.tell(a.id, {"mAP": 0.5, "params": 2.0, "macs": 1.0, "latency_ms": 9.0})
    search.tell(b.id, {"mAP": 0.4, "params": 0.5, "macs": 1.0, "latency_ms": 20.0})
    assert search.pareto_ids() == [a.id]


def test_spnas_no_trained_candidate_within_the_latency_limit_is_one_clear_error() -> None:
    search = SerialSearch([MODEL.backbone_code], SerialSearchConfig(max_sample=1), seed=0)
    [start] = search.ask(1)
    search.tell(start.id, {"mAP": 0.5, "params": 1.0, "latency_ms": 12.0})
    check_latency_met(search, {"params": 1.0}, "serial.max_latency_ms")  # no latency limit: nothing to check
    check_latency_met(search, {"latency_ms": 12.5}, "serial.max_latency_ms")
    with pytest.raises(InputError, match=r"serial\.max_latency_ms.*fastest trained one measured 12\.000 ms"):
        check_latency_met(search, {"latency_ms": 10.0}, "serial.max_latency_ms")


def test_spnas_times_the_backbone_and_fpn_and_a_tiny_limit_refuses_it(one_thread) -> None:
    from tasks.spnas.detectors import latency_of

    gate = latency_of(MODEL, NUM_CLASSES)
    fits = size_gate(MODEL, NUM_CLASSES, {"latency_ms": 1e-3}, latency=gate)
    assert not fits(MODEL.backbone_code) and gate.timed == 1
    assert gate(MODEL.backbone_code) > 1e-3 and gate.timed == 1


# --- params and preflight ---------------------------------------------------------------------

@pytest.mark.parametrize("section", [SerialSearchParams, ParallelSearchParams, PruneSearchParams, EvolutionParams])
def test_max_latency_ms_is_bounded_and_off_by_default(section: type) -> None:
    assert section().max_latency_ms is None
    assert section(max_latency_ms=2.5).max_latency_ms == 2.5
    for bad in (0, -1.0, 1e7, "start", True):
        with pytest.raises(ValidationError, match="max_latency_ms"):
            section(max_latency_ms=bad)


def test_prune_ea_preflight_refuses_a_limit_below_the_smallest_network(one_thread) -> None:
    from params.models import PruneEaParams
    from tasks.prune_ea.preflight import check_latency_limit, preflight

    with pytest.raises(InputError, match=r"search\.max_latency_ms: 0\.0001 ms is below the latency of the "
                                         r"smallest ResNet-20 .*measured here \(ONNX Runtime"):
        preflight(PruneEaParams(search=PruneSearchParams(max_latency_ms=1e-4)))
    check_latency_limit(20, 1e5)


def test_spos_preflight_refuses_a_limit_below_the_cheapest_paths(one_thread) -> None:
    from tasks.spos.preflight import check_spos_latency

    with pytest.raises(InputError, match=r"search\.max_latency_ms.*cheapest paths of the 'small' space"):
        check_spos_latency("small", 1e-4)


def test_a_search_that_trained_nothing_under_the_limit_says_so() -> None:
    from tasks.prune_ea.prune_search import check_any_fits

    search = _prune_search(lambda code: False)
    search.ask(10)
    with pytest.raises(InputError, match=r"search\.max_latency_ms: no encoding was within 0\.5 ms"):
        check_any_fits(search, 0.5)
