"""Engine: device resolution and resumable training (a killed fit continues as if never stopped)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core.errors import InputError
from data.coco import load_coco
from data.coco_digits import make_digits_coco
from engine.classification import TrainConfig, fit
from engine.detection import read_checkpoint
from engine.detector_fit import DetectorOptim, LoaderCycle, fit_steps, latency_ms, score, train_loader
from engine.runtime import model_on, resolve_device
from nas_models.detector import build_detector

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS = 7  # 16 images in batches of 4: 4 steps a pass, so a run crosses a pass boundary
OPTIM = DetectorOptim(learning_rate=0.01, batch_size=4, warmup_steps=2)


class Killed(Exception):
    """Stands in for the process dying right after a step (its checkpoint already written)."""




# -- device ---------------------------------------------------------------------------------

def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_resolve_device_cpu_never_asks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> bool:
        raise AssertionError("'cpu' must not touch CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("count, spec, expected", [
    (0, "auto", "cpu"), (1, "auto", "cuda:0"), (1, "cuda", "cuda:0"), (2, "cuda:1", "cuda:1"),
])
def test_resolve_device_ok(monkeypatch: pytest.MonkeyPatch, count: int, spec: str, expected: str) -> None:
    _fake_cuda(monkeypatch, count)
    assert resolve_device(spec) == torch.device(expected)


@pytest.mark.parametrize("count, spec, words", [
    (0, "cuda", "no CUDA GPU"), (0, "cuda:0", "no CUDA GPU"), (1, "cuda:1", "cuda:0 to cuda:0"),
    (2, "gpu", "'auto', 'cpu', 'cuda' or 'cuda:N'"), (2, "cuda:x", "'cuda:N'"), (2, "", "not a device"),
    (2, "mps", "not a device"),
])
def test_resolve_device_refuses(monkeypatch: pytest.MonkeyPatch, count: int, spec: str, words: str) -> None:
    _fake_cuda(monkeypatch, count)
    with pytest.raises(InputError) as err:
        resolve_device(spec)
    assert err.value.field == "device" and words in str(err.value)
    assert "\n" not in str(err.value)


def test_model_on_restores_after_error() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError), model_on(model, resolve_device("cpu")) as dev:
        assert dev == torch.device("cpu")
        raise RuntimeError("boom")
    assert next(model.parameters()).device == torch.device("cpu")


@pytest.mark.parametrize("family", ["spos", "resnet"])
def test_channels_last_inference_gives_the_same_outputs(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's channels_last inference (engine/runtime.py): the same weights give the same
    outputs within float tolerance, and the model comes back in the default memory format."""
    from torch.utils.data import DataLoader, TensorDataset

    from engine import runtime
    from engine.classification import evaluate, hits
    from nas_models.prune_resnet import build_prune_resnet
    from nas_models.spos_shufflenet import build_subnet

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=g), torch.randint(0, 10, (24,), generator=g))
    loader = DataLoader(data, batch_size=8)
    torch.manual_seed(0)
    model = build_subnet([0, 1, 2, 3] * 5, "small") if family == "spos" else build_prune_resnet(20)
    scored = {}
    for channels_last in (False, True):
        monkeypatch.setattr(runtime, "CHANNELS_LAST_ON_CPU", channels_last)
        scored[channels_last] = (evaluate(model, loader, 1)["loss"], hits(model, loader))
        assert all(p.is_contiguous() for p in model.parameters())  # back in the default format
    assert abs(scored[False][0] - scored[True][0]) < 1e-3
    assert torch.equal(scored[False][1], scored[True][1])


