"""Parameter files, overrides, sections and the one place defaults live; the models check
shapes, each pipeline's preflight checks what the values point at."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import InputError
from core.paths import REPO_ROOT
from params.loader import load_params, merge_overrides, parse_override
from params.models import LcnetParams, PruneEaParams, RunParams, SanasParams, SposParams, SpnasParams
from params.registry import PIPELINES, PipelineSpec
from tasks.lcnet.preflight import preflight as lcnet_preflight
from tasks.orchestration.import_graph import imported_names
from tasks.prune_ea.preflight import preflight as prune_ea_preflight
from tasks.sanas.preflight import preflight as sanas_preflight
from tasks.spnas.preflight import preflight as spnas_preflight
from tasks.spos.preflight import preflight as spos_preflight

PREFLIGHTS: dict[type[RunParams], Callable[[Any], None]] = {
    LcnetParams: lcnet_preflight, SpnasParams: spnas_preflight, PruneEaParams: prune_ea_preflight,
    SposParams: spos_preflight, SanasParams: sanas_preflight}
DEMO_FILES = {spec.model: spec.params_file for spec in PIPELINES.values()}


def _load_and_check(model: type[RunParams], overrides: dict[str, Any]) -> RunParams:
    """What a flow does first: load the params (shapes), then run its preflight (the world)."""
    p = load_params(model, DEMO_FILES[model], overrides)
    PREFLIGHTS[model](p)
    return p


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=list(PIPELINES))
def test_demo_files_change_nothing_so_defaults_live_in_the_models(spec: PipelineSpec) -> None:
    model, path = spec.model, spec.params_file
    assert yaml.safe_load(Path(path).read_text()) == {}
    assert load_params(model, path) == model()
    PREFLIGHTS[model](model())  # the defaults pass the world checks too


def test_seed_file_sets_the_seed_search() -> None:
    seed = load_params(SpnasParams, "params/spnas_seed.yaml")
    assert (seed.serial.max_sample, seed.serial.max_optimal, seed.serial.num_mutate) == (20, 5, 3)
    assert (seed.serial.add_stage_ratio, seed.serial.expend_ratio, seed.serial.max_stages) == (0.05, 0.3, 6)
    assert (seed.model.backbone_code, seed.model.block) == ("111-2111-211111-211", "Bottleneck")
    assert seed.parallel == SpnasParams().parallel  # not in the file: the default section


def test_spos_and_sanas_seed_files_hold_the_seeds_settings() -> None:
    spos = load_params(SposParams, "params/spos_seed.yaml").search
    assert (spos.population, spos.topk, spos.mutation_count, spos.crossover_count) == (50, 10, 25, 25)
    assert (spos.mutation_prob, spos.generations) == (0.1, 20)
    sanas = load_params(SanasParams, "params/sanas_seed.yaml").search
    assert (sanas.init_temperature, sanas.reduce_rate, sanas.search_steps) == (10.24, 0.85, 300)
    assert sanas.random_starts == 0  # PaddleSlim walks from the initial tokens


def test_overrides_merge_into_nested_sections() -> None:
    p = load_params(SpnasParams, "params/spnas.yaml", {"serial": {"max_sample": 3}, "parallel.batch": 1})
    assert p.serial.max_sample == 3 and p.parallel.batch == 1
    assert p.serial.add_stage_ratio == SpnasParams().serial.add_stage_ratio
    assert merge_overrides({"a": {"b": 1, "c": 2}}, {"a.b": 5}) == {"a": {"b": 5, "c": 2}}
    assert parse_override("serial.max_sample=12") == ("serial.max_sample", 12)


def test_paths_become_absolute(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    p = load_params(LcnetParams, str(Path(__file__).parents[1] / "params/lcnet.yaml"),
                    {"output_root": "out", "data.dataset_dir": "data"})
    assert p.output_root == str(tmp_path / "out") and p.data.dataset_dir == str(tmp_path / "data")


@pytest.mark.parametrize("overrides, field", [
    ({"model.scale": 0.3}, "model.scale"),
    ({"data": {"val_value": 0.7, "test_value": 0.3}}, "data.test_value"),
    ({"train.epoch": 3}, "train.epoch"),
    ({"data.dataset_dir": "/no/such/folder"}, "data.dataset_dir"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"model.resize_short": 16, "model.input_size": 32}, "model.resize_short"),
    ({"train": 5}, "train"),
])
def test_lcnet_errors_name_the_field(overrides, field) -> None:
    with pytest.raises(InputError) as err:
        _load_and_check(LcnetParams, overrides)
    assert err.value.field == field


@pytest.mark.parametrize("overrides, field", [
    ({"model.backbone_code": "11-31"}, "model.backbone_code"),
    ({"model.block": "Dense"}, "model.block"),
    ({"serial.max_sample": 0}, "serial.max_sample"),
    ({"reignite": {"rounds": 3}}, "reignite.rounds"),
    ({"data.train_json": "params/spnas.yaml"}, "data.train_json"),
    ({"serial.max_stages": 3}, "serial.max_stages"),
    ({"serial.max_params": "half"}, "serial.max_params"),
    ({"serial.keep_weights": "some"}, "serial.keep_weights"),
])
def test_spnas_errors_name_the_field(overrides, field) -> None:
    with pytest.raises(InputError) as err:
        _load_and_check(SpnasParams, overrides)
    assert err.value.field == field


@pytest.mark.parametrize("model, overrides, field", [
    (LcnetParams, {"data.dataset_dir": "/no/such/folder"}, "data.dataset_dir"),
    (LcnetParams, {"device": "tpu"}, "device"),
    (SpnasParams, {"model.backbone_code": "11-31"}, "model.backbone_code"),
    (SpnasParams, {"model.backbone_code": "1-1-1-1-1-1-x"}, "model.backbone_code"),  # not "too many stages"
    (SpnasParams, {"serial.max_stages": 3}, "serial.max_stages"),
    (PruneEaParams, {"data.dataset_dir": "/no/such/folder"}, "data.dataset_dir"),
    (SposParams, {"model.preset": "huge"}, "model.preset"),
    (SposParams, {"search.macs_limit": 1000}, "search.macs_limit"),
    (SanasParams, {"constraint.max": 1000}, "constraint.max"),
    (SanasParams, {"latency.table_file": "params/sanas.yaml"}, "latency.table_file"),
])
def test_models_check_shapes_and_the_preflight_checks_the_world(model, overrides, field) -> None:
    p = load_params(model, DEMO_FILES[model], overrides)  # the shape is fine...
    with pytest.raises(InputError) as err:
        PREFLIGHTS[model](p)  # ...what it points at is not
    assert err.value.field == field and "\n" not in str(err.value)


def test_params_imports_no_networks_data_tables_or_stages() -> None:
    """params/ sits below what it configures: a validator that needs a network, a data file or a
    table belongs in a pipeline's preflight (tasks/<pipeline>/preflight.py)."""
    offenders = sorted(f"{path.name}: {name}" for path in (REPO_ROOT / "params").glob("*.py")
                       for name in imported_names(path, REPO_ROOT)
                       if name.split(".")[0] in ("nas_models", "data", "latency", "engine", "strategies", "tasks"))
    assert offenders == []


