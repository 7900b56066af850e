"""MAC/parameter counting against hand-computed values."""
from __future__ import annotations

import torch
from torch import nn

from latency.flops import count_macs_params, format_count


def test_conv_and_linear_by_hand() -> None:
    # conv 3->8, 3x3, stride 1, pad 1 on 16x16: 16*16 outputs * 8 ch * (3*3*3) MACs each.
    # linear 8->5 after global pooling: 8*5 MACs. Biases/pooling are not MACs.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5))
    macs, params = count_macs_params(model, (1, 3, 16, 16))
    assert macs == 16 * 16 * 8 * 27 + 8 * 5
    assert params == (8 * 27 + 8) + (8 * 5 + 5)


def test_depthwise_and_batch() -> None:
    # Depthwise 3x3 on 4 channels, stride 2, 8x8 -> 4x4: each output uses 9 MACs; batch 2 doubles.
    model = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
    macs, params = count_macs_params(model, (2, 4, 8, 8))
    assert macs == 2 * 4 * 4 * 4 * 9
    assert params == 4 * 9


def test_tensor_and_list_examples() -> None:
    class TakesList(nn.Module):  # detector-style input: a list of images
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([self.fc(im) for im in images])

    macs, _ = count_macs_params(TakesList(), [torch.zeros(6), torch.zeros(6), torch.zeros(6)])
    assert macs == 3 * 12
    macs, _ = count_macs_params(nn.Linear(4, 3), torch.zeros(2, 4))
    assert macs == 2 * 12


def test_training_flags_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    model.train()
    model[1].eval()  # e.g. frozen BN inside a training model
    count_macs_params(model, (1, 3, 8, 8))
    assert model.training and model[0].training and model[2].training
    assert not model[1].training
    model.eval()
    count_macs_params(model, (1, 3, 8, 8))
    assert not any(m.training for m in model.modules())


def test_no_grad_and_bn_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    count_macs_params(model, (2, 3, 8, 8))
    assert model[1].num_batches_tracked.item() == 0  # ran in eval mode: stats not updated
    assert all(p.grad is None for p in model.parameters())


def test_format_count() -> None:
    assert format_count(3_000_000) == "3.0M"
    assert format_count(161_400_000) == "161.4M"
    assert format_count(1_500) == "1.5K"
    assert format_count(2_500_000_000) == "2.5G"
    assert format_count(999) == "999"