def test_training_survives_a_strided_1x1_conv_with_few_channels() -> None:
    """A pruned ResNet-56 candidate's shortcut (1x1, stride 2, 6 -> 19 channels on 16x16) made
    oneDNN's channels_last backward spin forever inside a search (2 threads); alone, on one thread,
    it aborts with a double free. Training stays in the default format. In a subprocess: a
    regression must fail, not take pytest down."""
    threads = 1
    import subprocess
    import sys

    code = (
        "import torch\nfrom torch import nn\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "from engine.classification import train_one_epoch\n"
        f"torch.set_num_threads({threads})\n"
        "model = nn.Sequential(nn.Conv2d(6, 19, 1, stride=2, bias=False), nn.Flatten(), nn.LazyLinear(10))\n"
        "model(torch.randn(1, 6, 16, 16))\n"
        "data = TensorDataset(torch.randn(64, 6, 16, 16), torch.randint(0, 10, (64,)))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "train_one_epoch(model, DataLoader(data, batch_size=64), opt, None, nn.CrossEntropyLoss())\n"
        "print('trained')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]


def test_nested_model_on_leaves_the_format_to_the_outer_block() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with model_on(model, None, channels_last=True):
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        with model_on(model, None):
            assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous()
    # a training block (the default format) keeps it for the inference blocks inside it too
    with model_on(model, None):
        with model_on(model, None, channels_last=True):
            assert model[0].weight.is_contiguous() and not model[0].weight.is_contiguous(
                memory_format=torch.channels_last)
    assert not hasattr(model, "_spnas_memory_format")


# -- detector: fit_steps checkpoints ---------------------------------------------------------

@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory):
    digits = make_digits_coco(tmp_path_factory.mktemp("engine") / "coco", num_train=16, num_val=5,
                              canvas_size=64)
    return (load_coco(digits.train_images, digits.train_json),
            load_coco(digits.val_images, digits.val_json))


def _detector(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_detector("1-2", base_width=8, fpn_channels=16, representation_size=32, image_size=64,
                          rpn_pre_nms_top_n=50, rpn_post_nms_top_n=20, box_batch_size_per_image=16)


def _fit(coco, *, optim: DetectorOptim = OPTIM, checkpoint: Path | None = None, every: int = 3,
         kill_at: int | None = None, model_seed: int = 0) -> tuple[nn.Module, list[int], dict[str, float]]:
    """A fresh process's view: new model, new loader (same seed), global RNG seeded as a stage does."""
    model = _detector(model_seed)
    torch.manual_seed(123)
    seen: list[int] = []

    def on_step(step: int, losses: dict[str, float]) -> None:
        seen.append(step)
        if step == kill_at:
            raise Killed

    loader = train_loader(coco[0], optim.batch_size, seed=7)
    try:
        losses = fit_steps(model, loader, STEPS, optim, on_step, device=resolve_device("cpu"),
                           checkpoint=checkpoint, checkpoint_every=every)
    except Killed:
        losses = {}
    return model, seen, losses


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], rtol=0, atol=1e-7) for k in sa)


def test_fit_steps_resume_equals_uninterrupted(coco, tmp_path: Path) -> None:
    straight, seen, _ = _fit(coco)
    assert seen == list(range(STEPS))

    ckpt = tmp_path / "ck" / "train.pth"
    # Killed at step 4: the last save was after 3 steps, 3 batches into the first pass of 4.
    _, seen, _ = _fit(coco, checkpoint=ckpt, kill_at=4)
    assert seen == [0, 1, 2, 3, 4] and read_checkpoint(ckpt)["step"] == 3
    # Another init proves the weights come from the checkpoint, not from the seed.
    resumed, seen, losses = _fit(coco, checkpoint=ckpt, model_seed=1)
    assert seen == [3, 4, 5, 6]
    assert losses["steps"] == 4.0 and "loss" in losses  # means over this call's steps
    assert _same_weights(resumed, straight)

    saved = read_checkpoint(ckpt)
    assert saved["step"] == STEPS and saved["epoch"] == 1  # one full pass done, 3 batches into the next
    assert saved["config"]["optim"]["learning_rate"] == OPTIM.learning_rate and saved["config"]["steps"] == STEPS
    assert {"model", "optimizer", "scheduler", "rng", "data"} <= set(saved)
    assert all(t.device.type == "cpu" for t in saved["model"].values())
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["train.pth"]  # no temp file left

    # A finished checkpoint: nothing left to train, the final weights are restored.
    again, seen, losses = _fit(coco, checkpoint=ckpt, model_seed=2)
    assert seen == [] and losses == {"steps": 0.0} and _same_weights(again, straight)


