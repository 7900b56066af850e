"""Parameter files, overrides and the one-line errors users see."""
from __future__ import annotations

import pytest

from params.loader import load_params, merge_overrides, parse_override
from params.models import LcnetParams, SpnasParams
from spnas.errors import InputError


def test_defaults_load() -> None:
    assert load_params(LcnetParams, "params/lcnet.yaml").epochs == 12
    seed = load_params(SpnasParams, "params/spnas_seed.yaml")
    assert (seed.serial.max_sample, seed.serial.max_optimal, seed.serial.num_mutate) == (20, 5, 3)
    assert (seed.serial.add_stage_ratio, seed.serial.expend_ratio, seed.serial.max_stages) == (0.05, 0.3, 6)


def test_overrides_merge_into_nested_sections() -> None:
    base = load_params(SpnasParams, "params/spnas.yaml")
    p = load_params(SpnasParams, "params/spnas.yaml", {"serial": {"max_sample": 3}, "parallel.batch": 1})
    assert p.serial.max_sample == 3 and p.parallel.batch == 1
    # Everything not overridden keeps the YAML's value, not the model's default.
    assert p.serial.add_stage_ratio == base.serial.add_stage_ratio == 0.15
    assert merge_overrides({"a": {"b": 1, "c": 2}}, {"a.b": 5}) == {"a": {"b": 5, "c": 2}}
    assert parse_override("serial.max_sample=12") == ("serial.max_sample", 12)


@pytest.mark.parametrize("overrides, field", [
    ({"scale": 0.3}, "scale"),
    ({"val_value": 0.7, "test_value": 0.3}, "test_value"),
    ({"epoch": 3}, "epoch"),
    ({"dataset_dir": "/no/such/folder"}, "dataset_dir"),
    ({"epochs": 0}, "epochs"),
])
def test_lcnet_errors_name_the_field(overrides, field) -> None:
    with pytest.raises(InputError) as err:
        load_params(LcnetParams, "params/lcnet.yaml", overrides)
    assert err.value.field == field


@pytest.mark.parametrize("overrides, field", [
    ({"backbone_code": "11-31"}, "backbone_code"),
    ({"block": "Dense"}, "block"),
    ({"serial.max_sample": 0}, "serial.max_sample"),
    ({"reignite": {"rounds": 3}}, "reignite.rounds"),
    ({"train_json": "params/spnas.yaml"}, "train_json"),
    ({"serial.max_stages": 3}, "serial.max_stages"),
])
def test_spnas_errors_name_the_field(overrides, field) -> None:
    with pytest.raises(InputError) as err:
        load_params(SpnasParams, "params/spnas.yaml", overrides)
    assert err.value.field == field


def test_missing_params_file() -> None:
    with pytest.raises(InputError, match="params_file"):
        load_params(LcnetParams, "params/nope.yaml")
