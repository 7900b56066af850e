"""What the stages on CIFAR-format data share (prune-ea and spos; a stage imports another stage's
result class, never its code): the data of the `data` stage with its train/val split, loaders in
the model's input convention, training a classifier with the engine's classification loop,
scoring it, measuring it, and what a trained classifier hands to `export` (TrainedClassifier).
Plain functions: no Prefect, no MLflow."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.cifar import (CIFAR10_MEAN, CIFAR10_STD, CifarArrays, CifarNormalize, CifarSet, cifar_loaders,
                        read_cifar_batches)
from core.errors import InputError
from data.transforms import Preprocess
from engine.classification import TrainConfig, evaluate, fit
from latency.flops import count_macs_params
from nas_models.registry import build_from_desc
from params.models import ClassifierTrain
from tasks.cifar.data import CifarSplit
from tasks.orchestration.files import read_json, write_json
from tasks.orchestration.handoff import StageResult

EVAL_BATCH = 256
# Input conventions a network is trained (and exported) with: RGB normalised with the CIFAR
# mean/std, or the original SPOS release's BGR in [0, 255] (mean 0, std 1/255 after the /255).
INPUT_CONVENTIONS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...]]] = {
    "rgb": ("RGB", CIFAR10_MEAN, CIFAR10_STD),
    "bgr255": ("BGR", (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
}


@dataclass(frozen=True, kw_only=True)
class TrainedClassifier(StageResult):
    """What a stage that trains a classifier hands to `export`: the name it has in the comparison
    table, its architecture (`desc`, for build_from_desc), its weights and figures."""

    name: str
    desc: Mapping[str, Any]
    model_path: str
    performance: Mapping[str, Any] = field()  # required here: macs, params, acc at least


def load_data(data: CifarSplit) -> tuple[CifarSet, np.ndarray, np.ndarray]:
    """The CIFAR set of the `data` stage and its (train, val) index arrays."""
    return _read(data.cifar_dir, data.split_file)


@lru_cache(maxsize=2)
def _read(cifar_dir: str, split_file: str) -> tuple[CifarSet, np.ndarray, np.ndarray]:
    """Read once per process: every search candidate needs the same (read-only) arrays."""
    cifar = read_cifar_batches(cifar_dir, "data.dataset_dir")
    split = read_json(split_file)
    return cifar, np.asarray(split["train"], dtype=np.int64), np.asarray(split["val"], dtype=np.int64)


def loaders(data: CifarSplit, batch_size: int, seed: int, convention: str = "rgb"
            ) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(augmented train part, val part, test batch), normalised per `convention`."""
    cifar, train_idx, val_idx = load_data(data)
    order, mean, std = INPUT_CONVENTIONS[convention]
    train, val = cifar_loaders((cifar.train_images[train_idx], cifar.train_labels[train_idx]),
                               (cifar.train_images[val_idx], cifar.train_labels[val_idx]), batch_size, seed,
                               mean=mean, std=std, channel_order=order)
    test = DataLoader(CifarArrays(cifar.test_images, cifar.test_labels, CifarNormalize(mean, std, order)),
                      batch_size=EVAL_BATCH)
    return train, val, test


def preprocess(convention: str = "rgb") -> Preprocess:
    """What the exported model.yml tells a Predictor: 32 px, the convention's channel order and
    normalisation (the very arithmetic the training loaders used)."""
    order, mean, std = INPUT_CONVENTIONS[convention]
    return Preprocess(input_size=32, resize_short=32, mean=mean, std=std, channel_order=order)


def measure(model: torch.nn.Module) -> dict[str, int]:
    macs, params = count_macs_params(model.cpu(), (1, 3, 32, 32))
    return {"macs": macs, "params": params}


def train_config(cfg: ClassifierTrain) -> TrainConfig:
    return TrainConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)


def train_and_score(model: torch.nn.Module, data: CifarSplit, cfg: ClassifierTrain, seed: int,
                    device: torch.device, checkpoint: Path | None,
                    on_epoch: Callable[[dict[str, float]], None] | None = None,
                    convention: str = "rgb") -> dict[str, Any]:
    """Train on the train part (validated on val each epoch), then score val and test."""
    train, val, test = loaders(data, cfg.batch_size, seed, convention)
    history = fit(model, train, val, train_config(cfg), checkpoint_path=checkpoint, topk=1, on_epoch=on_epoch,
                  device=device)
    return {"history": history, "val_acc": evaluate(model, val, 1, device=device)["top1"],
            "test_acc": evaluate(model, test, 1, device=device)["top1"]}


