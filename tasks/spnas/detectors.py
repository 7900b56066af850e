"""What the SP-NAS stages share (a stage imports another stage only for the result class it
reads): build a detector from the `model` section, its desc, rebuild one from a desc and weights,
measure it, and the optimizer settings a stage trains with. Plain functions over params sections:
no Prefect, no MLflow."""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch

from core.errors import InputError
from engine.detector_fit import DetectorOptim
from core.seeds import derive_seed
from latency.direct import HEAVY_TIMING, FeatureTuple, NetworkLatency, network_latency
from latency.predictor import LatencySpace
from latency.flops import count_macs_params, count_params
from nas_models.detector import build_detector
from nas_models.registry import build_from_desc
from params.models import DetectorModel, DetectorTrainParams
from strategies.serial import SerialSearchConfig, mutate, num_blocks


def detector_desc(model: torch.nn.Module) -> dict[str, Any]:
    """The JSON architecture description saved as desc_<id>.json."""
    return {"type": "FasterRCNN", **model.arch}


def detector_for(model: DetectorModel, num_classes: int, code: str | None = None,
                 neck_code: list[int] | None = None) -> torch.nn.Module:
    """A detector of the run's block, FPN width and image size; `code` defaults to the starting one."""
    return build_detector(code or model.backbone_code, model.block, neck_code=neck_code, num_classes=num_classes,
                          fpn_channels=model.fpn_channels, image_size=model.image_size)


def desc_for(model: DetectorModel, num_classes: int, code: str | None = None,
             neck_code: list[int] | None = None) -> dict[str, Any]:
    return detector_desc(detector_for(model, num_classes, code, neck_code))


def load_detector(desc: dict[str, Any], model_path: str | None = None) -> torch.nn.Module:
    detector = build_from_desc(desc)
    if model_path:
        detector.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    return detector


def optim_from(optimizer: DetectorTrainParams, schedule: str = "constant", lr_scale: float = 1.0) -> DetectorOptim:
    return DetectorOptim(learning_rate=optimizer.learning_rate * lr_scale, momentum=optimizer.momentum,
                         weight_decay=optimizer.weight_decay, batch_size=optimizer.batch_size, schedule=schedule)


def measure(detector: torch.nn.Module, image_size: int) -> dict[str, int]:
    """MACs (FlopCounterMode) and parameters of one image's forward pass, on CPU."""
    detector = detector.cpu()
    macs, params = count_macs_params(detector, [torch.rand(3, image_size, image_size)])
    return {"macs": macs, "params": params}


def limits_of(max_params: int | str | None, max_macs: int | str | None,
              start: Mapping[str, Any], max_latency_ms: float | None = None) -> dict[str, float]:
    """A search stage's resource limits: "start" = the starting network's own figure (`start`:
    fine_tune's performance); `latency_ms` only when a latency limit is set (`latency_of`)."""
    limits: dict[str, float] = {}
    for key, value in (("params", max_params), ("macs", max_macs)):
        if value == "start":
            limits[key] = float(start[key])
        elif value is not None:
            limits[key] = float(value)
    if max_latency_ms is not None:
        limits["latency_ms"] = float(max_latency_ms)
    return limits


def size_limits(limits: Mapping[str, float]) -> dict[str, float]:
    """The params/MACs part of `limits`: what a fully trained detector is compared against (its
    latency is measured at proposal time, not again after training)."""
    return {k: v for k, v in limits.items() if k != "latency_ms"}


def timed_part(detector: torch.nn.Module) -> torch.nn.Module:
    """What a detector's latency limit times: the backbone the searches change — serial body,
    parallel branches and FPN — returning its feature maps. The RPN, RoI heads, resizing and NMS
    are left out: they are the same for every candidate of a run (fixed FPN width and heads) up
    to the proposals they see, and their ONNX export is not reliable (latency.measure.ssd_core
    draws the same line for SSDs)."""
    return FeatureTuple(detector.backbone).eval()


def timed_network(model: DetectorModel, num_classes: int, code: str | None = None
                  ) -> Callable[[Any], tuple[torch.nn.Module, torch.Tensor]]:
    """arch -> (`timed_part` of the detector a proposal describes — a serial code, or a neck code
    on the fixed serial `code` —, one 1x3xSxS image, S = model.image_size)."""

    def build(arch: Any) -> tuple[torch.nn.Module, torch.Tensor]:
        serial, neck = (arch, None) if isinstance(arch, str) else (code, list(arch))
        detector = detector_for(model, num_classes, serial, neck)
        return timed_part(detector), torch.rand(1, 3, model.image_size, model.image_size)

    return build


