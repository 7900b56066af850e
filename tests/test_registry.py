"""The pipeline registry (params/registry.py) is the one list of pipelines: prefect.yaml's
deployments, the flows' defaults and stage calls, and the parameter files all agree with it.

Adding a pipeline means: its params model, its tasks package, its flow, one registry entry, one
prefect.yaml entry — these tests say which of them is missing or disagrees."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import InputError
from params.loader import load_params
from params.registry import (
    MAIN,
    PIPELINES,
    PRUNE_EA,
    SANAS,
    SPNAS,
    FrontSpec,
    PipelineSpec,
    by_deployment,
    deployments,
    stage_from_tags,
    stage_tag,
)

REPO = Path(__file__).resolve().parent.parent
SPECS = list(PIPELINES.values())
IDS = list(PIPELINES)


def _prefect_deployments() -> list[dict[str, Any]]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _flow(spec: PipelineSpec) -> Any:
    path, name = spec.entrypoint.split(":")
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return getattr(module, name)


def test_five_pipelines_in_the_order_users_see_them() -> None:
    assert IDS == ["lcnet", "spnas", "prune-ea", "spos", "sanas"]
    assert deployments() == ["lcnet/full", "spnas/full", "prune-ea/full", "spos/full", "sanas/full"]
    assert MAIN.deployment == "spnas/full"
    assert all(isinstance(s, PipelineSpec) for s in SPECS)


def test_prefect_yaml_deploys_exactly_the_registry() -> None:
    """One `full` deployment per entry, with its entrypoint and default params file; no extras."""
    found = [(d["name"], d["entrypoint"], d["parameters"]["params_file"]) for d in _prefect_deployments()]
    assert found == [(s.deployment.split("/", 1)[1], s.entrypoint, s.params_file) for s in SPECS]
    assert all(d["name"] == "full" for d in _prefect_deployments())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_flow_name_and_default_params_file_are_the_registrys(spec: PipelineSpec) -> None:
    """The deployment's name is "<flow name>/full": the flow must be called as registered, and a
    flow run started without parameters reads the registered file (also in the parameter schema
    `prefect deploy` builds from the source without importing it)."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    flow = _flow(spec)
    assert flow.name == spec.name
    assert inspect.signature(flow.fn).parameters["params_file"].default == spec.params_file
    schema = parameter_schema_from_entrypoint(str(REPO / spec.entrypoint.split(":")[0]) + ":" + flow.fn.__name__)
    assert schema.properties["params_file"]["default"] == spec.params_file


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_registered_params_file_loads_with_its_model(spec: PipelineSpec) -> None:
    assert isinstance(load_params(spec.model, str(REPO / spec.params_file)), spec.model)


def _stage_calls(source: str) -> list[str]:
    """The stage names a flow passes to pipe.run / pipe.map / pipe.search."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("run", "map", "search") and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "pipe" and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(node.args[0].value)
    return names


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_the_flow_runs_every_registered_stage_and_no_other(spec: PipelineSpec) -> None:
    calls = _stage_calls((REPO / spec.entrypoint.split(":")[0]).read_text())
    assert set(calls) == set(spec.stages)
    # In the registered order (a stage may have several calls: fully_train + its comparison).
    assert list(dict.fromkeys(calls)) == list(spec.stages)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_fronts_belong_to_search_stages(spec: PipelineSpec) -> None:
    assert spec.fronts
    for front in spec.fronts:
        assert front.stage is None or front.stage in spec.stages
        assert (front.stage is None) == (front.stage_run is None) == (front.table is None)


def test_an_entry_that_contradicts_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="belong to flow"):
        PipelineSpec("a", "b/full", "flows/a.py:a", SANAS.model, "params/a.yaml", ("data",), (), "a")
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineSpec("a", "a/full", "flows/a.py:a", SANAS.model, "params/a.yaml", ("data",),
                     (FrontSpec("t", "macs", "acc", "search", "search", "search/output.csv"),), "a")


def test_a_latency_constrained_search_is_compared_on_latency() -> None:
    (front,) = SANAS.fronts
    assert front.for_runs([{"constraint.ctype": "flops"}, {"constraint.ctype": "latency"}]).x == "macs"
    latency = front.for_runs([{"constraint.ctype": "latency"}] * 2)
    assert (latency.x, latency.y, latency.table) == ("predicted_ms", "AP50", "search/output.csv")
    assert front.for_runs([]).x == "macs"


def test_each_search_front_follows_its_objective() -> None:
    serial, parallel = SPNAS.fronts
    assert serial.for_runs([{"serial.objective": "params"}]).x == "params"
    assert serial.for_runs([{"serial.objective": "latency"}] * 2).x == "latency_ms"
    assert serial.for_runs([{"serial.objective": "macs"}]).x == "macs"
    assert serial.for_runs([{"serial.objective": "macs"}, {"serial.objective": "latency"}]).x == "params"
    assert parallel.for_runs([{"parallel.objective": "latency"}]).x == "latency_ms"
    assert parallel.for_runs([{"parallel.objective": "params"}]).x == "params"
    (prune,) = PRUNE_EA.fronts
    assert prune.for_runs([{"search.objective": "latency"}]).x == "latency_ms"
    assert prune.for_runs([{"search.objective": "macs"}]).x == "macs"


def test_unknown_deployment_names_the_known_ones() -> None:
    assert by_deployment("prune-ea/full") is PIPELINES["prune-ea"]
    with pytest.raises(InputError) as err:
        by_deployment("prune_ea/full")
    assert err.value.field == "deployment" and "lcnet/full, spnas/full, prune-ea/full" in str(err.value)


def test_stage_tags_round_trip() -> None:
    assert stage_tag("fine_tune") == "stage:fine_tune"
    assert stage_from_tags(["team:a", stage_tag("fine_tune")]) == "fine_tune"
    assert stage_from_tags(["team:a"]) is None and stage_from_tags(None) is None


def test_every_search_section_takes_a_random_control() -> None:
    from params.models import search_sections

    found = {name: search_sections(spec.model) for name, spec in PIPELINES.items()}
    assert found == {"lcnet": [], "spnas": ["serial", "parallel"], "prune-ea": ["search"], "spos": ["search"],
                     "sanas": ["search"]}
    for name, sections in found.items():
        for section in sections:
            field = PIPELINES[name].model.model_fields[section].annotation.model_fields["control"]
            assert field.default == "none"
