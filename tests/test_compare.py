"""`spnas compare`: runs found by flow-run name or MLflow run id, the table of differing params
and final figures, the Pareto-front figures, the PNG + CSV written and logged to a new MLflow
run, and one clear error for unknown runs or runs of different deployments.

The fast tests build flow runs with the real tracker and pipeline functions, in the shape the
flows leave them (parent run with params and tags, search-stage child run holding the
candidates table, summary.json + metrics from `finish`), in the session's SQLite store. The
slow test compares two real prune-ea flow runs."""
from __future__ import annotations

import csv
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.errors import InputError
from params.models import LcnetParams, PruneEaParams, Runtime, SposParams
from spnas import cli
from spnas.compare import MAXIMIZE, compare, front_points
from strategies.pareto import hypervolume
from tasks.orchestration.files import write_json
from tasks.orchestration.pipeline import Pipeline, finish
from tasks.orchestration.tables import write_table
from tracking import tracker


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the session's store is shared with other tests


def flow_run(tmp: Path, flow: str, name: str, params: Any, summary: dict[str, Any],
             stages: dict[str, tuple[str, str, list[dict[str, Any]]]] | None = None) -> dict[str, str]:
    """What `tasks.orchestration.pipeline.pipeline` + a search stage + `finish` leave in MLflow.
    `stages`: child run name -> (artifact folder, table file, candidate rows)."""
    experiment_id = tracker.ensure_experiment(flow)
    run_dir = tmp / "outputs" / name
    run_dir.mkdir(parents=True)
    dumped = params.model_dump(mode="json")
    write_json(run_dir / "params.json", dumped)
    flow_run_id = str(uuid.uuid4())
    parent = tracker.start_run(experiment_id, name, params=dumped, tags={
        "prefect.flow_run_id": flow_run_id, "prefect.flow_run_name": name, "output_dir": str(run_dir)})
    children = {}
    for stage_run, (folder, table, rows) in (stages or {}).items():
        with tracker.child_run(parent, stage_run, {"stage": folder}) as run_id:
            files = write_table([{"id": i, **r} for i, r in enumerate(rows)], tmp / "work" / name / folder / table)
            tracker.log_files(run_id, files, folder)
        children[stage_run] = run_id
    pipe = Pipeline(flow, name, run_dir, parent, experiment_id, Runtime(), tuple(folder for folder, _, _ in
                                                                                 (stages or {}).values()))
    finish(pipe, summary)
    tracker.finish_run(parent)
    return {"run_id": parent, "flow_run_id": flow_run_id, **children}


def _row(macs: float | None, acc: float | None, chosen: bool = False, status: str = "ok") -> dict[str, Any]:
    return {"generation": 0, "macs": macs, "params": None if macs is None else macs / 100, "acc": acc,
            "status": status, "pareto": False, "chosen": chosen}


ROWS_A = [_row(1e6, 0.5), _row(2e6, 0.7), _row(3e6, 0.6), _row(4e6, 0.9, chosen=True)]
ROWS_B = [_row(1.5e6, 0.6), _row(2e6, 0.8), _row(4e6, 0.85, chosen=True), _row(None, None, status="failed")]


def _prune_pair(tmp: Path) -> tuple[dict[str, str], dict[str, str], str, str]:
    a, b = _name("alpha"), _name("beta")
    pa = PruneEaParams(seed=0, output_root=str(tmp / "outputs"))
    pb = PruneEaParams(seed=1, output_root=str(tmp / "outputs"), search={"num_individual": 4})
    ra = flow_run(tmp, "prune-ea", a, pa, {"depth": 20, "baseline_acc": 0.91, "baseline_macs": 40_813_184,
                                          "member_3_acc": 0.88},
                  {"prune_search": ("prune_search", "result.csv", ROWS_A)})
    rb = flow_run(tmp, "prune-ea", b, pb, {"depth": 20, "baseline_acc": 0.93, "baseline_macs": 40_813_184},
                  {"prune_search": ("prune_search", "result.csv", ROWS_B)})
    return ra, rb, a, b


def _by_name(comparison, section_prefix: str) -> dict[str, list[Any]]:
    return {r["name"]: r["values"] for r in comparison.rows if r["section"].startswith(section_prefix)}


def test_pareto_front_and_hypervolume() -> None:
    """compare's fronts and hypervolumes are strategies.pareto's (pymoo), x minimized, y maximized."""
    pts = [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.9), (2, 0.7), (5, 0.9)]
    assert front_points(pts) == [(1, 0.5), (2, 0.7), (4, 0.9)]
    assert front_points([]) == []
    # Strips: [1,2) at height 0.5-0.4, [2,4) at 0.3, [4,5) at 0.5.
    assert hypervolume(pts, MAXIMIZE, (5, 0.4)) == pytest.approx(1 * 0.1 + 2 * 0.3 + 1 * 0.5)
    assert hypervolume([(6, 0.9)], MAXIMIZE, (5, 0.4)) == 0.0