def finetune_and_score(model: torch.nn.Module, data: CifarSplit, steps: int, lr: float, batch_size: int,
                       seed: int, device: torch.device, convention: str = "rgb", *,
                       checkpoint: Path | None = None, resume_from: Path | None = None) -> float:
    """A short training at constant lr (a candidate's fine-tune on inherited weights, or a short
    equal budget from scratch), then val accuracy. With `checkpoint` (rungs): `finetune_to`
    `steps` steps in all, continuing from `resume_from` when given."""
    if checkpoint is None:
        finetune(model, data, steps, lr, batch_size, seed, device, convention)
    else:
        finetune_to(model, data, steps, lr, batch_size, seed, device, convention, checkpoint=checkpoint,
                    resume_from=resume_from)
    _, val, _ = loaders(data, batch_size, seed, convention)
    return evaluate(model, val, 1, device=device)["top1"]


def held_out_hits(model: torch.nn.Module, data: CifarSplit, device: torch.device, convention: str = "rgb"
                  ) -> torch.Tensor:
    """Per held-out image (the val split, then the test set): 1 where `model` is right."""
    from engine.classification import hits

    _, val, test = loaders(data, EVAL_BATCH, 0, convention)
    return torch.cat([hits(model, val, device=device), hits(model, test, device=device)])


def finetune(model: torch.nn.Module, data: CifarSplit, steps: int, lr: float, batch_size: int,
             seed: int, device: torch.device, convention: str = "rgb") -> None:
    """`steps` SGD steps at constant lr (momentum 0.9, weight decay 5e-4) on the train part."""
    from engine.classification import train_one_epoch

    train, _, _ = loaders(data, batch_size, seed, convention)
    if steps > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
        done = 0
        while done < steps:  # several passes when the budget exceeds one epoch
            take = min(steps - done, len(train))
            train_one_epoch(model, train, optimizer, None, torch.nn.CrossEntropyLoss(), max_steps=take, device=device)
            done += take


class _Echo(torch.utils.data.Dataset):
    """Returns the index it is asked for: a loader over it yields its sampler's order, loading nothing."""

    def __getitem__(self, index: Any) -> Any:
        return index


def _identity(batch: Any) -> Any:
    return batch


class FinetuneBatches:
    """`finetune`'s batch order — pass after pass over the train loader, each a fresh iteration
    cut at len(loader) batches — with a position a new process can continue from: the shuffle
    generator's state at the start of the current pass, the batches taken from it and the
    augmentation generator's state. `seek` replays the pass's index order through a loader over
    `_Echo` sharing the real loader's sampler and generator (the generator advances exactly as
    the real pass advanced it, no image is loaded) and loads the untaken rest by index."""

    def __init__(self, loader: DataLoader) -> None:
        if loader.generator is None or loader.num_workers:
            raise ValueError("FinetuneBatches needs a loader with its own generator and no workers")
        self.loader = loader
        self.passes, self.offset = 0, 0
        self.pass_start = loader.generator.get_state()
        self._rest: Any = None

    def _augment_rng(self) -> torch.Generator | None:
        return getattr(getattr(self.loader.dataset, "transform", None), "generator", None)

    def position(self) -> dict[str, Any]:
        augment = self._augment_rng()
        return {"passes": self.passes, "offset": self.offset, "order_rng": self.pass_start.clone(),
                "augment_rng": None if augment is None else augment.get_state()}

    def seek(self, position: dict[str, Any]) -> None:
        self.passes, self.offset = int(position["passes"]), int(position["offset"])
        self.pass_start = position["order_rng"].clone()
        self.loader.generator.set_state(self.pass_start)
        if self.offset:
            replay = DataLoader(_Echo(), batch_size=None, sampler=self.loader.batch_sampler, collate_fn=_identity,
                                generator=self.loader.generator)
            rest = list(itertools.islice(replay, len(self.loader)))[self.offset:]
            # Its own generator: a loader without one would draw its (unused) worker seed from the global RNG.
            self._rest = DataLoader(self.loader.dataset, batch_sampler=rest, collate_fn=self.loader.collate_fn,
                                    generator=torch.Generator()) if rest else []
        augment = self._augment_rng()
        if augment is not None and position.get("augment_rng") is not None:
            augment.set_state(position["augment_rng"])

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self._rest is not None:
                batches, self._rest = self._rest, None
            else:
                self.pass_start, self.offset = self.loader.generator.get_state(), 0
                batches = itertools.islice(self.loader, len(self.loader))
            for batch in batches:
                self.offset += 1
                yield batch
            self.passes += 1


FINETUNE_MOMENTUM, FINETUNE_WEIGHT_DECAY = 0.9, 5e-4


