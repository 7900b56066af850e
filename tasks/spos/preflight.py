"""spos/full's preflight: what its params point at, checked before any work — the data folder,
and the MACs limit and range against the choice space itself (a per-op table, built once)."""
from __future__ import annotations

from functools import lru_cache

from core.errors import InputError
from latency.macs_table import MacsTable, build_macs_table
from nas_models.spos_shufflenet import get_preset
from params.models import SposParams
from strategies.path_sampler import FlopsBinSampler
from tasks.cifar.preflight import check_cifar_data
from tasks.orchestration.preflight import at, check_run

# The check uses 10 classes: the classifier's share of a path's MACs (last width x classes) is
# tiny; the search stage re-checks against the data's real class count.
CHECK_CLASSES = 10


@lru_cache(maxsize=4)
def _table(preset: str) -> MacsTable:
    return build_macs_table(preset, CHECK_CLASSES)


def check_spos_macs(preset: str, macs_limit: int | None, macs_range: tuple[int, int] | None, bins: int) -> None:
    """InputError naming search.macs_limit / supernet.macs_range when no path can meet them."""
    table = _table(preset)
    if macs_limit is not None and macs_limit < table.min_macs():
        raise InputError("search.macs_limit", f"{macs_limit} is below the smallest path of the {preset!r} space "
                                              f"({table.min_macs()} MACs; the largest has {table.max_macs()})")
    if macs_range is not None:
        FlopsBinSampler(table.per_block, table.fixed_macs, macs_range[0], macs_range[1], bins,
                        field="supernet.macs_range")


def check_spos_latency(preset: str, limit_ms: float | None, predictor_file: str | None = None,
                       num_classes: int = CHECK_CLASSES) -> None:
    """InputError naming search.max_latency_ms when it is below the measured latency of both of
    the space's cheapest paths: the fewest-MACs one and the all-shufflenet-3x3 one (~1 s to time
    both). Their figures differ by a few percent (the fewest-MACs path takes xception at the
    stride-2 blocks); a path faster than both is not impossible, so this catches a limit clearly
    below the space, and the search stage errors when no path it draws fits. With
    `search.latency_predictor`, its predicted figures (the predictor must cover the space)."""
    if limit_ms is None:  # without a limit the search never asks for a path's latency
        return
    from tasks.spos.search import path_latency  # torch + ORT only when asked

    table = _table(preset)
    # A predictor must cover the head the data will give the network (the fc layer's width).
    gate = path_latency(preset, num_classes if predictor_file else CHECK_CLASSES, predictor_file)
    fewest_macs, all_3x3 = gate(table.min_path()), gate([0] * table.n_blocks)
    if limit_ms < min(fewest_macs, all_3x3):
        raise InputError("search.max_latency_ms", f"{limit_ms:g} ms is below the latency of the cheapest "
                                                  f"paths of the {preset!r} space (fewest MACs {fewest_macs:.3f} ms, "
                                                  f"all 3x3 {all_3x3:.3f} ms; {gate.source}); no path "
                                                  "can fit")


def preflight(p: SposParams) -> None:
    """InputError naming the field when the data folder is missing or broken, the preset unknown,
    no path meets the MACs limit or range or the latency limit, or the device or output root is
    unusable."""
    check_run(p)
    num_classes = check_cifar_data(p.data)
    with at("model.preset", p.model.preset):
        get_preset(p.model.preset)  # unknown names fail with the list of known ones
    check_spos_macs(p.model.preset, p.search.macs_limit, p.supernet.macs_range, p.supernet.bins)
    check_spos_latency(p.model.preset, p.search.max_latency_ms, p.search.latency_predictor, num_classes)
