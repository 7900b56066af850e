"""SPOS training pieces on real tensors: one supernet step touches only the sampled path, a killed
supernet training resumes to the same weights, BN recalibration really re-estimates statistics,
and a model trained BGR-in-[0, 255] is exported and predicted that way (never fed RGB)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine.supernet import SupernetOptim, recalibrate_bn, train_supernet
from nas_models.spos_shufflenet import build_subnet, build_supernet, path_parameters


def _loader(n: int = 16, batch: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_one_training_step_changes_only_the_sampled_path() -> None:
    torch.manual_seed(0)
    net = build_supernet("small", num_classes=10)
    path = [random.Random(3).randrange(4) for _ in range(20)]
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    # weight decay and momentum on: an unsampled tensor must not move even by decay
    train_supernet(net, _loader(), SupernetOptim(steps=1, weight_decay=0.01), lambda rng: path, seed=0)
    changed = {k for k, v in net.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= path_parameters(net, path)
    assert len(changed) >= 0.9 * len(path_parameters(net, path))


def test_killed_supernet_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    def run(steps_then_kill: int | None, ckpt: Path) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = build_supernet("small", num_classes=10)
        sample = lambda rng: [rng.randrange(4) for _ in range(20)]  # noqa: E731
        optim = SupernetOptim(steps=6, learning_rate=0.05)
        if steps_then_kill is not None:
            def kill(step: int, loss: float, path: list[int]) -> None:
                if step + 1 == steps_then_kill:
                    raise KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                train_supernet(net, _loader(), optim, sample, 7, kill, checkpoint=ckpt, checkpoint_every=2)
            torch.manual_seed(123)  # a new process: other global RNG
            net = build_supernet("small", num_classes=10)
        train_supernet(net, _loader(), optim, sample, 7, checkpoint=ckpt, checkpoint_every=2)
        return {k: v.clone() for k, v in net.state_dict().items()}

    straight = run(None, tmp_path / "a.pth")
    resumed = run(4, tmp_path / "b.pth")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_recalibration_replaces_running_statistics() -> None:
    net = build_subnet([0] * 20, "small", num_classes=10, affine=False)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.running_mean.fill_(5.0)
    assert recalibrate_bn(net, _loader(), 3) == 3
    assert not net.training
    assert all(m.running_mean.abs().max() < 5.0 for m in norms)
    assert all(m.momentum == 0.1 for m in norms)  # restored after the cumulative average
    assert recalibrate_bn(net, _loader(), 0) == 0


def test_bgr_model_yml_is_honoured_by_the_predictor(tmp_path: Path) -> None:
    """A model trained on BGR [0, 255] input: model.yml says so and the predictor feeds it so. A
    network that reads only channel 0 (B after the swap) tells the conventions apart."""
    import yaml

    from deploy.classifier_export import export_classifier
    from deploy.predictor import ClassifierPredictor
    from tasks.cifar.training import preprocess

    class FirstChannel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # logits = [mean of channel 0, 128]
            m = x[:, 0].mean(dim=(1, 2))
            return torch.stack([m, torch.full_like(m, 128.0)], dim=1)

    out = export_classifier(FirstChannel(), {"type": "test"}, ["first", "const"], preprocess("bgr255"), tmp_path / "m")
    meta = yaml.safe_load(Path(out["model_yml"]).read_text())
    assert meta["input"]["channel_order"] == "BGR" and meta["transforms"]["channel_order"] == "BGR"
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 2] = 255  # pure blue in RGB: the model's channel 0 sees 255 only if fed BGR [0, 255]
    top = ClassifierPredictor(out["model_dir"]).predict(image, topk=2)[0]
    assert top[0]["category"] == "first"
    assert top[0]["score"] == pytest.approx(1.0, abs=1e-6)  # softmax of [255, 128]
    image[..., 2], image[..., 0] = 0, 255  # pure red: channel 0 sees 0 -> "const" wins
    assert ClassifierPredictor(out["model_dir"]).predict(image, topk=1)[0][0]["category"] == "const"


def test_rgb_and_bgr_training_inputs_differ_exactly_by_the_convention() -> None:
    from data.cifar import CifarNormalize

    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    bgr = CifarNormalize((0.0, 0.0, 0.0), (1 / 255,) * 3, "BGR")(image)
    assert torch.allclose(bgr, image.flip(0).float(), atol=1e-3)