def test_missing_params_file() -> None:
    with pytest.raises(InputError, match="params_file"):
        load_params(LcnetParams, "params/nope.yaml")


# -- every number has a range -----------------------------------------------------------------

def _numeric_fields(model: type, prefix: str = "") -> list[tuple[str, Any, list[Any]]]:
    """(dotted name, annotation, constraints) of every int/float a user can set, union members and
    tuple elements included, walking nested sections."""
    import typing

    from pydantic import BaseModel

    out: list[tuple[str, Any, list[Any]]] = []

    def visit(name: str, ann: Any, metadata: list[Any]) -> None:
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Annotated:
            visit(name, args[0], metadata + [m for a in args[1:] for m in getattr(a, "metadata", [a])])
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_numeric_fields(ann, f"{name}."))
        elif ann in (int, float):
            out.append((name, ann, metadata))
        elif origin is not None and origin is not typing.Literal:
            for a in args:
                visit(name, a, metadata if origin in (typing.Union, getattr(__import__("types"), "UnionType")) else [])

    for field_name, f in model.model_fields.items():
        visit(prefix + field_name, f.annotation, list(f.metadata))
    return out


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=list(PIPELINES))
def test_every_number_a_user_sets_has_both_bounds(spec: PipelineSpec) -> None:
    import annotated_types as at

    fields = _numeric_fields(spec.model)
    assert any(name == "seed" for name, _, _ in fields)
    unbounded = [name for name, _, meta in fields
                 if not (any(isinstance(m, (at.Ge, at.Gt)) for m in meta) and any(isinstance(m, (at.Le, at.Lt)) for m in meta))]
    assert unbounded == []


