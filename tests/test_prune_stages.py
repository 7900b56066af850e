"""Choosing which front members the retrain stage trains from scratch."""
from __future__ import annotations

from tasks.prune_ea.prune_search import spread


def _front(*pairs):
    return [{"id": i, "macs": m, "acc": a} for i, (m, a) in enumerate(pairs)]


def test_spread_takes_both_ends_and_skips_chance_level_members() -> None:
    front = _front((1e5, 0.10), (2e5, 0.12), (5e6, 0.5), (1e7, 0.8), (2e7, 0.9), (3e7, 0.95))
    picked = spread(front, 3, num_classes=10)
    assert [r["id"] for r in picked] == [2, 4, 5]  # 0.10 / 0.12 are no better than chance (≤ 0.15)
    assert [r["id"] for r in spread(front, 10, num_classes=10)] == [2, 3, 4, 5]
    assert [r["id"] for r in spread(front, 1, num_classes=10)] == [5]


def test_spread_leaves_out_members_far_below_the_front_s_best() -> None:
    front = _front((1e5, 0.16), (3e6, 0.29), (5e6, 0.5), (7e6, 0.53), (1e7, 0.8), (3e7, 0.95))
    # halfway from chance (0.1) to the best (0.95) is 0.525: the 0.16 / 0.29 / 0.5 members are left out
    assert [r["id"] for r in spread(front, 2, 10, min_share=0.5)] == [3, 5]
    assert [r["id"] for r in spread(front, 2, 10, min_share=0.0)] == [0, 5]
    assert [r["id"] for r in spread(front, 3, 10, min_share=1.0)] == [5]  # only the best
    assert [r["id"] for r in spread(front, 10, 10, min_share=0.5)] == [3, 4, 5]


def test_spread_follows_the_searched_cost_axis() -> None:
    from tasks.orchestration.search import cost_column

    # On a latency front MACs are out of order (an odd channel count can be slower with fewer MACs).
    front = [{"id": i, "macs": m, "latency_ms": ms, "acc": a}
             for i, (m, ms, a) in enumerate([(9e6, 0.2, 0.5), (1e6, 0.3, 0.6), (5e6, 0.5, 0.8), (3e6, 0.9, 0.9)])]
    assert [r["id"] for r in spread(front, 2, 10, along="latency_ms")] == [0, 3]
    assert [r["id"] for r in spread(front, 2, 10)] == [1, 0]
    assert [cost_column(o) for o in ("latency", "macs", "params")] == ["latency_ms", "macs", "params"]


def test_spread_of_an_all_chance_front_still_returns_members() -> None:
    front = _front((1e5, 0.1), (2e5, 0.11))
    assert len(spread(front, 2, num_classes=10)) == 2


def test_bn_recalibration_replaces_stale_statistics(tmp_path) -> None:
    """A pruned candidate's BatchNorm statistics are re-estimated on training batches (an
    equal-weight average, momentum restored afterwards); 0 batches leaves them as inherited."""
    import torch

    from nas_models.prune_resnet import build_prune_resnet, encoding_length, pruned_from_full
    from params.models import CifarData
    from tasks.cifar.data import cifar_sources
    from engine.supernet import recalibrate_bn
    from tasks.prune_ea.prune_search import calibration_batches

    data = cifar_sources(CifarData(), 0, tmp_path)
    full = build_prune_resnet(20, num_classes=data.num_classes)
    bits = "10" * (encoding_length(20) // 2)

    def stale() -> torch.nn.Module:
        model = pruned_from_full(full, bits)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(100.0)
        return model

    untouched = stale()
    recalibrate_bn(untouched, calibration_batches(data, 16, 0), 0, torch.device("cpu"))
    norms = [m for m in untouched.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.running_mean == 5.0) for m in norms)

    model = stale()
    recalibrate_bn(model, calibration_batches(data, 16, 0), 2, torch.device("cpu"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 2 and m.momentum == 0.1 for m in norms)
    assert all(not torch.any(m.running_var == 100.0) and torch.all(torch.isfinite(m.running_mean)) for m in norms)
    # the stem's BN sees normalised images: its statistics are of order 1, not the stale 5 / 100
    stem = norms[0]
    assert float(stem.running_var.mean()) < 50.0


def test_retrain_starts_from_the_pruned_base_weights_or_from_scratch(tmp_path) -> None:
    """retrain.init: pruned = the base model's kept weights (the same network the search scored);
    scratch = a fresh initialisation of the same architecture."""
    import numpy as np
    import torch

    from nas_models.prune_resnet import build_prune_resnet, encoding_length, pruned_from_full
    from tasks.prune_ea.retrain import initial_model
    from tasks.prune_ea.train_base import TrainedBase

    torch.manual_seed(0)
    full = build_prune_resnet(20, num_classes=10)
    torch.save(full.state_dict(), tmp_path / "model_0.pth")
    base = TrainedBase(name="base", desc={"type": "PruneResNet", **full.arch}, model_path=str(tmp_path / "model_0.pth"),
                       performance={}, history=())
    rng = np.random.default_rng(1)
    encoding = "".join("1" if b else "0" for b in rng.uniform(size=encoding_length(20)) < 0.5)
    pruned = initial_model(encoding, base, 20, 10, "pruned").state_dict()
    expected = pruned_from_full(full, encoding).state_dict()
    assert pruned.keys() == expected.keys() and all(torch.equal(pruned[k], expected[k]) for k in pruned)
    scratch = initial_model(encoding, base, 20, 10, "scratch").state_dict()
    assert {k: v.shape for k, v in scratch.items()} == {k: v.shape for k, v in pruned.items()}
    assert not torch.equal(scratch["stem.conv.weight"], pruned["stem.conv.weight"])
