"""prune-ea/full's preflight: what its params point at, checked before any work."""
from __future__ import annotations

from params.models import PruneEaParams
from tasks.cifar.preflight import check_cifar_data
from tasks.orchestration.preflight import check_run


def preflight(p: PruneEaParams) -> None:
    """InputError naming the field when the data folder is missing or broken, or the device or
    output root unusable."""
    check_run(p)
    check_cifar_data(p.data)
