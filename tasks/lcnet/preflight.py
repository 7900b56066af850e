"""lcnet/full's preflight: what its params point at, checked before any work."""
from __future__ import annotations

from data.split import check_image_folder
from nas_models.convert import load_weights_file
from nas_models.inherit import inherit_weights, require_loaded_share
from nas_models.lcnet import build_lcnet
from params.models import LcnetModel, LcnetParams
from tasks.orchestration.preflight import at, check_run, existing_dir, existing_file


def check_weights(model: LcnetModel) -> None:
    """At least half of the network's tensors must load by name and shape (else the weights
    belong to another architecture and would silently leave the model untrained)."""
    existing_file(model.pretrained_weights, "model.pretrained_weights",
                  "a state_dict saved with torch.save, or null to train from scratch")
    if model.pretrained_weights is None:
        return
    with at("model"):
        report = inherit_weights(build_lcnet(model.scale, num_classes=2, dropout=model.dropout),
                                 load_weights_file(model.pretrained_weights, "pretrained_weights"))
        require_loaded_share(report, None, "pretrained_weights")


def preflight(p: LcnetParams) -> None:
    """InputError naming the field when the data folder or the weights are missing or do not
    fit, or the device or output root is unusable."""
    check_run(p)
    existing_dir(p.data.dataset_dir, "data.dataset_dir",
                 "a folder of class sub-folders, or null for the embedded digits")
    if p.data.dataset_dir is not None:
        check_image_folder(p.data.dataset_dir, "data.dataset_dir")  # every image decoded, two classes at least
    check_weights(p.model)
