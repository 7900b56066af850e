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
