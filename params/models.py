"""Pydantic models of every deployment's parameters — the one place their defaults live.

A pipeline's parameters are grouped into sections, one per stage (or per concern several stages
share: `data`, `model`, `optimizer`). A stage task receives exactly the sections it reads, so its
cache key covers only those: changing `fully_train.epochs` leaves every earlier stage cached.

`params/<flow>.yaml` files hold only what a deployment changes from these defaults (the demo
files hold nothing); `spnas check-params <deployment>` prints every value a run would use.

The models check shapes only: types, ranges and fields that must agree. What the values point
at (files, weights that must fit a network, a search space a limit must meet, the device) is
checked by each pipeline's preflight (tasks/<pipeline>/preflight.py), which the flow and the
CLI run right after loading the params, before any work.
"""
from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DASK_ADDRESS = re.compile(r"^(tcp|tls|ucx|ws|wss)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
KeepWeights = Literal["auto", "all", "pareto", "best"]


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_accepts_bool(a) for a in typing.get_args(annotation))
    return False


class Section(BaseModel):
    """Frozen, no unknown keys, no NaN/inf, and `true` is not a number (pydantic would make it 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _accepts_bool(field.annotation):
            numeric = any(t in (int, float) for t in (field.annotation, *typing.get_args(field.annotation)))
            raise ValueError(f"must be {'a number' if numeric else 'text'}, not true/false")
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("must be a number, not NaN")
        return value


def _resolved(value: str | None) -> str | None:
    """Absolute paths: the worker runs in another directory than the user's shell."""
    return None if value is None else str(Path(value).expanduser().resolve())


# ----------------------------------------------------------------------- shared by all pipelines

# Every number a user sets has a range (tests/test_params.py walks the models to hold that): an
# unbounded budget or seed would pass the check and fail — or run for days — after stages ran.
SEED_MAX = 2**32 - 1          # numpy's and torch's generators all take it
STEPS_MAX = 10_000_000        # training steps of one thing
SIZE_LIMIT_MAX = 10**15       # params / MACs limits
LATENCY_LIMIT_MAX = 1e6       # ms: a measured-latency limit (max_latency_ms) of one network
SizeLimit = Annotated[int, Field(ge=0, le=SIZE_LIMIT_MAX)]
Channel = Annotated[float, Field(ge=-1000, le=1000)]  # a per-channel mean or std of pixel values


class RunParams(Section):
    """Fields every pipeline has. `device` and `num_threads` say where a stage runs, not what it
    computes, so they are not part of any stage's cache key."""

    seed: int = Field(0, ge=0, le=SEED_MAX, description="every random choice (split, init, sampling) derives from it")
    output_root: str | None = Field(None, description="outputs go to <output_root>/<flow-run-name>/; null = .spnas/outputs")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (auto = CUDA when present)")
    num_threads: int | None = Field(None, ge=1, le=256, description="torch threads; null = all cores")
    # Where a search stage's candidates run (spnas serial + parallel, prune-ea prune_search, spos search,
    # sanas search; lcnet/full has no search stage, so it ignores both). Like device, not in any cache key.
    candidate_workers: int = Field(1, ge=1, le=256, description="search candidates trained at once (threads; cores "
                                                                 "are shared); lcnet/full has no search stage")
    dask_address: str | None = Field(
        None, description="tcp://host:port of a running Dask scheduler to evaluate search candidates on (its workers "
                          "need this project and read data and weights by path: use shared storage; set num_threads "
                          "to each worker's cores); checked to answer before any work; lcnet/full has no search "
                          "stage")

    @field_validator("dask_address")
    @classmethod
    def _dask(cls, v: str | None) -> str | None:
        if v is not None and not DASK_ADDRESS.match(v):
            raise ValueError("must be a scheduler address like tcp://10.0.0.5:8786 (tcp, tls, ucx, ws or wss), or null")
        return v

    @field_validator("output_root")
    @classmethod
    def _output_root(cls, v: str | None) -> str | None:
        return _resolved(v)


class Runtime(Section):
    """Where stages run (handed to every task, never part of a cache key)."""

    device: str = "auto"
    num_threads: int | None = None


def runtime_of(p: RunParams) -> Runtime:
    return Runtime(device=p.device, num_threads=p.num_threads)