def finetune_to(model: torch.nn.Module, data: CifarSplit, steps: int, lr: float, batch_size: int, seed: int,
                device: torch.device, convention: str = "rgb", *, checkpoint: Path,
                resume_from: Path | None = None) -> dict[str, int]:
    """`finetune` in stops: train until `steps` steps in all and save the weights (BN statistics
    included), SGD momentum, the step count, the batch position (`FinetuneBatches`) and the RNG
    states to `checkpoint`. `resume_from`: an earlier stop's checkpoint of the same fine-tune
    (lr, batch size, seed, model layout) to continue from — a missing, foreign or further one is
    an InputError naming `resume_from`; a matching `checkpoint` (this stop, killed after its save)
    is taken first. Stopping at a and continuing to b gives bit for bit the weights of
    `finetune(b)` (same batches, same augmentation draws). Returns {"start", "steps"}: the
    step it began at and the steps it trained."""
    from engine.classification import train_one_epoch
    from engine.detection import model_signature, read_checkpoint, restore_checkpoint, save_checkpoint
    from engine.runtime import model_on, rng_state, set_rng_state

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError("steps", f"must be a positive number of steps, got {steps!r}")
    train, _, _ = loaders(data, batch_size, seed, convention)
    with model_on(model, device) as dev:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=FINETUNE_MOMENTUM, weight_decay=FINETUNE_WEIGHT_DECAY)
        batches = FinetuneBatches(train)
        config = {"lr": lr, "momentum": FINETUNE_MOMENTUM, "weight_decay": FINETUNE_WEIGHT_DECAY,
                  "batch_size": batch_size, "seed": seed, "convention": convention,
                  "batches_per_pass": len(train), "model": model_signature(model)}

        def matching(path: Path, strict: bool) -> dict[str, Any] | None:
            problem = None
            try:
                ckpt = read_checkpoint(path)
            except InputError as exc:
                ckpt, problem = None, str(exc)
            if ckpt is not None and (ckpt.get("config") != config or not {"step", "data", "rng"} <= set(ckpt)):
                problem = f"{str(path)!r} was written for another fine-tune (lr, batch size, seed or model)"
            elif ckpt is not None and int(ckpt["step"]) > steps:
                problem = f"{str(path)!r} is at step {ckpt['step']}, past the stop at {steps}"
            if problem is None:
                return ckpt
            if strict:
                raise InputError("resume_from", f"{problem}; it cannot be continued.")
            return None

        ckpt = matching(Path(checkpoint), False) if Path(checkpoint).exists() else None
        if ckpt is None and resume_from is not None:
            ckpt = matching(Path(resume_from), True)
        start = 0
        if ckpt is not None:
            restore_checkpoint(ckpt, model, optimizer)
            batches.seek(ckpt["data"])
            set_rng_state(ckpt["rng"], dev)
            start = int(ckpt["step"])
        if start < steps:
            train_one_epoch(model, batches, optimizer, None, torch.nn.CrossEntropyLoss(), max_steps=steps - start,
                            device=dev)
        save_checkpoint(checkpoint, model, optimizer, None, batches.passes, config,
                        extra={"step": steps, "data": batches.position(), "rng": rng_state(dev)})
    return {"start": start, "steps": steps - start}


PREDICT_IMAGES = 8
# What an int8 twin adds to a comparison row (export_compared): accuracy of the int8 ONNX model
# on the test images, int8 − float in percentage points, batch-1 latency and int8 / float latency.
INT8_COLUMNS = ("int8_acc", "int8_acc_delta", "int8_ms_batch1", "int8_latency_ratio")


def calibration_images(data: CifarSplit, count: int, convention: str = "rgb") -> torch.Tensor:
    """`count` images of the train part, spread over it, normalised as the exported model expects
    (no augmentation): what calibrates an int8 model's activation ranges."""
    cifar, train_idx, _ = load_data(data)
    order, mean, std = INPUT_CONVENTIONS[convention]
    picks = train_idx[np.unique(np.linspace(0, len(train_idx) - 1, min(count, len(train_idx))).astype(int))]
    normalize = CifarNormalize(mean, std, order)
    return torch.stack([normalize(torch.from_numpy(np.ascontiguousarray(cifar.train_images[i].transpose(2, 0, 1))))
                        for i in picks])


def load_entry(entry: TrainedClassifier) -> torch.nn.Module:
    model = build_from_desc(dict(entry.desc))
    model.load_state_dict(torch.load(entry.model_path, map_location="cpu", weights_only=True))
    return model.eval()