def test_compare_reads_the_registry_not_the_cli() -> None:
    """The roof's modules do not lean on each other: the pipeline list comes from params/registry.py."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parent.parent / "spnas" / "compare.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "params.registry" in imported and not any(m and m.startswith("spnas.cli") for m in imported)


def test_compare_two_prune_ea_runs(tmp_path: Path) -> None:
    ra, rb, a, b = _prune_pair(tmp_path)
    out = tmp_path / "cmp"
    c = compare([a, rb["run_id"]], out)  # one by flow-run name, one by MLflow run id

    assert c.deployment == "prune-ea/full" and [r.label for r in c.runs] == [a, b]
    assert [r.run_id for r in c.runs] == [ra["run_id"], rb["run_id"]]
    params = _by_name(c, "params")
    assert params == {"seed": ["0", "1"], "search.num_individual": ["8", "4"]}
    n_params = len(tracker.client().get_run(ra["run_id"]).data.params)
    assert c.identical_params == n_params - 2 > 20
    final = _by_name(c, "final")
    assert final["baseline_acc"] == [0.91, 0.93] and final["baseline_macs"] == [40_813_184, 40_813_184]
    assert final["member_3_acc"] == [0.88, None] and len(final["wall_seconds"]) == 2

    front = _by_name(c, "front")
    assert front["candidates"] == [4, 3]  # B's failed candidate is not a point
    assert front["front size"] == [3, 3]
    assert front["best acc"] == [0.9, 0.85]
    assert front["smallest macs on front"] == [1e6, 1.5e6]
    # Combined front: A (1M, .5), B (1.5M, .6), B (2M, .8), A (4M, .9).
    assert front["points on combined front"] == ["2 of 4", "2 of 4"]
    # Reference 5 % beyond the worst: x 4.15M, acc 0.48; box (4.15M - 1M) x (0.9 - 0.48).
    box = 3.15e6 * 0.42
    hv_a = 1e6 * 0.02 + 2e6 * 0.22 + 0.15e6 * 0.42
    hv_b = 0.5e6 * 0.12 + 2e6 * 0.32 + 0.15e6 * 0.37
    assert front["hypervolume share"] == [pytest.approx(hv_a / box, abs=1e-4), pytest.approx(hv_b / box, abs=1e-4)]

    with (out / "compare.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["section", "name", a, b]
    assert ["params", "seed", "0", "1"] in table
    assert ["final", "baseline_acc", "0.91", "0.93"] in table
    assert (out / "pareto_fronts.png").stat().st_size > 10_000

    run = tracker.client().get_run(c.mlflow_run_id)
    assert run.info.run_name == f"compare {a} {b}" and run.info.status == "FINISHED"
    assert tracker.experiment_name(run.info.experiment_id) == "prune-ea"
    assert run.data.tags["spnas.compare.run_ids"] == f"{ra['run_id']},{rb['run_id']}"
    assert {f.path for f in tracker.client().list_artifacts(c.mlflow_run_id)} == {"pareto_fronts.png", "compare.csv"}
    report = c.report()
    assert "parameters: 2 differ" in report and str(out / "pareto_fronts.png") in report


def test_runs_found_by_stage_run_id_and_flow_run_id(tmp_path: Path) -> None:
    ra, rb, a, b = _prune_pair(tmp_path)
    c = compare([ra["prune_search"], rb["flow_run_id"]], tmp_path / "cmp", log=False)
    assert [r.run_id for r in c.runs] == [ra["run_id"], rb["run_id"]] and c.mlflow_run_id is None
    assert any("stage/candidate run" in n for n in c.notes)
    # A comparison run is not a flow run.
    logged = compare([a, b], tmp_path / "cmp2")
    with pytest.raises(InputError, match="comparison"):
        compare([logged.mlflow_run_id, a], tmp_path / "cmp3")


def test_unknown_run_is_one_clear_error(tmp_path: Path) -> None:
    _, _, a, _ = _prune_pair(tmp_path)
    with pytest.raises(InputError) as err:
        compare([a, "no-such-run"], tmp_path / "cmp")
    text = str(err.value)
    assert text.startswith("RUN: 'no-such-run'") and "lcnet, spnas, prune-ea, spos, sanas" in text
    assert tracker.tracking_uri() in text
    with pytest.raises(InputError, match="0123456789abcdef0123456789abcdef"):
        compare(["0123456789abcdef0123456789abcdef"], tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()  # nothing written before the inputs are checked


def test_runs_of_different_deployments_are_refused(tmp_path: Path) -> None:
    _, _, a, _ = _prune_pair(tmp_path)
    s = _name("gamma")
    flow_run(tmp_path, "spos", s, SposParams(), {"winner_acc": 0.8},
             {"search": ("search", "output.csv", ROWS_A)})
    with pytest.raises(InputError) as err:
        compare([a, s], tmp_path / "cmp")
    text = str(err.value)
    assert f"{a} is prune-ea/full" in text and f"{s} is spos/full" in text and "different deployments" in text
    assert not (tmp_path / "cmp").exists()


def test_lcnet_runs_are_one_point_each(tmp_path: Path) -> None:
    a, b = _name("lc-a"), _name("lc-b")
    flow_run(tmp_path, "lcnet", a, LcnetParams(), {"test_top1": 0.9, "macs": 2_000_000, "params": 1000})
    flow_run(tmp_path, "lcnet", b, LcnetParams(seed=3), {"test_top1": 0.95, "macs": 3_000_000, "params": 1500})
    c = compare([a, b], tmp_path / "cmp", log=False)
    front = _by_name(c, "front")
    assert front["candidates"] == [1, 1] and front["best test_top1"] == [0.9, 0.95]
    assert front["points on combined front"] == ["1 of 2", "1 of 2"]  # neither dominates the other
    assert _by_name(c, "params") == {"seed": [str(LcnetParams().seed), "3"]}
    assert (tmp_path / "cmp" / "pareto_fronts.png").is_file()


def test_table_read_from_the_run_folder_when_not_in_mlflow(tmp_path: Path) -> None:
    """A search stage whose artifacts were not logged (e.g. lost): the run folder still has them."""
    a = _name("delta")
    run_dir = tmp_path / "outputs" / a
    flow_run(tmp_path, "prune-ea", a, PruneEaParams(), {"depth": 20})
    write_table([{"id": i, **r} for i, r in enumerate(ROWS_B)], run_dir / "prune_search" / "result.csv")
    c = compare([a], tmp_path / "cmp", log=False)
    assert _by_name(c, "front")["front size"] == [3]


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, a, b = _prune_pair(tmp_path)
    assert cli.main(["compare", a, b, "--out", str(tmp_path / "cmp"), "--no-log"]) == 0
    lines = capsys.readouterr().out.splitlines()
    seed = next(line for line in lines if line.strip().startswith("seed"))
    assert seed.split() == ["seed", "0", "1"]
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", a, b]
    # Columns line up: every value ends where its run's header ends.
    assert len(seed) == len(header)
    assert cli.main(["compare", a, "nobody-here"]) == 2
    assert "error: RUN: 'nobody-here'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_two_real_prune_ea_runs(prune_ea_d20: dict, prune_ea_d56: dict, tmp_path: Path) -> None:
    """The two real prune-ea runs test_prune_ea_flow.py checks (ResNet-20 and ResNet-56, conftest's
    session fixtures), compared as a user would: by their run folders' names."""
    first, second = prune_ea_d20, prune_ea_d56
    names = [Path(s["run_dir"]).name for s in (first, second)]
    c = compare(names, tmp_path / "cmp")
    assert [r.run_id for r in c.runs] == [first["mlflow_run_id"], second["mlflow_run_id"]]
    # Exactly the fields the two runs' overrides set differently (conftest.PRUNE_EA_D20 / _D56).
    assert _by_name(c, "params") == {
        "depth": ["20", "56"], "data.embedded": ["photo_digits", "digits"], "retrain.count": ["2", "1"], "search.num_generation": ["2", "1"],
        "search.num_individual": ["4", "2"], "search.random_models": ["6", "2"],
        "search.finetune_steps": ["3", "1"], "search.control": ["none", "random"]}
    final = _by_name(c, "final")
    assert final["baseline_acc"] == [first["baseline_acc"], second["baseline_acc"]]
    assert final["baseline_macs"] == [40_813_184, 125_747_840]
    front = _by_name(c, "front")
    assert front["candidates"] == [first["candidates"], second["candidates"]] == [14, 4]
    # The front computed from the logged table is the run's own 2-objective NSGA-III front.
    assert front["front size"] == [first["front_size"], second["front_size"]]
    assert (tmp_path / "cmp" / "pareto_fronts.png").stat().st_size > 10_000
    assert {f.path for f in tracker.client().list_artifacts(c.mlflow_run_id)} == {"pareto_fronts.png", "compare.csv"}
