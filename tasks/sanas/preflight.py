"""sanas/full's preflight: what its params point at, checked before any work — the WIDER FACE
files, a given latency table, and the constraint window against the search space itself."""
from __future__ import annotations

from functools import lru_cache

from core.errors import InputError
from data.faces import read_wider_face
from latency.measure import space_ops, tokens_cost
from latency.table import LatencyTable
from nas_models.blazeface import RANGE_TABLE, build_from_tokens, ops_of_model
from params.feasibility import check_range
from params.models import FaceData, LatencyParams, SanasConstraint, SanasParams
from tasks.orchestration.preflight import at, check_run, existing_dir, existing_file
from tasks.sanas.shared import latency_range


def check_faces(data: FaceData) -> None:
    """The four WIDER FACE paths exist and each annotation file parses (naming file and line)."""
    for split in ("train", "val"):  # field order
        existing_file(getattr(data, f"{split}_annotations"), f"data.{split}_annotations",
                      "a WIDER FACE bbx_gt annotation file, or null")
        existing_dir(getattr(data, f"{split}_images"), f"data.{split}_images",
                     "the WIDER FACE images folder, or null for the embedded set")
    if data.train_annotations is None:  # the model makes sure all four are given together
        return
    for split in ("train", "val"):
        try:
            read_wider_face(getattr(data, f"{split}_annotations"), getattr(data, f"{split}_images"))
        except InputError as exc:  # it names the file; the user knows the field
            raise InputError(f"data.{split}_annotations", str(exc)) from None


def check_table_file(latency: LatencyParams) -> None:
    existing_file(latency.table_file, "latency.table_file", "a latency table file, or null to measure one here")
    if latency.table_file is not None:
        with at("latency.table_file", latency.table_file):
            LatencyTable.read(latency.table_file)  # a malformed line fails here, naming the file and line


def _extreme_tokens() -> tuple[list[int], list[int]]:
    """The fewest- and the most-MACs BlazeFace of the SANAS space: every token at its first or
    last value (each value list grows, and token 8 adds 5x5 kernels, so MACs are monotone in
    every token; latency is not: see tasks/sanas/shared.latency_range)."""
    return [0] * len(RANGE_TABLE), [r - 1 for r in RANGE_TABLE]


@lru_cache(maxsize=4)
def sanas_macs_range(image_size: int) -> tuple[int, int]:
    low, high = _extreme_tokens()
    return tokens_cost(low, image_size)["macs"], tokens_cost(high, image_size)["macs"]


def check_sanas(constraint: SanasConstraint, table_file: str | None, image_size: int) -> None:
    """FLOPs mode: the [min, max] window against the space's MACs range. Latency mode with a
    given table: the table holds every op the space can run, and the window meets the table's
    latency range. (A table measured here is checked when it is built, in the latency_table
    stage.) InputError naming constraint.min/max or latency.table_file."""
    high = None if constraint.max == "start" else constraint.max
    with at(""):  # check_range names its field in a ValueError
        if constraint.ctype == "flops":
            check_range("MACs", constraint.min, high, sanas_macs_range(image_size), "MACs")
            return
        if table_file is None:
            return
        table = LatencyTable.read(table_file)
        missing = table.missing(space_ops(image_size=image_size))
        if missing:
            raise InputError("latency.table_file", f"{table_file} lacks {len(missing)} op(s) the search space runs "
                                                   f"at {image_size} px, e.g. {missing[0]}; measure a table here "
                                                   "(leave table_file empty) or add them")
        feasible = latency_range(lambda t: table.sum(ops_of_model(build_from_tokens(t, image_size=image_size).eval())))
        check_range("latency", constraint.min, high, feasible, "ms")  # type: ignore[arg-type]


def preflight(p: SanasParams) -> None:
    """InputError naming the field when a data or table file is missing or malformed, the
    constraint window misses every architecture, or the device or output root is unusable."""
    check_run(p)
    check_faces(p.data)
    check_table_file(p.latency)
    check_sanas(p.constraint, p.latency.table_file, p.image_size)
