"""PruneResNet: encoding layout, real (physical) MACs/params, weight inheritance, repair,
validation and desc round trips. Small CIFAR nets on CPU; the whole file runs in seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latency.flops import count_macs_params
from nas_models.prune_resnet import (
    ChannelSelect,
    PruneResNet,
    build_prune_resnet,
    channel_scores,
    encoding_groups,
    encoding_length,
    from_desc,
    keep_largest,
    pruned_from_full,
    random_encoding,
    repair_encoding,
    validate_encoding,
)
from core.errors import InputError
from nas_models.registry import build_from_desc

INPUT = (1, 3, 32, 32)
# Worked out by hand from the layer table (convs + FC; params incl. BN affine and FC bias).
FULL_COUNTS = {20: (40_813_184, 272_474), 32: (69_124_736, 466_906), 56: (125_747_840, 855_770)}


def _group(depth: int, name: str):
    return next(g for g in encoding_groups(depth) if g.name == name)


def _with_bits(encoding: str, start: int, bits: str) -> str:
    return encoding[:start] + bits + encoding[start + len(bits):]


def _randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Stand-in for a trained base model: non-trivial BN affine and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def full20() -> PruneResNet:
    torch.manual_seed(0)
    return _randomize_(build_prune_resnet(20), seed=1)


def _masked_full_forward(full: PruneResNet, encoding: str, x: torch.Tensor) -> torch.Tensor:
    """The full network with every dropped channel zeroed after its activation."""
    masks = {g.name: torch.tensor([float(c) for c in encoding[g.start:g.stop]]).view(1, -1, 1, 1)
             for g in encoding_groups(full.arch["depth"])}

    def zero(mask: torch.Tensor):
        return lambda module, inputs, output: output * mask

    hooks = [full.stem.register_forward_hook(zero(masks["stem"]))]
    for s, stage in enumerate(full.stages, 1):
        for b, block in enumerate(stage, 1):
            hooks.append(block.act1.register_forward_hook(zero(masks[f"stage{s}.block{b}"])))
            hooks.append(block.register_forward_hook(zero(masks[f"stage{s}"])))
    try:
        with torch.no_grad():
            return full(x)
    finally:
        for h in hooks:
            h.remove()


# --- layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("depth", "length"), [(20, 464), (32, 688), (56, 1136)])
def test_encoding_length(depth: int, length: int) -> None:
    assert encoding_length(depth) == length


@pytest.mark.parametrize(("depth", "n"), [(20, 3), (32, 5), (56, 9)])
def test_group_layout(depth: int, n: int) -> None:
    groups = encoding_groups(depth)
    # Contiguous, in order, covering the whole encoding; names unique.
    assert groups[0].start == 0 and groups[-1].stop == encoding_length(depth)
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))
    assert len({g.name for g in groups}) == len(groups)
    middle = [g for g in groups if g.kind == "ch_middle"]
    final = [g for g in groups if g.kind == "ch_final"]
    assert groups == middle + final  # Vega's order: ch_middle first
    assert [g.length for g in middle] == [16] * n + [32] * n + [64] * n
    assert [(g.name, g.length) for g in final] == [("stem", 16), ("stage1", 16),
                                                   ("stage2", 32), ("stage3", 64)]
    assert sum(g.length for g in final) == 128
    if depth == 20:
        assert sum(g.length for g in middle) == 336
        assert (final[0].start, middle[0].name, middle[-1].name) == (336, "stage1.block1",
                                                                     "stage3.block3")


# --- counts ---------------------------------------------------------------------------------


def test_resnet20_macs_params_match_paper() -> None:
    macs, params = count_macs_params(build_prune_resnet(20), INPUT)
    assert macs == pytest.approx(40.8e6, rel=0.01)  # Vega's baseline "40.8M FLOPs" (= MACs)
    assert params == pytest.approx(0.27e6, rel=0.02)


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_full_counts_exact(depth: int) -> None:
    model = build_prune_resnet(depth)
    assert count_macs_params(model, INPUT) == FULL_COUNTS[depth]
    # The unpruned network has only the two projections of a CIFAR ResNet, nothing else.
    assert not any(isinstance(m, ChannelSelect) for m in model.modules())
    assert sum(hasattr(b.shortcut, "conv") for stage in model.stages for b in stage) == 2


def test_pruning_is_physical_exact_saving() -> None:
    # Keep 8 of 16 channels of stage1.block1's first conv: conv1 loses 8 output filters and
    # conv2 8 input channels (each 8·16·9 weights, ×32·32 positions), bn1 loses 8 pairs.
    g = _group(20, "stage1.block1")
    enc = _with_bits("1" * 464, g.start, "10" * 8)
    macs, params = count_macs_params(build_prune_resnet(20, enc), INPUT)
    full_macs, full_params = FULL_COUNTS[20]
    assert full_macs - macs == 2 * 8 * 16 * 9 * 32 * 32
    assert full_params - params == 2 * 8 * 16 * 9 + 2 * 8
    assert build_prune_resnet(20, enc).stages[0][0].conv1.out_channels == 8


@pytest.mark.parametrize("case", ["mid", "stem", "stage1", "stage3", "p0.3", "p0.7", "p0.97"])
def test_pruned_counts_smaller_and_match_direct_build(full20: PruneResNet, case: str) -> None:
    if case.startswith("p"):
        enc = random_encoding(20, np.random.default_rng(7), p_keep=float(case[1:]))
    else:  # a single channel dropped from one group
        g = _group(20, {"mid": "stage2.block3"}.get(case, case))
        enc = _with_bits("1" * 464, g.start + g.length - 1, "0")
    pruned = pruned_from_full(full20, enc)
    direct = build_prune_resnet(20, enc)
    counts = count_macs_params(pruned, INPUT)
    assert counts == count_macs_params(direct, INPUT)
    assert counts[0] < FULL_COUNTS[20][0] and counts[1] < FULL_COUNTS[20][1]
    assert {k: v.shape for k, v in pruned.state_dict().items()} == \
        {k: v.shape for k, v in direct.state_dict().items()}


# --- inheritance ----------------------------------------------------------------------------


def test_all_ones_inheritance_reproduces_full(full20: PruneResNet) -> None:
    pruned = pruned_from_full(full20, "1" * 464).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(pruned(x), full20(x))
    for key, value in full20.state_dict().items():
        assert torch.equal(pruned.state_dict()[key], value), key


@pytest.mark.parametrize("same_stem_stage1", [False, True])
def test_pruned_equals_masked_full(full20: PruneResNet, same_stem_stage1: bool) -> None:
    enc = random_encoding(20, np.random.default_rng(11), p_keep=0.6)
    stem, stage1 = _group(20, "stem"), _group(20, "stage1")
    if same_stem_stage1:  # identity shortcut at the stem → stage 1 join
        enc = _with_bits(enc, stage1.start, enc[stem.start:stem.stop])
    pruned = pruned_from_full(full20, enc)
    shortcut = pruned.stages[0][0].shortcut
    assert isinstance(shortcut, torch.nn.Identity if same_stem_stage1 else ChannelSelect)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = pruned(x)
    torch.testing.assert_close(out, _masked_full_forward(full20, enc, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [32, 56])
def test_deeper_nets_inherit_exactly(depth: int) -> None:
    torch.manual_seed(depth)
    full = _randomize_(build_prune_resnet(depth, num_classes=5), seed=depth)
    enc = random_encoding(depth, np.random.default_rng(depth), p_keep=0.5)
    pruned = pruned_from_full(full, enc)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _masked_full_forward(full, enc, x),
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(pruned_from_full(full, "1" * len(enc))(x), full(x))
    macs, params = count_macs_params(pruned, INPUT)
    assert macs < FULL_COUNTS[depth][0] and params < FULL_COUNTS[depth][1]


def test_inheritance_keeps_dtype_and_mode(full20: PruneResNet) -> None:
    full64 = build_prune_resnet(20).double().train()
    pruned = pruned_from_full(full64, random_encoding(20, np.random.default_rng(1)))
    assert pruned.training and next(pruned.parameters()).dtype == torch.float64
    assert not pruned_from_full(full20, "1" * 464).training


# --- repair ---------------------------------------------------------------------------------


def test_repair_keeps_largest_norm_channel(full20: PruneResNet) -> None:
    state = {k: v.clone() for k, v in full20.state_dict().items()}
    state["stages.0.1.conv1.weight"][5] *= 50  # stage1.block2's strongest filter: channel 5
    state["stages.1.2.conv2.weight"][7] *= 50  # stage2 residual: one of its writers, channel 7
    mid, stage2 = _group(20, "stage1.block2"), _group(20, "stage2")
    enc = _with_bits(_with_bits("1" * 464, mid.start, "0" * 16), stage2.start, "0" * 32)

    repaired = repair_encoding(enc, 20, state)
    assert repaired[mid.start:mid.stop] == "0" * 5 + "1" + "0" * 10
    assert repaired[stage2.start:stage2.stop] == "0" * 7 + "1" + "0" * 24
    assert repaired.count("0") == enc.count("0") - 2  # nothing else changed
    # Without weights: channel 0.
    blind = repair_encoding(enc, 20)
    assert blind[mid.start] == "1" and blind[stage2.start] == "1"
    assert blind.count("0") == enc.count("0") - 2

    # pruned_from_full repairs by norm and records the repaired encoding.
    full = build_prune_resnet(20)
    full.load_state_dict(state)
    pruned = pruned_from_full(full, enc)
    assert pruned.arch["encoding"] == repaired
    assert pruned.stages[0][1].conv1.out_channels == 1
    assert torch.equal(pruned.stages[0][1].conv1.weight[0], state["stages.0.1.conv1.weight"][5])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p_keep=st.floats(0.01, 1.0))
def test_keep_largest_keeps_each_groups_count_of_its_largest_norm_channels(full20: PruneResNet, seed: int,
                                                                           p_keep: float) -> None:
    scores = channel_scores(full20.state_dict(), 20)
    enc = "".join("1" if b else "0" for b in np.random.default_rng(seed).random(464) < p_keep)
    kept = keep_largest(enc, 20, scores)
    assert keep_largest(kept, 20, scores) == kept  # idempotent
    for g in encoding_groups(20):
        bits, out = enc[g.start:g.stop], kept[g.start:g.stop]
        assert out.count("1") == max(1, bits.count("1"))  # how many: the encoding's (at least one)
        chosen = [scores[g.name][i] for i, b in enumerate(out) if b == "1"]
        dropped = [scores[g.name][i] for i, b in enumerate(out) if b == "0"]
        assert not dropped or min(chosen) >= max(dropped)  # which: the largest norms
    # an all-zero group gets the channel the norm repair would keep
    assert keep_largest("0" * 464, 20, scores) == repair_encoding("0" * 464, 20, full20.state_dict())


def test_keep_largest_follows_the_base_weights(full20: PruneResNet) -> None:
    state = {k: v.clone() for k, v in full20.state_dict().items()}
    state["stages.0.1.conv1.weight"][[3, 9]] *= 50  # stage1.block2's two strongest filters
    mid = _group(20, "stage1.block2")
    enc = _with_bits("1" * 464, mid.start, "1100000000000000")  # two kept: channels 0 and 1
    kept = keep_largest(enc, 20, channel_scores(state, 20))
    assert kept[mid.start:mid.stop] == "0001000001000000"
    assert kept[:mid.start] + kept[mid.stop:] == enc[:mid.start] + enc[mid.stop:]  # full groups unchanged


def test_all_zero_encoding_builds_one_channel_per_group() -> None:
    model = build_prune_resnet(20, "0" * 464)
    assert model.arch["encoding"] == repair_encoding("0" * 464, 20)
    assert model.arch["encoding"].count("1") == len(encoding_groups(20))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_repair_rejects_foreign_weights() -> None:
    with pytest.raises(InputError) as err:
        repair_encoding("0" * 464, 20, {"stem.conv.weight": torch.zeros(8, 3, 3, 3)})
    assert err.value.field == "full_state_dict"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "fragment"), [
    ("1" * 463, "464 bits"),
    ([1] * 465, "got 465"),
    ("1" * 100 + "2" + "1" * 363, "position 100"),
    ("1" * 200 + " " + "1" * 263, "position 200"),
    ([1] * 463 + [2], "position 463"),
    ([1] * 463 + [0.5], "0 or 1"),
    (["1"] * 464, "0 or 1"),
    (np.ones((2, 232), dtype=int), "1-D"),
    (12, "list of 0/1"),
])
def test_validation_errors_name_the_field(encoding: object, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        validate_encoding(encoding, 20, field="prune.encoding")  # type: ignore[arg-type]
    assert err.value.field == "prune.encoding"
    assert fragment in str(err.value)
    with pytest.raises(InputError) as err:
        build_prune_resnet(20, encoding)  # type: ignore[arg-type]
    assert err.value.field == "encoding"


def test_validation_accepts_lists_arrays_strings() -> None:
    bits = [1, 0] * 232
    expected = "10" * 232
    assert validate_encoding(bits, 20) == expected
    assert validate_encoding(np.array(bits, dtype=bool), 20) == expected
    assert validate_encoding(np.array(bits, dtype=np.int8), 20) == expected
    assert validate_encoding(expected, 20) == expected


@pytest.mark.parametrize(("call", "field"), [
    (lambda: build_prune_resnet(18), "depth"),
    (lambda: build_prune_resnet(True), "depth"),  # type: ignore[arg-type]
    (lambda: encoding_length(21), "depth"),
    (lambda: build_prune_resnet(20, num_classes=0), "num_classes"),
    (lambda: random_encoding(20, np.random.default_rng(0), p_keep=0.0), "p_keep"),
    (lambda: random_encoding(20, np.random.default_rng(0), p_keep=1.5), "p_keep"),
    (lambda: pruned_from_full(build_prune_resnet(20, "0" * 464), "1" * 464), "full_model"),
    (lambda: pruned_from_full(torch.nn.Linear(2, 2), "1" * 464), "full_model"),
    (lambda: build_from_desc({"type": "PruneResNet", "depth": 21}), "desc.depth"),
    (lambda: build_from_desc({"type": "PruneResNet"}), "desc.depth"),
    (lambda: build_from_desc({"type": "PruneResNet", "depth": 20, "encoding": "01"}),
     "desc.encoding"),
    (lambda: build_from_desc({"type": "PruneResNet", "depth": 20, "width": 2}), "desc"),
])
def test_bad_arguments_name_the_field(call, field: str) -> None:
    with pytest.raises(InputError) as err:
        call()
    assert err.value.field == field


# --- random encodings -----------------------------------------------------------------------


def test_random_encoding_is_seeded_and_repaired() -> None:
    a = random_encoding(32, np.random.default_rng(42), p_keep=0.3)
    assert a == random_encoding(32, np.random.default_rng(42), p_keep=0.3)
    assert a != random_encoding(32, np.random.default_rng(43), p_keep=0.3)
    assert len(a) == 688 and 0.2 < a.count("1") / 688 < 0.4
    assert random_encoding(20, np.random.default_rng(0), p_keep=1.0) == "1" * 464
    sparse = random_encoding(56, np.random.default_rng(0), p_keep=0.01)
    assert all("1" in sparse[g.start:g.stop] for g in encoding_groups(56))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p_keep=st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9, 1.0]),
       batch=st.integers(1, 3), num_classes=st.integers(1, 12))
def test_property_random_encodings(full20: PruneResNet, seed: int, p_keep: float, batch: int,
                                   num_classes: int) -> None:
    # Raw bits (all-zero groups included when p_keep is small): build repairs them.
    rng = np.random.default_rng(seed)
    bits = (rng.random(464) < p_keep).astype(int).tolist()
    model = build_prune_resnet(20, bits, num_classes=num_classes).eval()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed % 1000))
    with torch.no_grad():
        assert model(x).shape == (batch, num_classes)
    macs, params = count_macs_params(model, INPUT)
    # The full net's counts with this many classes (the FC is 64 → num_classes).
    full_macs = FULL_COUNTS[20][0] + 64 * (num_classes - 10)
    full_params = FULL_COUNTS[20][1] + 65 * (num_classes - 10)
    if 0 in bits:  # any dropped channel makes the network really smaller
        assert macs < full_macs and params < full_params
    else:
        assert (macs, params) == (full_macs, full_params)

    pruned = pruned_from_full(full20, bits)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _masked_full_forward(full20, pruned.arch["encoding"], x),
                                   atol=1e-5, rtol=1e-5)


# --- desc round trip ------------------------------------------------------------------------


def test_desc_round_trip(full20: PruneResNet) -> None:
    enc = random_encoding(20, np.random.default_rng(9), p_keep=0.5)
    model = pruned_from_full(full20, enc).eval()
    desc = json.loads(json.dumps({"type": "PruneResNet", **model.arch}))
    assert desc == {"type": "PruneResNet", "depth": 20, "encoding": enc, "num_classes": 10}

    rebuilt = build_from_desc(desc).eval()
    assert isinstance(rebuilt, PruneResNet) and rebuilt.arch == model.arch
    rebuilt.load_state_dict(model.state_dict())  # strict: same layers, same shapes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert count_macs_params(rebuilt, INPUT) == count_macs_params(model, INPUT)
    # No encoding in the desc means the full network; num_classes defaults to 10.
    assert from_desc({"depth": 32}).arch == {"depth": 32, "encoding": "1" * 688, "num_classes": 10}
