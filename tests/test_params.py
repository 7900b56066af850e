"""Parameter files, overrides, sections and the one place defaults live."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from params.loader import load_params, merge_overrides, parse_override
from params.models import LcnetParams, PruneEaParams, SanasParams, SposParams, SpnasParams
from core.errors import InputError


@pytest.mark.parametrize("model, path", [(LcnetParams, "params/lcnet.yaml"), (SpnasParams, "params/spnas.yaml"),
                                         (PruneEaParams, "params/prune_ea.yaml"), (SposParams, "params/spos.yaml"),
                                         (SanasParams, "params/sanas.yaml")])
def test_demo_files_change_nothing_so_defaults_live_in_the_models(model, path) -> None:
    assert yaml.safe_load(Path(path).read_text()) == {}
    assert load_params(model, path) == model()


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
        load_params(LcnetParams, "params/lcnet.yaml", overrides)
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
        load_params(SpnasParams, "params/spnas.yaml", overrides)
    assert err.value.field == field


def test_missing_params_file() -> None:
    with pytest.raises(InputError, match="params_file"):
        load_params(LcnetParams, "params/nope.yaml")