class SplitRatios(Section):
    """PaddleX `split_dataset --format ImageNet` ratios."""

    val_value: float = Field(0.2, gt=0, lt=1)
    test_value: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _ratios_sum(self):
        if self.val_value + self.test_value >= 1:
            raise ValueError(f"test_value: val_value + test_value must be below 1 (got {self.val_value} + {self.test_value})")
        return self


# ----------------------------------------------------------------------------------- lcnet/full


class LcnetData(SplitRatios):
    dataset_dir: str | None = Field(
        None, description="ImageNet-format folder (one sub-folder of images per class); null = embedded digits")

    @field_validator("dataset_dir")
    @classmethod
    def _dataset_dir(cls, v: str | None) -> str | None:
        return _resolved(v)


class LcnetModel(Section):
    """The network and the preprocessing the exported model carries."""

    scale: Literal[0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5] = 1.0
    input_size: int = Field(32, ge=16, le=1024)
    resize_short: int | None = Field(None, ge=16, le=2048, description="null = input_size")
    mean: tuple[Channel, Channel, Channel] = IMAGENET_MEAN
    std: tuple[Channel, Channel, Channel] = IMAGENET_STD
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrained_weights: str | None = Field(None, description="a state_dict .pth; tensors whose name+shape match are loaded")

    @field_validator("pretrained_weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return _resolved(v)

    @model_validator(mode="after")
    def _sizes(self):
        if self.resize_short is not None and self.resize_short < self.input_size:
            raise ValueError(f"resize_short: must be at least input_size ({self.input_size})")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std: every value must be positive (got {list(self.std)})")
        return self


class EpochTraining(Section):
    """An epoch-based training section (it declares `epochs` and `warmup_epochs`): its warm-up
    fits inside its epochs."""

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs: must be at most epochs ({self.epochs}), got {self.warmup_epochs}")
        return self


class LcnetTrain(EpochTraining):
    epochs: int = Field(12, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0, lt=1)
    warmup_epochs: int = Field(1, ge=0, le=10_000, description="at most epochs")
    topk: int = Field(5, ge=1, le=1000, description="top-k accuracy reported beside top-1")


class LcnetPredict(Section):
    count: int = Field(8, ge=1, le=100_000, description="test images the predict stage runs through the exported model")
    warmup: int = Field(5, ge=0, le=100_000, description="warm-up iterations before timing")
    repeats: int = Field(20, ge=1, le=100_000, description="timed passes over the predict images")
    topk: int = Field(5, ge=1, le=1000)


class ClassifierExportParams(Section):
    """The export stage of the classifier pipelines (lcnet, prune-ea, spos)."""

    quantize: bool = Field(True, description="also write a static int8 twin (ONNX Runtime QDQ, calibrated on training "
                                             "images) as inference_model_int8/, scored and timed beside the float "
                                             "model; a graph ORT cannot quantize keeps the float model only")
    calibration_images: int = Field(32, ge=1, le=10_000, description="training images that calibrate the int8 "
                                                                       "activation ranges")


class LcnetParams(RunParams):
    data: LcnetData = LcnetData()
    model: LcnetModel = LcnetModel()
    train: LcnetTrain = LcnetTrain()
    export: ClassifierExportParams = ClassifierExportParams()
    predict: LcnetPredict = LcnetPredict()


# ----------------------------------------------------------------------------------- spnas/full


class SpnasData(SplitRatios):
    """Detection data (COCO instances files; null = the embedded digit canvases) and the
    classification data reignite trains on."""

    train_images: str | None = None
    train_json: str | None = None
    val_images: str | None = None
    val_json: str | None = None
    num_train_images: int = Field(600, ge=10, le=100_000, description="embedded set only: training canvases")
    num_val_images: int = Field(150, ge=5, le=100_000, description="embedded set only: held-out canvases (held-out digits)")
    search_val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training images that scores candidates")
    classification_dir: str | None = Field(
        None, description="ImageNet-format folder for reignite; null = crops of your train_json boxes "
                          "(or the embedded digits when you give no COCO files)")
    crop_min_size: int = Field(16, ge=4, le=4096, description="reignite crops: smallest box side kept (px)")

    @field_validator("train_images", "train_json", "val_images", "val_json", "classification_dir")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _resolved(v)

    @model_validator(mode="after")
    def _coco(self):
        for images, ann in (("train_images", "train_json"), ("val_images", "val_json")):
            if (getattr(self, images) is None) != (getattr(self, ann) is None):
                raise ValueError(f"{ann}: give both {images} and {ann}, or neither (embedded digits)")
        if (self.train_json is None) != (self.val_json is None):
            raise ValueError("val_json: give your own train and val sets together, or neither")
        return self


class DetectorModel(Section):
    """The starting detector: serial backbone code and block, FPN width, image size."""

    backbone_code: str = Field("11-21-21-21", description="ResNet-18; see README for the code grammar")
    block: Literal["BasicBlock", "Bottleneck", "ResNeXt"] = "BasicBlock"
    pretrained_weights: str | None = Field(None, description="torchvision ResNet or fasterrcnn_resnet50_fpn state_dict")
    image_size: int = Field(96, ge=32, le=2048)
    fpn_channels: int = Field(64, ge=8, le=1024)

    @field_validator("pretrained_weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return _resolved(v)


class DetectorTrainParams(Section):
    """SGD for the detector (torchvision reference recipe, sized for CPU), and how candidates are scored."""

    learning_rate: float = Field(0.02, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, le=512)
    eval_max_images: int | None = Field(None, ge=1, le=10_000_000, description="cap on scoring images per candidate (null = all)")


class FineTuneParams(Section):
    epochs: int = Field(3, ge=0, le=10_000)


class SearchControl(Section):
    """What every search stage shares: `random` also evaluates a same-size random sample of the
    stage's space (same evaluator, limits and training budget; never chosen) and reports search
    vs control. It costs as many trainings again as the search."""

    control: Literal["none", "random"] = Field(
        "none", description="none | random: also run a same-budget random control and report search vs control")


class LatencySource(Section):
    """Where a search's latency figures (its `max_latency_ms` limit, its `latency` objective) come
    from: measured here, or predicted for another device from a table and predictor fitted there."""

    latency_predictor: str | None = Field(
        None, description="a latency predictor JSON (its table beside it), fitted on the device you deploy to "
                          "with `benchmarks/latency_predictor.py --space <space>`: latency figures are then that "
                          "device's predicted ms (no timing here); null = each proposal measured here with ONNX "
                          "Runtime, 1 thread")

    @field_validator("latency_predictor")
    @classmethod
    def _predictor(cls, v: str | None) -> str | None:
        v = _resolved(v)
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no file at {v}")
        return v

    @model_validator(mode="after")
    def _used(self):
        # A predictor serves a latency limit or a latency objective; alone it would do nothing.
        if self.latency_predictor is not None and getattr(self, "max_latency_ms", None) is None \
                and getattr(self, "objective", None) != "latency":
            raise ValueError("latency_predictor: is only used with max_latency_ms (or objective: latency); "
                             "set one of them or leave latency_predictor null")
        return self


class FidelityParams(Section):
    """Multi-fidelity screening (successive halving, ASHA-style): every candidate first trains
    min_steps; the best 1/eta of those that finished a rung continue from their own checkpoint to
    eta times the steps, up to max_steps (each candidate's full budget)."""

    min_steps: int = Field(..., ge=1, le=STEPS_MAX, description="training steps of every candidate (the first rung)")
    max_steps: int = Field(..., ge=1, le=STEPS_MAX, description="steps of the last rung: a candidate's full budget")
    eta: int = Field(..., ge=2, le=10, description="1/eta of each rung go up; each rung trains eta times longer")

    @model_validator(mode="after")
    def _order(self):
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps: must be at least min_steps ({self.min_steps}), got {self.max_steps}")
        return self


class MultiFidelity(Section):
    """A search section whose candidates may be screened with a fidelity. With one, its
    max_steps is the candidates' full budget, so the section's own steps field (`_STEPS`) may be
    left out or must say the same."""

    _STEPS: ClassVar[str] = "candidate_steps"

    fidelity: FidelityParams | None = Field(
        None, description="{min_steps, max_steps, eta}: successive halving; null = every candidate trains its "
                          "full steps")

    @model_validator(mode="after")
    def _one_budget(self):
        steps = getattr(self, self._STEPS)
        if self.fidelity is not None and self._STEPS in self.model_fields_set and steps != self.fidelity.max_steps:
            raise ValueError(f"{self._STEPS}: is {steps} but fidelity.max_steps is {self.fidelity.max_steps}; set one "
                             f"of them (with a fidelity, max_steps is each candidate's full training)")
        return self

    @property
    def full_steps(self) -> int:
        """Each candidate's full training steps: fidelity.max_steps with a fidelity, else the
        section's own steps field."""
        return self.fidelity.max_steps if self.fidelity is not None else getattr(self, self._STEPS)


def search_sections(model: type[BaseModel]) -> list[str]:
    """The sections of a pipeline's params model that configure a search (they take `control`)."""
    return [name for name, f in model.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, SearchControl)]


# An SP-NAS search's cost objective; "latency" is the measured figure (column latency_ms).
SpnasCost = Literal["params", "macs", "latency"]


class ResourceLimit(SearchControl):
    """Vega: "the best network under a given resource limit". "start" = the starting network's
    own figure (the default: a better detector at no greater size); null = no limit.
    max_latency_ms: the measured ONNX Runtime latency (1 thread, batch 1) of the part the search
    changes — serial body + parallel branches + FPN on a 1x3xSxS image, S = model.image_size —
    checked at proposal time (latency/direct.py: cost, noise).
    objective: the cost the search's Pareto front (its parents, and the hypervolume against a
    random control) weighs against mAP — Vega's params (serial) or MACs (parallel), or that
    measured latency, timed for every proposal before it is trained."""

    max_params: Annotated[int, Field(ge=1, le=SIZE_LIMIT_MAX)] | Literal["start"] | None = "start"
    max_macs: Annotated[int, Field(ge=1, le=SIZE_LIMIT_MAX)] | Literal["start"] | None = "start"
    max_latency_ms: float | None = Field(
        None, gt=0, le=LATENCY_LIMIT_MAX, description="measured backbone+FPN latency limit (ms, ONNX Runtime, "
                                                      "1 thread); over it a proposal is skipped untrained; null = none")
    keep_weights: KeepWeights = Field(
        "auto", description="which candidates keep model_<id>.pth after the search: all | pareto | best; "
                            "auto = all up to 100 candidates, pareto above")


class SerialSearchParams(ResourceLimit, LatencySource, MultiFidelity):
    """SpNasS (Vega names). The seed's values are in params/spnas_seed.yaml."""

    objective: SpnasCost = Field("params", description="the cost weighed against mAP on the front: params | macs | "
                                                       "latency (measured backbone+FPN ms, ~0.9 s per proposal)")

    max_sample: int = Field(8, ge=1, le=10_000)
    max_optimal: int = Field(5, ge=1, le=10_000)
    num_mutate: int = Field(3, ge=1, le=20)
    add_stage_ratio: float = Field(0.15, ge=0, le=1)
    expend_ratio: float = Field(0.3, ge=0, le=1)
    max_stages: int = Field(6, ge=1, le=6)
    batch: int = Field(2, ge=1, le=64, description="candidates proposed (and trained via .map) per round")
    candidate_steps: int = Field(40, ge=1, le=STEPS_MAX, description="training steps per candidate on inherited weights")
    freeze_inherited: bool = Field(False, description="Vega's freeze_swap_keys: freeze fully inherited blocks")


class ReigniteParams(Section):
    rounds: int = Field(1, ge=0, le=2, description="classification re-trainings of the chosen backbone (seed: at most 2)")
    epochs: int = Field(2, ge=1, le=10_000)
    input_size: int = Field(64, ge=32, le=1024)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(0.05, gt=0, le=10)
    detector_steps: int = Field(30, ge=0, le=STEPS_MAX, description="detector steps after mapping the reignited weights back")


class ParallelSearchParams(ResourceLimit, MultiFidelity):
    objective: SpnasCost = Field("macs", description="the cost weighed against mAP on the front: params | macs | "
                                                     "latency (measured backbone+FPN ms, ~0.9 s per proposal)")
    max_sample: int = Field(3, ge=0, le=1000)
    max_per_stage: int = Field(2, ge=1, le=8)
    max_additions: int = Field(3, ge=1, le=32)
    batch: int = Field(2, ge=1, le=64)
    candidate_steps: int = Field(40, ge=1, le=STEPS_MAX)


class FullyTrainParams(Section):
    epochs: int = Field(3, ge=1, le=10_000)
    baseline: bool = Field(True, description="also fully train the starting architecture with the same budget")


class DetectorExportParams(Section):
    num_images: int = Field(4, ge=1, le=1000, description="held-out images for parity checks and drawn predictions")
    quantize: bool = Field(True, description="also write a static int8 twin (ONNX Runtime QDQ; Conv/Gemm int8, resize, "
                                             "box decoding and NMS float) as inference_model_int8/ and report its "
                                             "held-out mAP and latency beside the float model's (adds ~6 s at the "
                                             "defaults: quantizing ~2-3 s, scoring both models ~3 s); a graph ORT "
                                             "cannot quantize keeps the float model only")
    calibration_images: int = Field(8, ge=1, le=10_000, description="training images that calibrate the int8 "
                                                                      "activation ranges (~0.5 s each on 2 cores)")
    int8_eval_images: int = Field(32, ge=1, le=100_000, description="held-out images both ONNX models are scored "
                                                                      "on (mAP) for the int8 delta")


class SpnasParams(RunParams):
    """spnas/full."""

    data: SpnasData = SpnasData()
    model: DetectorModel = DetectorModel()
    optimizer: DetectorTrainParams = DetectorTrainParams()
    fine_tune: FineTuneParams = FineTuneParams()
    serial: SerialSearchParams = SerialSearchParams()
    reignite: ReigniteParams = ReigniteParams()
    parallel: ParallelSearchParams = ParallelSearchParams()
    fully_train: FullyTrainParams = FullyTrainParams()
    export: DetectorExportParams = DetectorExportParams()


# -------------------------------------------------------------------------------- prune-ea/full


class CifarData(Section):
    """CIFAR-10 (python `cifar-10-batches-py` folder) or an ImageNet-format folder; null = the
    embedded digits as a 32x32 CIFAR-like set."""

    dataset_dir: str | None = Field(None, description="cifar-10-batches-py folder or ImageNet-format folder; "
                                                      "null = embedded digits")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the training images that scores candidates")
    embedded: Literal["digits", "photo_digits"] = Field(
        "digits", description="the embedded set when dataset_dir is null: digits (plain, saturates near 0.95+) or "
                              "photo_digits (the same digits at random size, place and contrast on photo patches)")

    @field_validator("dataset_dir")
    @classmethod
    def _dataset_dir(cls, v: str | None) -> str | None:
        return _resolved(v)


class ClassifierTrain(EpochTraining):
    """SGD with cosine decay for the CIFAR ResNets (base training and retraining)."""

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)
    warmup_epochs: int = Field(0, ge=0, le=10_000, description="at most epochs")


