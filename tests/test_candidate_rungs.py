"""Candidates trained in rungs (successive halving): a candidate trained to step a, checkpointed,
and promoted to step b ends with the very weights (torch.equal) of one run of b steps of the same
max_steps schedule, for SP-NAS (train_candidate), prune-ea (evaluate_candidate) and SANAS
(evaluate_candidate); each rung's checkpoint is its own file, listed in the result's files and
never rewritten by a later rung; without the rung keys a candidate's result is as before.

Tiny data (16 digit canvases of 64 px, 40 CIFAR-format digits, 12 faces of 96 px), a few steps,
one thread (bitwise-repeatable CPU kernels)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import InputError
from engine.detection import read_checkpoint
from params.models import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RUNTIME = Runtime(device="cpu", num_threads=1)




def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _rung(candidate: dict[str, Any], rung: int, steps: int, max_steps: int, resume_from: str | None = None
          ) -> dict[str, Any]:
    """The keys the search driver adds to a candidate's input in a multi-fidelity stage."""
    return {**candidate, "rung": rung, "steps": steps, "max_steps": max_steps, "resume_from": resume_from}


def _check_rung_files(out: dict[str, Any], out_dir: Path, cid: Any, rung: int) -> None:
    ckpt = Path(out["checkpoint"])
    assert ckpt == out_dir / f"ckpt_{cid}_r{rung}.pth" and ckpt.is_file()
    assert str(ckpt) in out["files"] and out["model_path"] == str(out_dir / f"model_{cid}.pth")
    assert out["performance"]["rung"] == rung and out["performance"]["train_steps"] == out["steps"]
    assert json.loads((out_dir / f"performance_{cid}.json").read_text())["rung"] == rung


def _promotion_chain(evaluate, candidate: dict[str, Any], stops: list[int], max_steps: int, out_dir: Path,
                     ) -> list[dict[str, Any]]:
    """Rung 0 to stops[0], then each promotion from the rung below's checkpoint; checks that no
    rung rewrites a lower rung's checkpoint."""
    outs: list[dict[str, Any]] = []
    for rung, steps in enumerate(stops):
        before = [(o["checkpoint"], _digest(o["checkpoint"])) for o in outs]
        outs.append(evaluate(_rung(candidate, rung, steps, max_steps, outs[-1]["checkpoint"] if outs else None),
                             out_dir))
        _check_rung_files(outs[-1], out_dir, candidate["id"], rung)
        assert [(p, _digest(p)) for p, _ in before] == before
        assert read_checkpoint(outs[-1]["checkpoint"])["step"] == steps
    assert len({o["checkpoint"] for o in outs}) == len(stops)
    return outs


# -- SP-NAS: train_candidate over engine.detector_fit.fit_steps ------------------------------------

SP_BATCH = 4   # 16 images: 4 batches a pass


@pytest.fixture(scope="module")
def spnas_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from data.coco import load_coco
    from data.coco_digits import make_digits_coco
    from nas_models.detector import build_detector
    from params.models import DetectorTrainParams
    from tasks.spnas.detectors import detector_desc
    from tasks.spnas.split import Split

    root = tmp_path_factory.mktemp("rungs-spnas")
    digits = make_digits_coco(root / "coco", num_train=16, num_val=4, canvas_size=64)
    num_classes = load_coco(digits.train_images, digits.train_json).num_classes
    knobs = dict(base_width=8, fpn_channels=16, representation_size=32, image_size=64, rpn_pre_nms_top_n=50,
                 rpn_post_nms_top_n=20, box_batch_size_per_image=16, num_classes=num_classes)
    torch.manual_seed(0)
    parent = build_detector("1-1", **knobs)  # a smaller parent: some blocks inherited (and frozen), some not
    parent_path = root / "parent.pth"
    torch.save(parent.state_dict(), parent_path)
    data = Split(train_images=str(digits.train_images), train_json=str(digits.train_json),
                 val_images=str(digits.val_images), val_json=str(digits.val_json),
                 search_train_json=str(digits.train_json), search_val_json=str(digits.train_json),
                 labels=(), num_classes=num_classes, counts={}, classification=None)  # type: ignore[arg-type]
    desc = detector_desc(build_detector("1-2", **knobs))
    return {"data": data, "optimizer": DetectorTrainParams(learning_rate=0.01, batch_size=SP_BATCH, eval_max_images=2),
            "candidate": {"id": 3, "code": "1-2", "desc": desc, "parent_model": str(parent_path), "freeze": True}}