def test_fit_steps_resume_across_a_pass_boundary(coco, tmp_path: Path) -> None:
    straight, _, _ = _fit(coco, optim=replace(OPTIM, schedule="constant"))
    ckpt = tmp_path / "train.pth"
    _fit(coco, optim=replace(OPTIM, schedule="constant"), checkpoint=ckpt, every=2, kill_at=4)
    assert read_checkpoint(ckpt)["step"] == 4  # exactly the end of the first pass
    resumed, seen, _ = _fit(coco, optim=replace(OPTIM, schedule="constant"), checkpoint=ckpt, every=2)
    assert seen == [4, 5, 6] and _same_weights(resumed, straight)


def test_fit_steps_ignores_a_checkpoint_of_another_config(coco, tmp_path: Path) -> None:
    ckpt = tmp_path / "train.pth"
    _fit(coco, checkpoint=ckpt, kill_at=4)
    other = replace(OPTIM, learning_rate=0.005)
    _, seen, _ = _fit(coco, optim=other, checkpoint=ckpt)
    assert seen == list(range(STEPS))  # started fresh
    assert read_checkpoint(ckpt)["config"]["optim"]["learning_rate"] == 0.005  # and overwrote it

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    _, seen, _ = _fit(coco, checkpoint=junk, kill_at=0)
    assert seen == [0]


@pytest.mark.parametrize("own_generator", [True, False])
def test_loader_cycle_seek_replays_the_same_batches(own_generator: bool) -> None:
    # Without its own generator a loader shuffles from the global RNG, which training also draws
    # from (here: torch.rand between batches); the checkpoint's RNG state is set after seek.
    data = TensorDataset(torch.arange(10))

    def loader() -> DataLoader:
        gen = torch.Generator().manual_seed(5) if own_generator else None
        return DataLoader(data, batch_size=3, shuffle=True, generator=gen)

    def take(batches: Iterator, n: int) -> list[list[int]]:
        out = []
        for batch in itertools.islice(batches, n):
            out.append(batch[0].tolist())
            torch.rand(1)
        return out

    torch.manual_seed(0)
    straight = LoaderCycle(loader())
    it = iter(straight)
    firsts = take(it, 6)  # 4 batches a pass: stops 2 into the second
    position, rng = straight.position(), torch.get_rng_state()
    tail = take(it, 5)
    assert position["epoch"] == 1 and position["offset"] == 2

    torch.manual_seed(1)  # a new process: another global RNG state
    resumed = LoaderCycle(loader())
    resumed.seek(position)
    torch.set_rng_state(rng)
    assert take(iter(resumed), 5) == tail
    assert firsts[:4] != firsts[4:] + tail[:2]  # passes really are reshuffled


def test_score_and_latency_on_a_device(coco) -> None:
    model = _detector()
    metrics = score(model, coco[1], max_images=2, device=resolve_device("cpu"))
    assert set(metrics) >= {"mAP", "mAP50"}
    assert latency_ms(model, 64, runs=1, warmup=0) > 0
    assert next(model.parameters()).device.type == "cpu"


# -- classifier: fit checkpoints -------------------------------------------------------------

class _Noisy(Dataset):
    """Draws from the global torch RNG per item, as augmentation does: resume must restore it."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(24, 6, generator=g)
        self.y = torch.randint(0, 3, (24,), generator=g)
        self.transform = None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i] + 0.1 * torch.randn(6)
        return (x if self.transform is None else self.transform(x)), self.y[i]


class _Jitter:
    """An augmentation with its own generator, like data.cifar.CifarAugment."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.randn(x.shape, generator=self.generator)