class PruneSearchParams(SearchControl, LatencySource, MultiFidelity):
    """NSGA-III over channel masks (Vega PruneEA names). The seed's values are in
    params/prune_ea_seed.yaml (31 generations of 32, 64 random models)."""

    _STEPS: ClassVar[str] = "finetune_steps"

    num_generation: int = Field(6, ge=1, le=10_000)
    num_individual: int = Field(8, ge=1, le=10_000)
    random_models: int = Field(16, ge=1, le=100_000)
    finetune_steps: int = Field(40, ge=0, le=100_000, description="fine-tune steps per candidate on inherited weights")
    finetune_lr: float = Field(0.01, gt=0, le=10)
    bn_recalibration_batches: int = Field(
        8, ge=0, le=10_000, description="training batches that re-estimate BatchNorm statistics of each pruned "
                                        "candidate before its fine-tune (0 = keep the base model's statistics)")
    with_params: bool = Field(False, description="also minimise parameters (a third objective)")
    mutation: Literal["segment", "bitflip", "resample"] = Field(
        "resample", description="segment = Vega's: flip every bit between two random cut points; bitflip = pymoo's "
                               "independent flips (about one bit per offspring), so offspring stay near the "
                               "crossover of their parents; resample = redraw every bit between two random cut "
                               "points at the parent's own keep rate, so offspring keep their parent's density (the "
                               "default: ahead of segment on both measured seeds, by 0.6 and 1.7 points of "
                               "hypervolume against a random-channels control)")
    channels: Literal["norm", "random"] = Field(
        "norm", description="which channels of a group NSGA-III's candidates keep: norm = the ones with the largest "
                            "filter norms in the base model (as many as the encoding keeps in that group; the "
                            "search then decides how many per group), random = the encoding's own bits (Vega's). "
                            "The random control keeps channels by the same rule")
    objective: Literal["macs", "latency"] = Field(
        "macs", description="the cost NSGA-III minimises beside 1 - accuracy: macs | latency (each encoding's "
                            "measured ONNX Runtime ms, 1 thread, one 32x32 image, timed before it is trained)")
    max_latency_ms: float | None = Field(
        None, gt=0, le=LATENCY_LIMIT_MAX, description="measured latency limit of a pruned network (ms, ONNX Runtime, "
                                                      "1 thread, one 32x32 image); over it an encoding is never "
                                                      "trained; null = none")
    keep_weights: KeepWeights = "auto"

    @model_validator(mode="after")
    def _population(self):
        if self.random_models < self.num_individual:
            raise ValueError(f"random_models: must be at least num_individual ({self.num_individual})")
        return self