def _spnas(setup: dict[str, Any], steps: int = 0):
    from tasks.spnas.train_candidate import train_candidate

    def run(candidate: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return train_candidate(candidate, setup["data"], setup["optimizer"], steps, 7, RUNTIME, out_dir,
                               stage="serial")

    return run


SPNAS_KEYS = {"mAP", "mAP50", "macs", "params", "inherited_ratio", "inherited_tensors", "train_steps", "lr_scale",
              "train_seconds", "final_loss"}


def test_spnas_promotion_equals_one_run(spnas_setup: dict[str, Any], tmp_path: Path) -> None:
    cand, total = spnas_setup["candidate"], 8  # warm-up 2 steps of the 8-step schedule
    # Without rungs: as before (no checkpoint, the same performance keys and files).
    plain = _spnas(spnas_setup, steps=total)(cand, tmp_path / "plain")
    assert set(plain["performance"]) == SPNAS_KEYS and "checkpoint" not in plain and len(plain["files"]) == 3
    assert not list((tmp_path / "plain").glob("ckpt_*"))

    # One rung reaching max_steps: the same training as without rungs.
    straight = _spnas(spnas_setup)(_rung(cand, 0, total, total), tmp_path / "straight")
    assert _same(_weights(straight["model_path"]), _weights(plain["model_path"]))
    assert {k: v for k, v in straight["performance"].items() if k not in ("rung", "train_seconds")} == \
        {k: v for k, v in plain["performance"].items() if k != "train_seconds"}

    # 3 steps (mid-pass, still in warm-up), then promoted to 6 (across a pass boundary), then to 8.
    outs = _promotion_chain(_spnas(spnas_setup), cand, [3, 6, total], total, tmp_path / "rungs")
    assert _same(_weights(outs[-1]["model_path"]), _weights(straight["model_path"]))
    assert outs[-1]["performance"]["mAP"] == straight["performance"]["mAP"]
    assert outs[-1]["performance"]["inherited_ratio"] == straight["performance"]["inherited_ratio"] > 0
    meta = read_checkpoint(outs[0]["checkpoint"])["meta"]
    assert meta["lr_scale"] == 1.0 and meta["frozen"]  # inherited blocks stay frozen on the promotions


def test_spnas_promotion_keeps_the_halved_learning_rate(spnas_setup: dict[str, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rung 0 diverged at the search lr and trained at half of it: the promotion continues at half
    (no retry at the full lr), as one run would have."""
    import tasks.spnas.train_candidate as tc

    real, full = tc.fit_steps, spnas_setup["optimizer"].learning_rate

    def diverges_at_full_lr(model, loader, steps, optim, *args, **kwargs):
        if optim.learning_rate == full:
            raise FloatingPointError("non-finite loss at step 0")
        return real(model, loader, steps, optim, *args, **kwargs)

    monkeypatch.setattr(tc, "fit_steps", diverges_at_full_lr)
    cand = {**spnas_setup["candidate"], "parent_model": None, "freeze": False}
    straight = _spnas(spnas_setup)(_rung(cand, 0, 4, 4), tmp_path / "straight")
    outs = _promotion_chain(_spnas(spnas_setup), cand, [2, 4], 4, tmp_path / "rungs")
    assert [o["performance"]["lr_scale"] for o in outs] == [0.5, 0.5] == [straight["performance"]["lr_scale"]] * 2
    assert _same(_weights(outs[-1]["model_path"]), _weights(straight["model_path"]))


def test_spnas_refuses_a_foreign_checkpoint(spnas_setup: dict[str, Any], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as err:
        _spnas(spnas_setup)(_rung(spnas_setup["candidate"], 1, 2, 4, str(junk)), tmp_path / "out")
    assert err.value.field == "resume_from"


def test_fit_steps_stops_and_continues(tmp_path: Path) -> None:
    """engine level: a stop at the end of a pass, one in mid-pass, a resume_from already at the stop
    (nothing trained, this stop's file written), and the refusals."""
    from data.coco import load_coco
    from data.coco_digits import make_digits_coco
    from engine.detector_fit import DetectorOptim, fit_steps, train_loader
    from nas_models.detector import build_detector

    digits = make_digits_coco(tmp_path / "coco", num_train=8, num_val=2, canvas_size=64)
    coco = load_coco(digits.train_images, digits.train_json)
    optim = DetectorOptim(learning_rate=0.01, batch_size=4, warmup_steps=2, schedule="cosine")

    def fit(stop: int | None, ckpt: Path | None = None, resume: Path | None = None, total: int = 5):
        torch.manual_seed(0)
        model = build_detector("1-2", base_width=8, fpn_channels=16, representation_size=32, image_size=64,
                               rpn_pre_nms_top_n=50, rpn_post_nms_top_n=20, box_batch_size_per_image=16,
                               num_classes=coco.num_classes)
        torch.manual_seed(1)
        out = fit_steps(model, train_loader(coco, 4, 3), total, optim, checkpoint=ckpt, stop_at=stop,
                        resume_from=resume)
        return model.state_dict(), out

    straight, _ = fit(None)
    _, out = fit(2, tmp_path / "a.pth")  # 2 batches a pass: the stop ends a pass
    assert out["steps"] == 2.0
    _, out = fit(3, tmp_path / "b.pth", tmp_path / "a.pth")
    assert out["steps"] == 1.0
    _, out = fit(3, tmp_path / "b2.pth", tmp_path / "b.pth")  # already there: nothing to train
    assert out == {"steps": 0.0} and read_checkpoint(tmp_path / "b2.pth")["step"] == 3
    resumed, out = fit(5, tmp_path / "c.pth", tmp_path / "b2.pth")
    assert out["steps"] == 2.0 and _same(resumed, straight)
    with pytest.raises(InputError, match="past the stop") as err:
        fit(2, tmp_path / "d.pth", tmp_path / "c.pth")
    assert err.value.field == "resume_from"
    with pytest.raises(InputError, match="another training configuration"):
        fit(5, tmp_path / "d.pth", tmp_path / "a.pth", total=6)
    with pytest.raises(InputError) as err:
        fit(6, tmp_path / "d.pth")
    assert err.value.field == "stop_at"


# -- prune-ea: evaluate_candidate over tasks.cifar.training.finetune_to ----------------------------

PRUNE_BATCH = 8  # 40 training images: 5 batches a pass


@pytest.fixture(scope="module")
def prune_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import numpy as np

    from nas_models.prune_resnet import build_prune_resnet, encoding_length
    from params.models import CifarData
    from tasks.cifar.data import CifarSplit, cifar_sources
    from tasks.orchestration.files import write_json
    from tasks.prune_ea.train_base import TrainedBase

    root = tmp_path_factory.mktemp("rungs-prune")
    full = cifar_sources(CifarData(), 0, root)
    split = json.loads(Path(full.split_file).read_text())
    small = write_json(root / "small_split.json", {"train": split["train"][:40], "val": split["val"][:16]})
    data = CifarSplit(cifar_dir=full.cifar_dir, split_file=str(small), labels=full.labels,
                      counts={"train": 40, "val": 16, "test": full.counts["test"]}, source="tiny")
    torch.manual_seed(0)
    base_model = build_prune_resnet(20, num_classes=len(full.labels))
    base_path = root / "model_0.pth"
    torch.save(base_model.state_dict(), base_path)
    base = TrainedBase(name="base", desc={"type": "PruneResNet", **base_model.arch}, model_path=str(base_path),
                       performance={}, history=())
    rng = np.random.default_rng(0)
    encoding = "".join("1" if b else "0" for b in rng.uniform(size=encoding_length(20)) < 0.6)
    return {"data": data, "base": base, "candidate": {"id": 5, "generation": 0, "encoding": encoding}}


def _prune(setup: dict[str, Any], finetune_steps: int = 0):
    from params.models import PruneSearchParams
    from tasks.prune_ea.prune_search import evaluate_candidate

    cfg = PruneSearchParams(finetune_steps=finetune_steps, finetune_lr=0.05, bn_recalibration_batches=2)

    def run(candidate: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return evaluate_candidate(candidate, setup["base"], setup["data"], cfg, PRUNE_BATCH, 11, RUNTIME, out_dir)

    return run


def test_prune_promotion_equals_one_run(prune_setup: dict[str, Any], tmp_path: Path) -> None:
    cand, total = prune_setup["candidate"], 12  # over two passes of 5 batches
    plain = _prune(prune_setup, finetune_steps=total)(cand, tmp_path / "plain")
    assert set(plain["performance"]) == {"acc", "macs", "params", "kept_bits"} and "checkpoint" not in plain
    assert len(plain["files"]) == 3 and not list((tmp_path / "plain").glob("ckpt_*"))

    # One rung reaching max_steps: finetune_to's batches, augmentation and updates are finetune's.
    straight = _prune(prune_setup)(_rung(cand, 0, total, total), tmp_path / "straight")
    assert _same(_weights(straight["model_path"]), _weights(plain["model_path"]))
    assert straight["performance"]["acc"] == plain["performance"]["acc"]

    # Stops in mid-pass (3), at the end of a pass (5) and in the next pass (7), then to the end.
    outs = _promotion_chain(_prune(prune_setup), cand, [3, 5, 7, total], total, tmp_path / "rungs")
    assert _same(_weights(outs[-1]["model_path"]), _weights(straight["model_path"]))
    assert outs[-1]["performance"]["acc"] == straight["performance"]["acc"]
    assert outs[-1]["desc"] == straight["desc"]


def test_prune_promotion_skips_the_bn_reestimation(prune_setup: dict[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.prune_ea.prune_search as ps

    rung0 = _prune(prune_setup)(_rung(prune_setup["candidate"], 0, 2, 4), tmp_path)
    calls: list[int] = []
    real = ps.recalibrate_bn
    monkeypatch.setattr(ps, "recalibrate_bn", lambda *a, **k: calls.append(1) or real(*a, **k))
    _prune(prune_setup)(_rung(prune_setup["candidate"], 1, 4, 4, rung0["checkpoint"]), tmp_path)
    assert calls == []


def test_finetune_batches_seek_replays_finetunes_order(prune_setup: dict[str, Any]) -> None:
    """A fresh loader sought to a saved position yields the very batches (augmentation included)
    the uninterrupted iteration went on with, at a stop in mid-pass and at the end of a pass."""
    import itertools

    from tasks.cifar.training import FinetuneBatches, loaders

    def batches() -> FinetuneBatches:
        return FinetuneBatches(loaders(prune_setup["data"], PRUNE_BATCH, 4)[0])

    for stop in (2, 5):
        straight = batches()
        it = iter(straight)
        head = list(itertools.islice(it, stop))
        position = straight.position()
        tail = list(itertools.islice(it, 8))
        resumed = batches()
        resumed.seek(position)
        again = list(itertools.islice(iter(resumed), 8))
        assert len(head) == stop and len(again) == len(tail) == 8
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, again))


# -- SANAS: evaluate_candidate over tasks.sanas.shared.train_tokens ---------------------------------

FACE_SIZE = 96


@pytest.fixture(scope="module")
def sanas_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from data.faces import make_faces_coco
    from nas_models.blazeface import INIT_TOKENS
    from params.models import FaceTrainParams
    from tasks.sanas.data import Faces

    faces = make_faces_coco(tmp_path_factory.mktemp("rungs-faces") / "faces", 8, 4, FACE_SIZE, 0)
    data = Faces(**{k: str(v) for k, v in faces.to_dict().items() if k != "root"}, source="tiny")
    return {"data": data, "train": FaceTrainParams(batch_size=4, learning_rate=0.01),
            "candidate": {"id": 2, "tokens": list(INIT_TOKENS), "temperature": 1.0, "skipped_before": 0}}


def _sanas(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, candidate_steps: int = 1):
    import tasks.sanas.search as ss
    from params.models import SanasSearchParams

    # The cost needs a measured latency table; it has nothing to do with training.
    monkeypatch.setattr(ss, "cost", lambda tokens, latency, size: {"macs": 1, "params": 2, "predicted_ms": 0.5})
    search = SanasSearchParams(candidate_steps=candidate_steps)

    def run(candidate: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return ss.evaluate_candidate(candidate, setup["data"], None, search, setup["train"], FACE_SIZE, 3, RUNTIME,
                                     out_dir)

    return run


def test_sanas_promotion_equals_one_run(sanas_setup: dict[str, Any], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cand, total = sanas_setup["candidate"], 5  # 2 batches a pass; cosine over 5 steps after 1 warm-up step
    plain = _sanas(sanas_setup, monkeypatch, candidate_steps=total)(cand, tmp_path / "plain")
    assert set(plain["performance"]) == {"AP50", "AP", "final_loss", "macs", "params", "predicted_ms", "train_steps",
                                         "train_seconds"}
    assert "checkpoint" not in plain and len(plain["files"]) == 4

    straight = _sanas(sanas_setup, monkeypatch)(_rung(cand, 0, total, total), tmp_path / "straight")
    assert _same(_weights(straight["model_path"]), _weights(plain["model_path"]))
    assert straight["performance"]["AP50"] == plain["performance"]["AP50"]

    outs = _promotion_chain(_sanas(sanas_setup, monkeypatch), cand, [3, total], total, tmp_path / "rungs")
    assert _same(_weights(outs[-1]["model_path"]), _weights(straight["model_path"]))
    assert outs[-1]["performance"]["AP"] == straight["performance"]["AP"]
    assert (tmp_path / "rungs" / "structure_2.txt").is_file()


def test_rung_run_names() -> None:
    from tasks.prune_ea.prune_search import _name as prune_name
    from tasks.sanas.search import _name as sanas_name
    from tasks.spnas.train_candidate import run_name

    for name in (run_name, prune_name, sanas_name):
        assert name({"id": 1}, "serial-1") == "serial-1"
        assert name({"id": 1, "rung": 0}, "serial-1") == "serial-1"
        assert name({"id": 1, "rung": 2}, "serial-1") == "serial-1-r2"
