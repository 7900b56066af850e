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

from engine.supernet import (SupernetOptim, WarmStart, align_xception, recalibrate_bn, train_supernet,
                             xception_errors)
from nas_models.spos_shufflenet import build_subnet, build_supernet, copy_reference_kernels, path_parameters


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


# --- warm start ---------------------------------------------------------------------------------


def _trained_like(seed: int = 0) -> torch.nn.Module:
    """A supernet with non-trivial weights and BN statistics in every choice."""
    torch.manual_seed(seed)
    net = build_supernet("small", num_classes=10)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.2)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("copy", [1, 2])
def test_copied_kernel_choices_compute_the_reference_function(copy: int) -> None:
    """After the copy, any path with 5x5/7x7 where the reference has 3x3 is the same network."""
    net = _trained_like()
    x = torch.randn(3, 3, 32, 32)
    reference = [0] * 20
    mixed = [copy if i % 3 else 0 for i in range(20)]
    with torch.no_grad():
        before = net(x, reference)
        assert not torch.allclose(net(x, mixed), before, atol=1e-3)  # unrelated functions before
        copy_reference_kernels(net)
        assert torch.allclose(net(x, mixed), before, atol=1e-5)
        assert torch.allclose(net(x, [copy] * 20), before, atol=1e-5)
        assert torch.equal(net(x, reference), before)  # the reference itself is untouched


def test_stride2_xception_projection_is_the_reference_projection() -> None:
    net = _trained_like()
    copy_reference_kernels(net)
    for block in net.blocks:
        ref, xcp = block.choices[0], block.choices[3]
        if ref.proj is not None:
            assert all(torch.equal(a, b) for a, b in zip(ref.proj.state_dict().values(), xcp.proj.state_dict().values()))


def test_xception_fit_lowers_its_block_local_error() -> None:
    torch.manual_seed(0)
    net = build_supernet("small", num_classes=10).train()
    probe = next(iter(_loader(n=8, batch=8, seed=5)))[0]
    with torch.no_grad():
        before = xception_errors(net, probe)
    first, last = align_xception(net, _loader(n=64, batch=8), steps=40, lr=3e-2)
    with torch.no_grad():
        after = xception_errors(net, probe)
    assert first == last  # 40 steps: one window (LOSS_WINDOW = 50) holds them all
    assert after.mean() < 0.6 * before.mean()
    assert (after < before).float().mean() >= 0.9  # nearly every block, not just on average


def test_warm_start_touches_only_what_it_should_and_reports_its_phases() -> None:
    torch.manual_seed(0)
    net = build_supernet("small", num_classes=10)
    head_before = net.classifier.weight.detach().clone()
    stats = train_supernet(net, _loader(), SupernetOptim(steps=2, learning_rate=0.05), lambda rng: [1] * 20, 0,
                           warm_start=WarmStart(reference_steps=3, align_steps=2))
    assert stats["steps"] == 2 and {"reference_loss", "align_error_first", "align_error_last"} <= stats.keys()
    assert not torch.equal(net.classifier.weight, head_before)


def test_killed_warm_start_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Killed in the reference phase, in the alignment, and in the uniform phase: each resumed
    run ends with the weights of an uninterrupted one."""
    warm = WarmStart(reference_steps=4, align_steps=4)
    optim = SupernetOptim(steps=4, learning_rate=0.05)
    sample = lambda rng: [rng.randrange(4) for _ in range(20)]  # noqa: E731

    def run(kill_at: tuple[str, int] | None, ckpt: Path) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = build_supernet("small", num_classes=10)
        if kill_at is not None:
            phase, at = kill_at

            def kill_warm(p: str, step: int, value: float) -> None:
                if (p, step + 1) == (phase, at):
                    raise KeyboardInterrupt

            def kill_uniform(step: int, loss: float, path: list[int]) -> None:
                if ("uniform", step + 1) == (phase, at):
                    raise KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                train_supernet(net, _loader(), optim, sample, 7, kill_uniform, checkpoint=ckpt, checkpoint_every=2,
                               warm_start=warm, on_warm=kill_warm)
            torch.manual_seed(123)  # a new process: other global RNG
            net = build_supernet("small", num_classes=10)
        train_supernet(net, _loader(), optim, sample, 7, checkpoint=ckpt, checkpoint_every=2, warm_start=warm)
        return {k: v.clone() for k, v in net.state_dict().items()}

    straight = run(None, tmp_path / "straight" / "checkpoint.pth")
    for kill in (("reference", 3), ("align", 3), ("uniform", 3)):
        resumed = run(kill, tmp_path / kill[0] / "checkpoint.pth")
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), kill


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