class PruneEaData(CifarData):
    """prune-ea/full's data: by default the embedded digits on photo patches, where ResNet-20 does
    not saturate and pruning costs accuracy (on the plain digits any search owns the front)."""

    embedded: Literal["digits", "photo_digits"] = Field(
        "photo_digits", description=CifarData.model_fields["embedded"].description)


class PruneTrain(ClassifierTrain):
    """prune-ea's from-scratch trainings (base and retrain): one epoch of learning-rate warm-up by
    default. Without it ResNet-20 on photo_digits sat at chance for 5 of its 10 epochs at seed 0 on
    one machine (test top-1 0.64; 0.89 with the warm-up, and 0.91 / 0.88 at seeds 1 / 2)."""

    warmup_epochs: int = Field(1, ge=0, le=10_000, description="epochs of linear learning-rate warm-up, at most "
                                                               "epochs")


class PruneRetrainParams(PruneTrain):
    count: int = Field(2, ge=1, le=100, description="front members retrained, spread along the front")
    init: Literal["pruned", "scratch"] = Field(
        "pruned", description="what a member's training starts from: pruned = the base model's kept weights (prune, "
                              "then train; a 16 %-MACs member scored 0.897 test top-1 after the default 10 epochs), "
                              "scratch = random initialisation (Vega's; the same member scored 0.286)")
    min_share: float = Field(0.5, ge=0, le=1, description="only members whose search accuracy is at least this share "
                                                          "of the way from chance to the front's best (0 = any above "
                                                          "the chance floor, 1.5 / classes)")


