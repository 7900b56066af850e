"""Pydantic models of every deployment's parameters (defaults live in params/<flow>.yaml)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _existing_dir(value: str | None, what: str) -> str | None:
    if value is not None and not Path(value).expanduser().is_dir():
        raise ValueError(f"must be an existing folder ({what})")
    return value


def _existing_file(value: str | None, what: str) -> str | None:
    if value is not None and not Path(value).expanduser().is_file():
        raise ValueError(f"must be an existing file ({what})")
    return value


class RunParams(BaseModel):
    """Fields every pipeline has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, description="every random choice (split, init, sampling) derives from it")
    output_root: str | None = Field(None, description="outputs go to <output_root>/<flow-run-name>/; null = .spnas/outputs")
    num_threads: int | None = Field(None, ge=1, le=256, description="torch threads; null = all cores")


class SplitParams(BaseModel):
    """PaddleX `split_dataset --format ImageNet` ratios."""

    val_value: float = Field(0.2, gt=0, lt=1)
    test_value: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _ratios_sum(self):
        if self.val_value + self.test_value >= 1:
            raise ValueError(f"test_value: val_value + test_value must be below 1 (got {self.val_value} + {self.test_value})")
        return self


class LcnetParams(RunParams, SplitParams):
    dataset_dir: str | None = Field(
        None, description="ImageNet-format folder (one sub-folder of images per class); null = embedded digits"
    )
    scale: Literal[0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5] = 1.0
    input_size: int = Field(32, ge=16, le=1024)
    resize_short: int | None = Field(None, ge=16, le=2048, description="null = input_size")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(4e-5, ge=0, lt=1)
    warmup_epochs: int = Field(1, ge=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrained_weights: str | None = Field(None, description="a state_dict .pth; tensors whose name+shape match are loaded")
    topk: int = Field(5, ge=1)
    predict_count: int = Field(8, ge=1, description="test images the predict stage runs through the exported model")
    predict_warmup: int = Field(5, ge=0, description="warm-up iterations before timing")
    predict_repeats: int = Field(20, ge=1, description="timed passes over the predict images")

    @field_validator("dataset_dir")
    @classmethod
    def _dataset_dir(cls, v: str | None) -> str | None:
        return _existing_dir(v, "a folder of class sub-folders, or null for the embedded digits")

    @field_validator("pretrained_weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        return _existing_file(v, "a state_dict saved with torch.save, or null to train from scratch")

    @model_validator(mode="after")
    def _sizes(self):
        if self.resize_short is not None and self.resize_short < self.input_size:
            raise ValueError(f"resize_short: must be at least input_size ({self.input_size})")
        return self


class DetectorTrainParams(BaseModel):
    """SGD for the detector (torchvision reference recipe, sized for CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(0.02, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, le=512)


class SerialSearchParams(BaseModel):
    """SpNasS (Vega names). The seed's values are in params/spnas_seed.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sample: int = Field(20, ge=1, le=10_000)
    max_optimal: int = Field(5, ge=1)
    num_mutate: int = Field(3, ge=1, le=20)
    add_stage_ratio: float = Field(0.05, ge=0, le=1)
    expend_ratio: float = Field(0.3, ge=0, le=1)
    max_stages: int = Field(6, ge=1, le=6)
    batch: int = Field(2, ge=1, le=64, description="candidates proposed (and trained via .map) per round")
    candidate_steps: int = Field(60, ge=1, description="training steps per candidate on inherited weights")
    freeze_inherited: bool = Field(False, description="Vega's freeze_swap_keys: freeze fully inherited blocks")


class ReigniteParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(1, ge=0, le=2, description="classification re-trainings of the chosen backbone (seed: at most 2)")
    epochs: int = Field(2, ge=1)
    input_size: int = Field(64, ge=32, le=1024)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=10)
    detector_steps: int = Field(40, ge=0, description="detector steps after mapping the reignited weights back")


class ParallelSearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sample: int = Field(4, ge=0, le=1000)
    max_per_stage: int = Field(2, ge=1, le=8)
    max_additions: int = Field(3, ge=1, le=32)
    batch: int = Field(2, ge=1, le=64)
    candidate_steps: int = Field(60, ge=1)


class SpnasParams(RunParams, SplitParams):
    """spnas/full. COCO paths null = the embedded digit canvases."""

    train_images: str | None = None
    train_json: str | None = None
    val_images: str | None = None
    val_json: str | None = None
    num_train_images: int = Field(600, ge=10, description="embedded set only: training canvases")
    num_val_images: int = Field(150, ge=5, description="embedded set only: held-out canvases (held-out digits)")
    search_val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training images that scores candidates")
    classification_dir: str | None = Field(None, description="ImageNet-format folder for reignite; null = embedded digits")
    backbone_code: str = "11-21-21-21"
    block: Literal["BasicBlock", "Bottleneck", "ResNeXt"] = "BasicBlock"
    pretrained_weights: str | None = Field(None, description="torchvision ResNet or fasterrcnn_resnet50_fpn state_dict")
    image_size: int = Field(96, ge=32, le=2048)
    fpn_channels: int = Field(64, ge=8, le=1024)
    optimizer: DetectorTrainParams = DetectorTrainParams()
    fine_tune_epochs: int = Field(3, ge=0)
    serial: SerialSearchParams = SerialSearchParams(max_sample=8, batch=2, add_stage_ratio=0.15, expend_ratio=0.3)
    reignite: ReigniteParams = ReigniteParams()
    parallel: ParallelSearchParams = ParallelSearchParams()
    fully_train_epochs: int = Field(3, ge=1)
    baseline: bool = Field(True, description="also fully train the starting architecture with the same budget")
    eval_max_images: int | None = Field(None, ge=1, description="cap on scoring images per candidate (null = all)")
    candidate_workers: int = Field(1, ge=1, le=256, description="candidates trained at once (threads; cores are shared)")
    dask_address: str | None = Field(None, description="tcp://host:port of a Dask scheduler to train candidates on")

    @field_validator("train_images", "val_images", "classification_dir")
    @classmethod
    def _dirs(cls, v: str | None) -> str | None:
        return _existing_dir(v, "a folder of images, or null for the embedded set")

    @field_validator("train_json", "val_json", "pretrained_weights")
    @classmethod
    def _files(cls, v: str | None) -> str | None:
        return _existing_file(v, "an existing file, or null")

    @field_validator("backbone_code")
    @classmethod
    def _code(cls, v: str) -> str:
        from nas_models.serial_backbone import validate_code

        validate_code(v)
        return v

    @model_validator(mode="after")
    def _coco_pairs(self):
        for images, ann in (("train_images", "train_json"), ("val_images", "val_json")):
            if (getattr(self, images) is None) != (getattr(self, ann) is None):
                raise ValueError(f"{ann}: give both {images} and {ann}, or neither (embedded digits)")
        if (self.train_json is None) != (self.val_json is None):
            raise ValueError("val_json: give your own train and val sets together, or neither")
        if self.serial.max_stages < len(self.backbone_code.split("-")):
            raise ValueError(f"serial.max_stages: must be at least the stages of backbone_code ({self.backbone_code})")
        return self
