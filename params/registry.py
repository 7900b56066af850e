"""The pipelines this project deploys — the one list of them.

Each entry says what a pipeline is called (flow name = MLflow experiment), its Prefect deployment
and entrypoint, its parameters model and default parameters file, its stages in order, and the
Pareto fronts `spnas compare` draws for it. Flows, the CLI, `spnas compare`, the watcher and the
tests read this mapping; prefect.yaml repeats the deployments (Prefect reads that file itself) and
tests/test_registry.py checks that the two agree.

Adding a pipeline means: its params model, its tasks package, its flow, one entry here, one
prefect.yaml entry.

Stage runs carry a `stage:<name>` Prefect tag (set around every stage call in
tasks/orchestration/pipeline.py), which is how `spnas run`'s view maps task and subflow runs to
stages; the tag's spelling lives here so both sides share it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from core.errors import InputError
from params.models import LcnetParams, PruneEaParams, RunParams, SanasParams, SposParams, SpnasParams

STAGE_TAG_PREFIX = "stage:"


def stage_tag(stage: str) -> str:
    """The Prefect tag every task run and subflow run of `stage` carries."""
    return f"{STAGE_TAG_PREFIX}{stage}"


def stage_from_tags(tags: Iterable[str] | None) -> str | None:
    """The stage named by a run's `stage:<name>` tag; None when it has none."""
    for tag in tags or ():
        if tag.startswith(STAGE_TAG_PREFIX):
            return tag[len(STAGE_TAG_PREFIX):]
    return None


@dataclass(frozen=True)
class FrontSpec:
    """One Pareto front `spnas compare` draws: where a search stage's candidates are and which two
    objectives make its front (x lower is better, y higher is better). `stage` None: no search,
    one point per run from its summary."""

    title: str
    x: str
    y: str
    stage: str | None = None        # the pipeline stage that searched
    stage_run: str | None = None    # name of that stage's MLflow child run
    table: str | None = None        # candidates table: artifact path in that run = path in the run folder
    # (param, value, x) alternatives, first match wins: another cost axis when every compared run
    # has param == value (e.g. a search under a latency constraint is compared on latency, not MACs).
    x_when: tuple[tuple[str, str, str], ...] = ()

    def for_runs(self, params: Sequence[Mapping[str, str]]) -> FrontSpec:
        """This front for runs with these (MLflow, flattened) parameters."""
        for key, value, x in self.x_when if params else ():
            if all(p.get(key) == value for p in params):
                return replace(self, x=x, x_when=())
        return self


@dataclass(frozen=True)
class PipelineSpec:
    name: str                          # flow name and MLflow experiment, e.g. "prune-ea"
    deployment: str                    # "<flow name>/<deployment name>" in Prefect
    entrypoint: str                    # prefect.yaml's entrypoint
    model: type[RunParams]             # the parameters model
    params_file: str                   # default parameters file (repo-relative)
    stages: tuple[str, ...]            # in run order; `--refresh-from` and the watcher's rows
    fronts: tuple[FrontSpec, ...]      # what `spnas compare` plots, one panel each
    package: str                       # its stages live in tasks/<package>/ (preflight.py among them)

    def __post_init__(self) -> None:
        if not self.deployment.startswith(f"{self.name}/"):
            raise ValueError(f"deployment {self.deployment!r} must belong to flow {self.name!r}")
        unknown = [f.stage for f in self.fronts if f.stage is not None and f.stage not in self.stages]
        if unknown:
            raise ValueError(f"{self.name}: fronts of unknown stage(s) {unknown}")


LCNET = PipelineSpec(
    "lcnet", "lcnet/full", "flows/lcnet.py:lcnet", LcnetParams, "params/lcnet.yaml",
    ("data", "split", "train", "evaluate", "export", "predict"),
    (FrontSpec("no search: one trained network per run", "macs", "test_top1"),),
    "lcnet")

SPNAS = PipelineSpec(
    "spnas", "spnas/full", "flows/sp_nas.py:spnas", SpnasParams, "params/spnas.yaml",
    ("data", "split", "fine_tune", "serial", "reignite", "parallel", "fully_train", "export"),
    (FrontSpec("serial search (backbones)", "params", "mAP", "serial", "serial_search", "serial/output.csv",
               x_when=(("serial.objective", "latency", "latency_ms"), ("serial.objective", "macs", "macs"))),
     FrontSpec("parallel search (necks)", "macs", "mAP", "parallel", "parallel_search", "parallel/output.csv",
               x_when=(("parallel.objective", "latency", "latency_ms"), ("parallel.objective", "params", "params")))),
    "spnas")

PRUNE_EA = PipelineSpec(
    "prune-ea", "prune-ea/full", "flows/prune_ea.py:prune_ea", PruneEaParams, "params/prune_ea.yaml",
    ("data", "train_base", "prune_search", "retrain", "export"),
    (FrontSpec("NSGA-III pruning search", "macs", "acc", "prune_search", "prune_search", "prune_search/result.csv",
               x_when=(("search.objective", "latency", "latency_ms"),)),),
    "prune_ea")

SPOS = PipelineSpec(
    "spos", "spos/full", "flows/spos.py:spos", SposParams, "params/spos.yaml",
    ("data", "supernet", "search", "rank_check", "retrain", "export"),
    (FrontSpec("evolution on the supernet", "macs", "acc", "search", "search", "search/output.csv"),),
    "spos")

SANAS = PipelineSpec(
    "sanas", "sanas/full", "flows/sanas.py:sanas", SanasParams, "params/sanas.yaml",
    ("data", "latency_table", "search", "train", "export"),
    (FrontSpec("simulated annealing", "macs", "AP50", "search", "search", "search/output.csv",
               x_when=(("constraint.ctype", "latency", "predicted_ms"),)),),
    "sanas")

# Flow name -> entry, in the order users see them listed.
PIPELINES: Mapping[str, PipelineSpec] = MappingProxyType({p.name: p for p in (LCNET, SPNAS, PRUNE_EA, SPOS, SANAS)})
MAIN = SPNAS  # what `spnas demo` runs


def deployments() -> list[str]:
    return [p.deployment for p in PIPELINES.values()]


def by_deployment(deployment: str) -> PipelineSpec:
    """The entry of a deployment name such as "prune-ea/full"; InputError naming the known ones."""
    for spec in PIPELINES.values():
        if spec.deployment == deployment:
            return spec
    raise InputError("deployment", f"unknown deployment {deployment!r}; known: {', '.join(deployments())}")


__all__ = ["FrontSpec", "LCNET", "MAIN", "PIPELINES", "PRUNE_EA", "PipelineSpec", "SANAS", "SPNAS", "SPOS",
           "STAGE_TAG_PREFIX", "by_deployment", "deployments", "stage_from_tags", "stage_tag"]
