"""Reignite: the chosen detector's backbone is trained as a classifier on the classification
split and mapped back; the detector that comes out differs in its backbone and keeps its heads'
shapes, and the stage writes the handoff files."""
from __future__ import annotations

from pathlib import Path

import torch

from nas_models.detector import serial_body


def backbone_state_dict(detector: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in serial_body(detector).state_dict().items()}


def test_reignite_trains_the_backbone_and_maps_it_back(tmp_path: Path) -> None:
    from params.models import ReigniteParams, Runtime, SpnasParams
    from tasks.orchestration.files import save_handoff
    from tasks.spnas.detectors import desc_for, load_detector
    from tasks.spnas.data import detection_sources
    from tasks.spnas.reignite import reignite_backbone
    from tasks.spnas.split import split_detection

    p = SpnasParams.model_validate({"data": {"num_train_images": 16, "num_val_images": 5, "val_value": 0.5,
                                             "test_value": 0.0},
                                    "model": {"backbone_code": "1-2-2", "image_size": 64},
                                    "optimizer": {"eval_max_images": 2, "batch_size": 4}})
    (tmp_path / "split").mkdir()
    data = split_detection(detection_sources(p.data, p.model.image_size, p.seed), p.data, p.seed, tmp_path / "split")
    torch.manual_seed(0)
    desc = desc_for(p.model, data.num_classes, "1-2-2")
    detector = load_detector(desc)
    before = backbone_state_dict(detector)
    chosen_dir = tmp_path / "chosen"
    chosen_dir.mkdir()
    files = save_handoff(chosen_dir, "3", desc, detector, {})
    chosen = {"id": 3, "code": "1-2-2", "desc": desc, "model_path": files[1]}
    cfg = ReigniteParams(rounds=1, epochs=1, input_size=32, batch_size=32, detector_steps=1)
    out_dir = tmp_path / "reignite"
    out_dir.mkdir()
    epochs: list[dict[str, float]] = []
    out = reignite_backbone(data, chosen, p.model, p.optimizer, cfg, p.seed, Runtime(num_threads=1), out_dir,
                            on_epoch=epochs.append)

    after = backbone_state_dict(load_detector(desc, out.model_path))
    assert not torch.equal(before["stem.conv.weight"], after["stem.conv.weight"])  # the classifier trained it
    assert before.keys() == after.keys()
    assert len(epochs) == 1 and 0.0 <= epochs[0]["val_top1"] <= 1.0
    assert out.rounds[0]["round"] == 1 and out.performance["rounds"] == 1
    for name in ("desc_0.json", "model_0.pth", "performance_0.json", "output.csv", "output.parquet"):
        assert (out_dir / name).is_file(), name