class PruneEaParams(RunParams):
    depth: Literal[20, 32, 56] = Field(20, description="CIFAR ResNet depth (encoding length 464 / 688 / 1136)")
    data: PruneEaData = PruneEaData()
    base: PruneTrain = PruneTrain()
    search: PruneSearchParams = PruneSearchParams()
    retrain: PruneRetrainParams = PruneRetrainParams()
    export: ClassifierExportParams = ClassifierExportParams()


# ------------------------------------------------------------------------------------ spos/full


class SposModel(Section):
    """The ShuffleNetV2 choice space (nas_models/spos_shufflenet.py): 20 choice blocks of
    shufflenet 3x3 / 5x5 / 7x7 / xception. Presets fix widths and input size."""

    preset: str = Field("small", description="small (32 px, trains in minutes on 2 CPU cores) | paper (224 px, "
                                             "stem 16, 64/160/320/640, last conv 1024)")
    input_convention: Literal["rgb", "bgr255"] = Field(
        "rgb", description="rgb = RGB normalised with the data's mean/std; bgr255 = BGR in [0, 255] as the "
                           "original SPOS release (recorded in model.yml, applied by the predictor)")


class SupernetWarmStart(Section):
    """Before the uniform phase: train the all-3x3 path, fit each xception branch to it
    (block-local), copy it into the 5x5/7x7 choices (engine/supernet.py says why)."""

    reference_steps: int = Field(150, ge=1, le=10_000_000, description="steps of the all-3x3 reference path")
    align_steps: int = Field(100, ge=0, le=10_000_000, description="steps fitting the xception branches "
                                                                   "to the reference (0 = skip)")
    align_lr: float = Field(3e-3, gt=0, le=1, description="Adam's learning rate for that fit")


