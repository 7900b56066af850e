"""prune-ea/full's preflight: what its params point at, checked before any work."""
from __future__ import annotations

from core.errors import InputError
from params.models import PruneEaParams
from tasks.cifar.preflight import check_cifar_data
from tasks.orchestration.preflight import check_run

# The latency check times a 10-class network: the classifier's share of a CIFAR ResNet's time is
# tiny, and the data's real class count is known only after the data stage.
CHECK_CLASSES = 10


def check_latency_limit(depth: int, limit_ms: float | None, predictor_file: str | None = None,
                        num_classes: int = CHECK_CLASSES) -> None:
    """`search.max_latency_ms` below the measured (or predicted) latency of the smallest network of
    the space (one channel per group; ~0.3 s to time) can admit nothing: one clear error before any
    work. A `search.latency_predictor` must cover the space (latency.direct.network_latency)."""
    if limit_ms is None and predictor_file is None:
        return
    from tasks.prune_ea.prune_search import encoding_latency, smallest_encoding  # torch + ORT only when asked

    # A predictor must cover the head the data will give the network (the fc layer's width).
    latency = encoding_latency(depth, num_classes if predictor_file else CHECK_CLASSES, predictor_file)
    smallest = latency(smallest_encoding(depth))
    if limit_ms is not None and limit_ms < smallest:
        raise InputError("search.max_latency_ms", f"{limit_ms:g} ms is below the latency of the smallest "
                                                  f"ResNet-{depth} of the space ({smallest:.3f} ms: one channel per "
                                                  f"group, {latency.source}); no encoding can fit")


def preflight(p: PruneEaParams) -> None:
    """InputError naming the field when the data folder is missing or broken, the latency limit is
    below the smallest network, or the device or output root unusable."""
    check_run(p)
    num_classes = check_cifar_data(p.data)
    check_latency_limit(p.depth, p.search.max_latency_ms, p.search.latency_predictor, num_classes)