@pytest.mark.parametrize("model, overrides, field", [
    (SpnasParams, {"seed": 2**64}, "seed"),
    (SposParams, {"seed": -1}, "seed"),
    (PruneEaParams, {"seed": 2**32}, "seed"),
    (SpnasParams, {"serial.candidate_steps": 10**12}, "serial.candidate_steps"),
    (SpnasParams, {"parallel.candidate_steps": 10**9}, "parallel.candidate_steps"),
    (SpnasParams, {"reignite.epochs": 10**6}, "reignite.epochs"),
    (SpnasParams, {"reignite.detector_steps": 10**9}, "reignite.detector_steps"),
    (SpnasParams, {"serial.max_params": -5}, "serial.max_params"),
    (SpnasParams, {"parallel.max_macs": 0}, "parallel.max_macs"),
    (SpnasParams, {"optimizer.eval_max_images": 10**12}, "optimizer.eval_max_images"),
    (LcnetParams, {"train.epochs": 2, "train.warmup_epochs": 3}, "train.warmup_epochs"),
    (LcnetParams, {"predict.warmup": 10**9}, "predict.warmup"),
    (LcnetParams, {"model.std": [1e9, 1, 1]}, "model.std"),
    (PruneEaParams, {"base.epochs": 1, "base.warmup_epochs": 2}, "base.warmup_epochs"),
    (SposParams, {"retrain.epochs": 2, "retrain.warmup_epochs": 5}, "retrain.warmup_epochs"),
    (SposParams, {"search.topk": 10**9}, "search.topk"),
    (SanasParams, {"constraint.max": -1.0}, "constraint.max"),
    (SanasParams, {"search.candidate_steps": 10**10}, "search.candidate_steps"),
    (SanasParams, {"search.init_temperature": 1e300}, "search.init_temperature"),
])
def test_out_of_range_numbers_are_refused_by_name(model, overrides, field) -> None:
    with pytest.raises(InputError) as err:
        load_params(model, DEMO_FILES[model], overrides)
    assert err.value.field == field and "\n" not in str(err.value)


def test_the_largest_allowed_seed_runs_through_every_generator() -> None:
    """SEED_MAX is accepted by the generators a run seeds (torch, numpy, random) and by derive_seed."""
    import random

    import numpy as np
    import torch

    from core.seeds import derive_seed
    from params.models import SEED_MAX

    for seed in (SEED_MAX, derive_seed(SEED_MAX, "x", 10**6)):
        torch.manual_seed(seed)
        np.random.seed(seed)
        np.random.default_rng(seed)
        random.seed(seed)
    assert load_params(SpnasParams, DEMO_FILES[SpnasParams], {"seed": SEED_MAX}).seed == SEED_MAX


# -- multi-fidelity (successive halving) on the training search sections ------------------------

FIDELITY = {"min_steps": 10, "max_steps": 90, "eta": 3}