class SupernetTrain(Section):
    """Single-path supernet training: one path per batch, SGD with cosine decay over `steps`
    (after the warm start's own steps)."""

    steps: int = Field(600, ge=1, le=10_000_000, description="uniform-phase steps (after the warm start)")
    warm_start: SupernetWarmStart | None = Field(
        SupernetWarmStart(), description="null = the paper's recipe (uniform from random initialisation)")
    batch_size: int = Field(64, ge=2, le=4096)
    learning_rate: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0, lt=1)
    macs_range: tuple[SizeLimit, SizeLimit] | None = Field(
        None, description="[low, high] MACs: sample paths uniformly over `bins` MACs bins inside it, then "
                          "uniformly inside the bin; null = every path uniformly")
    bins: int = Field(5, ge=1, le=1000)

    @field_validator("macs_range")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"must be [low, high] with 0 <= low < high, got {list(v)}")
        return v


class EvolutionParams(SearchControl, LatencySource):
    """SPOS evolution (seed values in params/spos_seed.yaml: 50, 10, 25 + 25, p 0.1, 20 generations)."""

    population: int = Field(12, ge=2, le=100_000)
    topk: int = Field(4, ge=1, le=100_000)
    mutation_count: int = Field(6, ge=0, le=100_000)
    mutation_prob: float = Field(0.1, gt=0, le=1)
    crossover_count: int = Field(6, ge=0, le=100_000)
    generations: int = Field(4, ge=1, le=10_000)
    macs_limit: int | None = Field(None, ge=1, le=SIZE_LIMIT_MAX, description="candidates above it are never evaluated; null = "
                                                           "halfway between the preset's smallest and largest path")
    max_latency_ms: float | None = Field(
        None, gt=0, le=LATENCY_LIMIT_MAX, description="measured latency limit of a path as a stand-alone net (ms, "
                                                      "ONNX Runtime, 1 thread, one image); over it a path is never "
                                                      "evaluated; null = none")
    recalib_batches: int = Field(4, ge=0, le=10_000, description="training batches to recalibrate BN statistics "
                                                                 "before scoring a candidate; 0 = off")
    batch_size: int = Field(128, ge=1, le=4096, description="batch size of recalibration and scoring")

    @model_validator(mode="after")
    def _sizes(self):
        if self.topk > self.population:
            raise ValueError(f"topk: must be at most population ({self.population})")
        if self.mutation_count + self.crossover_count < 1:
            raise ValueError("mutation_count: mutation_count + crossover_count must be at least 1")
        return self