def _classify(cfg: TrainConfig, checkpoint: Path | None, kill_after: int | None = None,
              model_seed: int = 0, augment: bool = False) -> tuple[nn.Module, list[dict[str, float]], list[int]]:
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    torch.manual_seed(99)
    data = _Noisy()
    data.transform = _Jitter(7) if augment else None
    train = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    val = DataLoader(_Noisy(), batch_size=8)
    epochs: list[int] = []

    def on_epoch(metrics: dict[str, float]) -> None:
        epochs.append(int(metrics["epoch"]))
        if metrics["epoch"] == kill_after:
            raise Killed

    try:
        history = fit(model, train, val, cfg, checkpoint_path=checkpoint, topk=2, on_epoch=on_epoch,
                      device=resolve_device("cpu"))
    except Killed:
        history = []
    return model, history, epochs


def test_classifier_fit_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, learning_rate=0.05, warmup_epochs=1)
    straight, history, _ = _classify(cfg, None)
    ckpt = tmp_path / "cls.pth"
    _classify(cfg, ckpt, kill_after=2)
    saved = read_checkpoint(ckpt)
    assert saved["epoch"] == 2 and saved["config"]["train"]["epochs"] == 4
    assert {"model", "optimizer", "scheduler", "history", "rng", "loader_rng"} <= set(saved)

    resumed, resumed_history, epochs = _classify(cfg, ckpt, model_seed=1)
    assert epochs == [3, 4]
    assert resumed_history == history  # the two finished epochs come back from the checkpoint
    assert _same_weights(resumed, straight)


def test_classifier_fit_resume_restores_the_augmentation_generator(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, learning_rate=0.05)
    straight, history, _ = _classify(cfg, None, augment=True)
    ckpt = tmp_path / "aug.pth"
    _classify(cfg, ckpt, kill_after=1, augment=True)
    assert read_checkpoint(ckpt)["augment_rng"] is not None
    resumed, resumed_history, epochs = _classify(cfg, ckpt, model_seed=1, augment=True)
    assert epochs == [2, 3] and resumed_history == history
    assert _same_weights(resumed, straight)


def test_classifier_fit_ignores_a_checkpoint_of_another_config(tmp_path: Path) -> None:
    ckpt = tmp_path / "cls.pth"
    _classify(TrainConfig(epochs=3, learning_rate=0.05), ckpt, kill_after=1)
    _, history, epochs = _classify(TrainConfig(epochs=2, learning_rate=0.02), ckpt)
    assert epochs == [1, 2] and len(history) == 2
    assert read_checkpoint(ckpt)["config"]["train"]["learning_rate"] == 0.02

    # An old-format checkpoint (config was the bare TrainConfig) is foreign, not a crash.
    cfg = TrainConfig(epochs=1)
    torch.save({"model": {}, "config": cfg.__dict__, "epoch": 1, "history": []}, ckpt)
    _, _, epochs = _classify(cfg, ckpt)
    assert epochs == [1]


def test_a_seeded_training_repeats_bit_for_bit_in_a_fresh_process() -> None:
    """Same seed, same thread count, same machine: identical weights from two processes (string
    hashing salted differently). A different thread count or another CPU's kernels change the
    floats (seen here: 1 vs 2 threads), so figures repeat only on like machines (README)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "from engine.runtime import configure_torch\nfrom nas_models.prune_resnet import build_prune_resnet\n"
        "import sys\nconfigure_torch(int(sys.argv[1]), 3)\n"
        "model = build_prune_resnet(20, num_classes=10)\n"
        "data = TensorDataset(torch.randn(96, 3, 32, 32), torch.randint(0, 10, (96,)))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)\n"
        "for _ in range(2):\n"
        "    for x, y in DataLoader(data, batch_size=32, shuffle=True):\n"
        "        opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()\n"
        "print(hashlib.sha1(b''.join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())\n")
    repo = Path(__file__).resolve().parent.parent

    def weights(threads: int, hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True,
                              timeout=300, cwd=repo, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    first = weights(1, "1")
    assert len(first) == len(hashlib.sha1().hexdigest())
    assert weights(1, "2") == first