def export_compared(models: Sequence[TrainedClassifier], data: CifarSplit, seed: int, runtime: Any,
                    out_dir: Path, convention: str = "rgb", predict_with: str | None = None,
                    quantize: bool = False, calibration_count: int = 32) -> dict[str, Any]:
    """Export each model as an inference folder (ONNX with softmax + torch.export program +
    model.yml in `convention`), parity-check it on real test images, time it with ONNX Runtime
    (batch 1), and tabulate them against the first: MACs, params, accuracy, r_c = MACs / first
    model's MACs, latency (comparison.csv): `ort_ms_batch1` on the run's threads, and `measured_ms`
    on one thread (latency.check), with the search's own figure beside it and a ±10 % flag when the
    entry's performance has `search_latency_ms`. With `quantize`, each model also gets a static int8
    twin (<name>/inference_model_int8, calibrated on `calibration_count` training images) scored on
    the whole test set beside its float ONNX model (INT8_COLUMNS; `int8_error` when ORT could not
    quantize it). Runs the Predictor as a user would on `predict_with` (a model name; default the
    last model). Returns the rows, the Predictor's timing report and sample accuracy, and the
    files written."""
    import shutil

    from deploy.classifier_export import INT8_DIR, export_classifier, int8_twin, parity
    from deploy.onnx_export import make_session
    from deploy.predictor import ClassifierPredictor
    from engine.runtime import configure_torch
    from latency.check import LatencyCheck, measure_onnx_ms
    from latency.measure import interleaved_ms
    from latency.timing import min_latency_ms
    from tasks.orchestration.tables import write_table

    threads = configure_torch(runtime.num_threads, seed)
    _, _, test = loaders(data, 64, seed, convention)
    images, _ = next(iter(test))
    if quantize:  # the same images each row's `acc` is scored on (train_and_score's test_acc)
        test_images, test_labels = (torch.cat(parts).numpy() for parts in zip(*test))
        calibration = calibration_images(data, calibration_count, convention)
    rows, files = [], []
    base_macs = models[0].performance["macs"]
    for entry in models:
        model = load_entry(entry)
        exported = export_classifier(model, dict(entry.desc), list(data.labels), preprocess(convention),
                                     out_dir / entry.name / "inference_model")
        checks = parity(model, Path(exported["onnx"]), images[:16], threads)
        session = make_session(Path(exported["onnx"]), threads)
        one = images[:1].numpy()
        ort_ms = min_latency_ms(lambda: session.run(None, {"image": one}))
        perf = entry.performance
        row = {"model": entry.name, "macs": perf["macs"], "params": perf["params"], "acc": perf["acc"],
               "r_c": perf["macs"] / base_macs, "ort_ms_batch1": ort_ms, **checks}
        files += [exported[k] for k in ("onnx", "program", "model_yml")]
        if quantize:
            int8 = int8_twin(Path(exported["model_dir"]), calibration, test_images, test_labels, threads,
                             interleaved_ms, calibration_count)
            row |= {k: int8[k] for k in (*INT8_COLUMNS, "int8_eval_images", "int8_error") if k in int8}
            if "int8_model_dir" in int8:
                files += [str(Path(int8["int8_model_dir"]) / n) for n in ("model.onnx", "model.yml")]
        else:  # no int8 folder of an earlier export in this work folder may pass for this model's
            shutil.rmtree(out_dir / entry.name / INT8_DIR, ignore_errors=True)
        rows.append(row)
    # Every exported model re-measured as the latency gate measures (1 thread, batch 1), interleaved,
    # and checked against the figure its search admitted it on (search_latency_ms, when there was one).
    remeasured = measure_onnx_ms({r["model"]: (out_dir / r["model"] / "inference_model" / "model.onnx",
                                               {"image": images[:1].numpy()}) for r in rows}, threads=1)
    notes = []
    for entry, row in zip(models, rows):
        check = LatencyCheck(remeasured[row["model"]], entry.performance.get("search_latency_ms"))
        row |= check.fields()
        notes += [n for n in [check.note(row["model"])] if n]
    cifar, _, _ = load_data(data)
    predict_with = predict_with or models[-1].name
    predictor = ClassifierPredictor(str(out_dir / predict_with / "inference_model"), threads=threads)
    sample = [cifar.test_images[i] for i in range(PREDICT_IMAGES)]
    predictions = predictor.predict(sample, topk=1, warmup=2, repeats=3)
    hits = sum(p[0]["category"] == cifar.label_names[int(cifar.test_labels[i])] for i, p in enumerate(predictions))
    files += [str(p) for p in write_table(rows, out_dir / "comparison.csv")]
    report = write_json(out_dir / "export_report.json", {
        "rows": rows, "threads": threads, "input_convention": convention, "predictor_model": predict_with,
        "predictor_sample_accuracy": hits / len(sample), "predictor_timing": predictor.time_info.as_dict()})
    return {"rows": rows, "time_info": predictor.time_info.report(), "predictor_model": predict_with,
            "predictor_sample_accuracy": hits / len(sample), "files": [*files, str(report)],
            "latency_notes": notes}