class RankCheckParams(Section):
    """Does the supernet rank architectures? Train `count` paths spread over the MACs range
    stand-alone with `steps` each and compare with their supernet scores on every held-out image
    (Kendall tau, its p-value, a bootstrap interval and a verdict)."""

    count: int = Field(8, ge=0, le=1000, description="architectures trained stand-alone; 0 = skip the check "
                                                     "(8 paths need tau >= 0.64 for p < 0.05, 10 need 0.51; "
                                                     "4 cannot reach it at all)")
    steps: int = Field(100, ge=1, le=1_000_000)
    bootstrap: int = Field(1000, ge=10, le=100_000, description="resamples of the held-out images for tau's interval")
    learning_rate: float = Field(0.05, gt=0, le=10)
    batch_size: int = Field(64, ge=2, le=4096)

    @field_validator("count")
    @classmethod
    def _count(cls, v: int) -> int:
        if 0 < v < 3:
            raise ValueError(f"must be 0 (off) or at least 3 (a rank correlation needs them), got {v}")
        return v


class SposRetrainParams(ClassifierTrain):
    epochs: int = Field(8, ge=1, le=10_000)
    baselines: bool = Field(True, description="also retrain a random path of similar MACs and the all-3x3 path")


class SposParams(RunParams):
    """spos/full."""

    data: CifarData = CifarData()
    model: SposModel = SposModel()
    supernet: SupernetTrain = SupernetTrain()
    search: EvolutionParams = EvolutionParams()
    rank_check: RankCheckParams = RankCheckParams()
    retrain: SposRetrainParams = SposRetrainParams()
    export: ClassifierExportParams = ClassifierExportParams()


# ----------------------------------------------------------------------------------- sanas/full


class FaceData(Section):
    """Face detection data: WIDER FACE annotation files (`wider_face_*_bbx_gt.txt` + image folders)
    or null for the embedded set (LFW faces placed on real backgrounds)."""

    train_annotations: str | None = Field(None, description="WIDER FACE train annotation file, or null")
    train_images: str | None = Field(None, description="folder the train annotation's image paths are relative to")
    val_annotations: str | None = None
    val_images: str | None = None
    num_train_images: int = Field(300, ge=10, le=100_000, description="embedded set only")
    num_val_images: int = Field(100, ge=5, le=100_000, description="embedded set only")

    @field_validator("train_annotations", "train_images", "val_annotations", "val_images")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return _resolved(v)

    @model_validator(mode="after")
    def _pairs(self):
        given = [getattr(self, k) is not None for k in ("train_annotations", "train_images", "val_annotations",
                                                         "val_images")]
        if any(given) and not all(given):
            raise ValueError("train_annotations: give train_annotations, train_images, val_annotations and "
                             "val_images together, or none of them (embedded faces)")
        return self