def latency_of(model: DetectorModel, num_classes: int, code: str | None = None,
               predictor_file: str | None = None, threads: int = 1) -> NetworkLatency:
    """Memoized latency (ms) of `timed_network`: measured here with ONNX Runtime (latency.direct:
    cost per proposal, noise), or predicted by `predictor_file` (serial space only; checked against
    it first)."""
    space = latency_space(model, num_classes) if code is None else None  # predictors serve the serial space
    return network_latency(timed_network(model, num_classes, code), predictor_file, threads, HEAVY_TIMING,
                           space=space, field_name="serial.latency_predictor")


def latency_space(model: DetectorModel, num_classes: int = 2) -> LatencySpace:
    """The SP-NAS serial space around `model.backbone_code` for a latency table and predictor
    (latency.predictor): each architecture is the start code after 1-6 random serial mutations
    (the seed's mutation mix), so the sample covers what a serial search proposes."""
    config = SerialSearchConfig()

    def sample(count: int, seed: int) -> list[str]:
        rng = random.Random(derive_seed(seed, "spnas.latency_space"))
        seen: dict[str, None] = {}
        while len(seen) < count:
            code, _ = mutate(model.backbone_code, rng, rng.randint(1, 6), config.expend_ratio,
                             config.add_stage_ratio, config.max_stages)
            if num_blocks(code) <= config.max_blocks:
                seen.setdefault(code, None)
        return list(seen)

    return LatencySpace(f"spnas-serial-{model.image_size}px", timed_network(model, num_classes), sample,
                        note=f"SP-NAS serial bodies + FPN around {model.backbone_code} at "
                             f"{model.image_size} px (spnas/full's timed part: no RPN/RoI heads)",
                        chunk=20)


def size_gate(model: DetectorModel, num_classes: int, limits: Mapping[str, float],
              code: str | None = None, latency: NetworkLatency | None = None) -> Callable[[Any], bool] | None:
    """`fits(arch)` for a limit-aware search: builds the detector a proposal describes (a serial
    code, or a neck code on the fixed serial `code`) and checks it against `limits` before any
    training: parameters first (no forward pass), MACs only when a MACs limit is set and the
    parameters fit, measured latency (`limits["latency_ms"]`, timed by `latency`, default
    `latency_of(model, num_classes, code)`) last, only when the rest fit. None without limits
    (every proposal fits). Answers are remembered, so a search and its random control never
    build, size or time the same network twice."""
    if not limits:
        return None
    answers: dict[Any, bool] = {}
    if "latency_ms" in limits and latency is None:
        latency = latency_of(model, num_classes, code)

    def measured(arch: Any) -> bool:
        serial, neck = (arch, None) if isinstance(arch, str) else (code, list(arch))
        detector = detector_for(model, num_classes, serial, neck)
        if "params" in limits and count_params(detector) > limits["params"]:
            return False
        if "macs" in limits and measure(detector, model.image_size)["macs"] > limits["macs"]:
            return False
        return latency is None or "latency_ms" not in limits or latency(arch) <= limits["latency_ms"]

    def fits(arch: Any) -> bool:
        key = arch if isinstance(arch, str) else tuple(arch)
        if key not in answers:
            answers[key] = measured(arch)
        return answers[key]

    return fits


def check_latency_met(strategy: Any, limits: Mapping[str, float], field: str) -> None:
    """With a latency limit (`limits["latency_ms"]`), one clear error naming `field` when no
    successfully trained candidate was measured within it (the initial network is trained whatever
    its latency; every other proposal over it was skipped), instead of choosing over the limit."""
    limit = limits.get("latency_ms")
    if limit is None or strategy.within({"latency_ms": limit}):
        return
    told = [float(m["latency_ms"]) for _, m in strategy.history if m is not None and "latency_ms" in m]
    fastest = f"; the fastest trained one measured {min(told):.3f} ms" if told else ""
    raise InputError(field, f"no trained candidate was within {limit:g} ms{fastest} ({strategy.skipped} "
                            "proposal(s) over the limits skipped); raise the limit")
