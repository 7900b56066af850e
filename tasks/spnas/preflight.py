"""spnas/full's preflight: what its params point at, checked before any work."""
from __future__ import annotations

from core.errors import InputError
from data.coco import check_coco_files
from data.coco_crops import check_crops
from nas_models.convert import convert_checkpoint, load_weights_file
from nas_models.serial_backbone import validate_code
from params.models import DetectorModel, SpnasData, SpnasParams
from tasks.orchestration.preflight import at, check_run, existing_dir, existing_file


def check_data(data: SpnasData) -> None:
    """Folders and COCO files exist, and the COCO files parse and refer to images that exist:
    bad files fail before a run folder or an MLflow run exists."""
    for name in ("train_images", "train_json", "val_images", "val_json", "classification_dir"):  # field order
        if name.endswith("_json"):
            existing_file(getattr(data, name), f"data.{name}", "a COCO instances JSON file, or null")
        else:
            existing_dir(getattr(data, name), f"data.{name}", "a folder of images, or null for the embedded set")
    if data.train_json is not None:  # the model makes sure all four are given together
        with at("data"):
            check_coco_files(data.train_images, data.train_json, "data.train_images", "data.train_json")
            check_coco_files(data.val_images, data.val_json, "data.val_images", "data.val_json")
            if data.classification_dir is None:  # reignite will train on crops of the training boxes
                check_crops(data.train_images, data.train_json, data.crop_min_size, images_field="data.train_images",
                            json_field="data.train_json")


def check_model(model: DetectorModel) -> None:
    """A backbone code the serial grammar accepts, and weights that convert to that code and
    block (checked here, not at fine_tune)."""
    with at("model.backbone_code", model.backbone_code):
        validate_code(model.backbone_code)
    existing_file(model.pretrained_weights, "model.pretrained_weights",
                  "a torchvision ResNet or fasterrcnn_resnet50_fpn state_dict, or null")
    if model.pretrained_weights is None:
        return
    with at("model"):
        state = load_weights_file(model.pretrained_weights, "pretrained_weights")
        # Whatever field the converter names, the user gave pretrained_weights.
        try:
            convert_checkpoint(state, model.backbone_code, model.block)
        except InputError as exc:
            raise ValueError(f"pretrained_weights: {str(exc).split(': ', 1)[-1]}") from None


def check_stages(p: SpnasParams) -> None:
    """The serial search may not shrink the starting network. Checked after the code's grammar
    (an unreadable code is named as such, not as too many stages for serial.max_stages)."""
    stages = len(validate_code(p.model.backbone_code))
    if p.serial.max_stages < stages:
        raise InputError("serial.max_stages", f"must be at least the stages of model.backbone_code "
                                              f"({p.model.backbone_code})")


def check_latency_predictor(p: SpnasParams) -> None:
    """serial.latency_predictor must be a predictor whose table covers the serial space around
    model.backbone_code (random proposals traced; a few seconds)."""
    if p.serial.latency_predictor is None:
        return
    from tasks.spnas.detectors import latency_of  # torch only when asked

    latency_of(p.model, 2, predictor_file=p.serial.latency_predictor)  # the timed part has no class head


def preflight(p: SpnasParams) -> None:
    """InputError naming the field when a data file, the backbone code or the weights are
    wrong, the code has more stages than the serial search allows, the latency predictor does
    not fit the serial space, or the device or output root is unusable."""
    check_run(p)
    check_data(p.data)
    check_model(p.model)
    check_stages(p)
    check_latency_predictor(p)
