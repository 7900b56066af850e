"""What the spos/full stages share (no stage imports another stage): the MACs table of the
choice space, the trained supernet, and scoring a path with supernet weights. Plain functions:
no Prefect, no MLflow."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from engine.supernet import recalibrate_bn, score_subnet
from latency.macs_table import MacsTable, build_or_load
from nas_models.spos_shufflenet import build_supernet, subnet_from_supernet
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import loaders

MACS_TABLE = "macs_table.json"


def macs_table(preset: str, num_classes: int, folder: Path) -> MacsTable:
    """The per-op MACs/params table of the space, built once into `folder` and reused."""
    return build_or_load(folder / MACS_TABLE, preset, num_classes)


@lru_cache(maxsize=2)
def _supernet_state(path: str) -> dict[str, torch.Tensor]:
    # Every candidate of a search reads the same (read-only) weights: load them once per process.
    return torch.load(path, map_location="cpu", weights_only=True)


def load_supernet(preset: str, num_classes: int, model_path: str) -> torch.nn.Module:
    model = build_supernet(preset, num_classes=num_classes)
    model.load_state_dict(_supernet_state(model_path))
    return model.eval()


def supernet_score(supernet: torch.nn.Module, choices: list[int], data: CifarSplit, recalib_batches: int,
                   batch_size: int, seed: int, convention: str, device: torch.device) -> float:
    """Val top-1 of a path with the weights of `supernet` (TrainedSupernet.load()). Every
    candidate recalibrates on the same training batches (same seed), so their scores differ
    only by architecture."""
    subnet = subnet_from_supernet(supernet, choices)
    train, val, _ = loaders(data, batch_size, seed, convention)
    return score_subnet(subnet, train, recalib_batches, val, device)


def supernet_path(supernet: torch.nn.Module, choices: list[int], data: CifarSplit, recalib_batches: int,
                  batch_size: int, seed: int, convention: str, device: torch.device) -> torch.nn.Module:
    """The path as a stand-alone net with the supernet's weights, its BN recalibrated on the same
    training batches supernet_score uses (0 = the supernet's statistics), in eval mode."""
    subnet = subnet_from_supernet(supernet, choices)
    train, _, _ = loaders(data, batch_size, seed, convention)
    recalibrate_bn(subnet, train, recalib_batches, device)
    return subnet.eval()
