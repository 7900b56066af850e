"""Architecture descriptions (desc_<id>.json) -> torch modules.

A desc is plain data: {"type": ..., <builder arguments>}. Every stage that saves a model also
saves its desc, so the next stage (or a user) rebuilds it without guessing.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from core.errors import InputError


def _lcnet(desc: dict[str, Any]) -> nn.Module:
    from nas_models.lcnet import build_lcnet

    return build_lcnet(desc["scale"], num_classes=desc["num_classes"], dropout=desc.get("dropout", 0.2))


def _detector(desc: dict[str, Any]) -> nn.Module:
    from nas_models.detector import build_detector

    kwargs = {k: v for k, v in desc.items() if k != "type"}
    return build_detector(**kwargs)


def _prune_resnet(desc: dict[str, Any]) -> nn.Module:
    from nas_models.prune_resnet import from_desc

    return from_desc(desc)


def _blazeface(desc: dict[str, Any]) -> nn.Module:
    from nas_models.blazeface import build_from_tokens

    kwargs = {k: v for k, v in desc.items() if k != "type"}
    if "tokens" not in kwargs:
        raise InputError("desc.tokens", "a BlazeFace desc needs its 9 SANAS tokens.")
    return build_from_tokens(**kwargs)


def _spos_subnet(desc: dict[str, Any]) -> nn.Module:
    from nas_models.spos_shufflenet import from_desc

    return from_desc(desc)


BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "PPLCNet": _lcnet,
    "FasterRCNN": _detector,
    "PruneResNet": _prune_resnet,
    "SposSubnet": _spos_subnet,
    "BlazeFace": _blazeface,
}


def build_from_desc(desc: dict[str, Any]) -> nn.Module:
    kind = desc.get("type")
    if kind not in BUILDERS:
        raise InputError("desc.type", f"unknown model type {kind!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[kind](desc)