class SanasConstraint(Section):
    """SANAS's constraint: candidates outside [min, max] of `ctype` are skipped without training.
    "start" = the initial tokens' own value (a better detector at no greater cost)."""

    ctype: Literal["flops", "latency"] = Field("flops", description="flops = MACs of the network; latency = "
                                                                     "predicted ms from the latency table")
    min: float | None = Field(None, ge=0, le=SIZE_LIMIT_MAX)
    max: Annotated[float, Field(gt=0, le=SIZE_LIMIT_MAX)] | Literal["start"] | None = "start"

    @model_validator(mode="after")
    def _order(self):
        if self.min is not None and isinstance(self.max, (int, float)) and self.min > self.max:
            raise ValueError(f"constraint.min: {self.min} is above constraint.max ({self.max})")
        return self


class LatencyParams(Section):
    table_file: str | None = Field(None, description="a PaddleSlim-format latency table (e.g. measured on your "
                                                     "phone); null = measure one on this machine")
    threads: int = Field(1, ge=1, le=256, description="threads the table and the measurements pin")
    fit_architectures: int = Field(60, ge=10, le=100_000, description="random architectures the correction is fitted on")
    holdout_architectures: int = Field(100, ge=100, le=100_000,
                                       description="other random architectures its ±10 % accuracy is reported on")

    @field_validator("table_file")
    @classmethod
    def _table(cls, v: str | None) -> str | None:
        return _resolved(v)


class SanasSearchParams(SearchControl, MultiFidelity):
    """PaddleSlim SANAS (seed values in params/sanas_seed.yaml: T0 10.24, reduce_rate 0.85, 300 steps).
    The default reduce_rate keeps the seed's schedule in proportion to a shorter search
    (strategies/sa.py `stretched_reduce_rate`)."""

    search_steps: int = Field(12, ge=1, le=100_000)
    init_temperature: float = Field(10.24, gt=0, le=1e6, description="T0 (> 0)")
    reduce_rate: float | None = Field(
        None, gt=0, lt=1, description="T = T0 * reduce_rate^step, in (0, 1); null = the seed's 0.85 stretched over "
                                      "search_steps (0.85^(300 / search_steps)): anneals within any budget")
    random_starts: int = Field(
        0, ge=0, le=100_000, description="steps after the initial tokens that draw uniform tokens in the window "
                                         "(kept only if better) before annealing goes on from the best so far; "
                                         "0 = PaddleSlim's walk from the initial tokens (3 of 12 measured no better)")
    candidate_steps: int = Field(150, ge=1, le=STEPS_MAX, description="training steps per candidate (from scratch)")

    @model_validator(mode="after")
    def _starts(self):
        if self.random_starts >= self.search_steps:
            raise ValueError(f"random_starts: must be below search_steps ({self.search_steps}), got "
                             f"{self.random_starts}")
        return self


class FaceTrainParams(Section):
    """SGD for BlazeFace (candidates, and the final training of the found and the initial net)."""

    steps: int = Field(300, ge=1, le=10_000_000, description="final training steps of each compared network")
    batch_size: int = Field(16, ge=1, le=1024)
    learning_rate: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, lt=1)


class FaceExportParams(Section):
    """The export stage of sanas/full."""

    quantize: bool = Field(True, description="also write a static int8 twin of each exported SSD core (ONNX Runtime "
                                             "QDQ, softmax float) as <name>/inference_model_int8/, with its held-out "
                                             "AP and latency beside the float model's (adds ~2 s per network; on a "
                                             "CPU without VNNI the int8 BlazeFace measured 3.4x slower than float, "
                                             "which the report shows); a graph ORT cannot quantize keeps the float "
                                             "model only")
    calibration_images: int = Field(32, ge=1, le=10_000, description="training images that calibrate the int8 "
                                                                       "activation ranges")


class SanasParams(RunParams):
    """sanas/full."""

    data: FaceData = FaceData()
    image_size: int = Field(128, ge=32, le=1024, description="square input size of BlazeFace")
    constraint: SanasConstraint = SanasConstraint()
    latency: LatencyParams = LatencyParams()
    search: SanasSearchParams = SanasSearchParams()
    train: FaceTrainParams = FaceTrainParams()
    export: FaceExportParams = FaceExportParams()