@pytest.mark.parametrize("model, section, steps", [
    (SpnasParams, "serial", "candidate_steps"), (SpnasParams, "parallel", "candidate_steps"),
    (PruneEaParams, "search", "finetune_steps"), (SanasParams, "search", "candidate_steps")])
def test_search_sections_take_a_fidelity_whose_max_steps_is_the_full_budget(model, section, steps) -> None:
    default = getattr(model(), section)
    assert default.fidelity is None and default.full_steps == getattr(default, steps)  # off by default
    p = getattr(load_params(model, DEMO_FILES[model], {f"{section}.fidelity": FIDELITY}), section)
    assert (p.fidelity.min_steps, p.fidelity.max_steps, p.fidelity.eta) == (10, 90, 3) and p.full_steps == 90
    same = load_params(model, DEMO_FILES[model], {f"{section}.fidelity": FIDELITY, f"{section}.{steps}": 90})
    assert getattr(same, section).full_steps == 90
    with pytest.raises(InputError) as err:  # both given, and they disagree: which one is meant?
        load_params(model, DEMO_FILES[model], {f"{section}.fidelity": FIDELITY, f"{section}.{steps}": 40})
    assert err.value.field == f"{section}.{steps}" and "set one of them" in str(err.value)


def test_spos_evaluates_paths_untrained_so_it_takes_no_fidelity() -> None:
    with pytest.raises(InputError) as err:
        load_params(SposParams, DEMO_FILES[SposParams], {"search.fidelity": FIDELITY})
    assert err.value.field == "search.fidelity"


@pytest.mark.parametrize("fidelity, field", [
    ({"min_steps": 50, "max_steps": 20, "eta": 3}, "serial.fidelity.max_steps"),
    ({"min_steps": 10, "eta": 3}, "serial.fidelity.max_steps"),
    ({"max_steps": 10, "eta": 3}, "serial.fidelity.min_steps"),
    ({"min_steps": 10, "max_steps": 20}, "serial.fidelity.eta"),
])
def test_fidelity_errors_name_the_field(fidelity, field) -> None:
    with pytest.raises(InputError) as err:
        load_params(SpnasParams, DEMO_FILES[SpnasParams], {"serial.fidelity": fidelity})
    assert err.value.field == field and "\n" not in str(err.value)


@pytest.mark.parametrize("fidelity, field", [({"min_steps": 0, "max_steps": 20, "eta": 3}, "min_steps"),
                                             ({"min_steps": 1, "max_steps": 10**8, "eta": 3}, "max_steps"),
                                             ({"min_steps": 1, "max_steps": 20, "eta": 1}, "eta"),
                                             ({"min_steps": 1, "max_steps": 20, "eta": 11}, "eta"),
                                             ({"min_steps": 1, "max_steps": 20, "eta": True}, "eta"),
                                             ({"min_steps": 1, "max_steps": 20, "eta": 3, "rungs": 2}, "rungs")])
def test_fidelity_numbers_out_of_range_and_unknown_keys_are_refused(fidelity, field) -> None:
    with pytest.raises(InputError) as err:
        load_params(SpnasParams, DEMO_FILES[SpnasParams], {"serial.fidelity": fidelity})
    assert err.value.field == f"serial.fidelity.{field}"  # named inside the optional section


def test_errors_inside_an_optional_section_name_its_field() -> None:
    with pytest.raises(InputError) as err:
        load_params(SposParams, DEMO_FILES[SposParams], {"supernet.warm_start.reference_steps": -1})
    assert err.value.field == "supernet.warm_start.reference_steps"


def test_fidelity_of_gives_the_driver_its_fidelity() -> None:
    from strategies.halving import Fidelity
    from tasks.orchestration.search import fidelity_of

    p = load_params(SpnasParams, DEMO_FILES[SpnasParams], {"serial.fidelity": FIDELITY})
    assert fidelity_of(p.serial) == Fidelity(10, 90, 3) and fidelity_of(p.parallel) is None
    assert fidelity_of(p.serial).rungs() == [10, 30, 90]
