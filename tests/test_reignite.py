"""Reignite trains the detector's own backbone as a classifier: the detector sees the change."""
from __future__ import annotations

import torch

from nas_models.detector import BackboneClassifier, backbone_state_dict, build_detector, serial_body


def test_classifier_training_updates_the_detector_backbone() -> None:
    torch.manual_seed(0)
    detector = build_detector("1-2-2", "BasicBlock", num_classes=3, image_size=64)
    before = backbone_state_dict(detector)
    classifier = BackboneClassifier(serial_body(detector), num_classes=10)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(classifier(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    after = backbone_state_dict(detector)
    assert not torch.equal(before["stem.conv.weight"], after["stem.conv.weight"])
    assert torch.equal(after["stem.conv.weight"], classifier.backbone.stem.conv.weight.detach())
