"""Bad input a user can give a pipeline: each is one clear line naming the field, exit code 2,
before any work (nothing written, no MLflow run, no traceback). Table-driven through the CLI
exactly as a user runs it (`spnas check-params`, `spnas run` refuses before touching the stack).
`spnas predict`'s bad inputs are in test_bad_inputs_predict.py."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from spnas.cli import main


def _random_bytes(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _text(path: Path) -> Path:
    path.write_text("these are not weights\n")
    return path


def _single_tensor(path: Path) -> Path:
    torch.save(torch.zeros(3), path)
    return path


def _foreign_state_dict(path: Path) -> Path:
    torch.save({f"unrelated.{i}.weight": torch.zeros(4, 4) for i in range(5)}, path)
    return path


def _broken_cifar(tmp: Path) -> Path:
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(b"not a pickle")
    (folder / "data_batch_1").write_bytes(b"x")
    return folder


def _latency_table(path: Path, line: str = "conv,0,0,1,3,128,128,12,1,3,1,2,1\t0.05") -> Path:
    """A latency table in PaddleSlim's layout that lacks almost every op of the space."""
    path.write_text(f"op_type\tcpu\tms\n{line}\n")
    return path


def _coco(tmp: Path, mutate: Callable[[dict], None] | None = None, raw: bytes | None = None) -> dict[str, str]:
    """A small valid COCO set the test writes itself; `mutate` breaks its JSON on purpose."""
    from PIL import Image

    images = tmp / "images"
    images.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32)).save(images / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "thing"}]}
    if mutate:
        mutate(doc)
    ann = tmp / "instances.json"
    ann.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    good = tmp / "good.json"
    good.write_text(json.dumps(_valid()))
    return {"train_images": str(images), "train_json": str(ann), "val_images": str(images), "val_json": str(good)}


def _valid() -> dict:
    return {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}


def _coco_sets(tmp: Path, **kw) -> list[str]:
    paths = _coco(tmp, **kw)
    return [f"--set=data.{k}={v}" for k, v in paths.items()]


def _bad_bbox(doc: dict) -> None:
    doc["annotations"][0]["bbox"] = [2, 2, -5, 10]


def _unknown_image(doc: dict) -> None:
    doc["annotations"][0]["image_id"] = 99


def _no_annotations(doc: dict) -> None:
    del doc["annotations"]


# (id, deployment, args builder(tmp) -> extra argv, expected field)
CASES: list[tuple[str, str, Callable[[Path], list[str]], str]] = [
    ("yaml-syntax-in-set", "spnas/full", lambda t: ["--set", "seed=["], "seed"),
    ("params-file-random-bytes", "lcnet/full", lambda t: ["--params-file", str(_random_bytes(t / "p.yaml"))],
     "params_file"),
    ("params-file-is-folder", "lcnet/full", lambda t: ["--params-file", str(t)], "params_file"),
    ("params-file-missing", "lcnet/full", lambda t: ["--params-file", str(t / "nope.yaml")], "params_file"),
    ("params-file-not-mapping", "lcnet/full",
     lambda t: ["--params-file", str((t / "l.yaml").write_text("- 1\n- 2\n") and t / "l.yaml")], "params_file"),
    ("unknown-key", "spnas/full", lambda t: ["--set", "fully_train.epoch=3"], "fully_train.epoch"),
    ("bool-as-int", "spnas/full", lambda t: ["--set", "optimizer.batch_size=true"], "optimizer.batch_size"),
    ("nan", "spnas/full", lambda t: ["--set", "optimizer.learning_rate=.nan"], "optimizer.learning_rate"),
    ("dask-not-url", "spnas/full", lambda t: ["--set", "dask_address=notaurl"], "dask_address"),
    ("output-root-under-file", "lcnet/full",
     lambda t: ["--set", f"output_root={_text(t / 'file')}/sub"], "output_root"),
    ("device-cuda-without-gpu", "lcnet/full", lambda t: ["--set", "device=cuda"], "device"),
    ("device-unknown", "lcnet/full", lambda t: ["--set", "device=tpu"], "device"),
    ("backbone-code", "spnas/full", lambda t: ["--set", "model.backbone_code=11-x1"], "model.backbone_code"),
    ("lcnet-weights-random", "lcnet/full",
     lambda t: ["--set", f"model.pretrained_weights={_random_bytes(t / 'w.pth')}"], "model.pretrained_weights"),
    ("lcnet-weights-text", "lcnet/full",
     lambda t: ["--set", f"model.pretrained_weights={_text(t / 'w.pth')}"], "model.pretrained_weights"),
    ("lcnet-weights-single-tensor", "lcnet/full",
     lambda t: ["--set", f"model.pretrained_weights={_single_tensor(t / 'w.pth')}"], "model.pretrained_weights"),
    ("lcnet-weights-no-match", "lcnet/full",
     lambda t: ["--set", f"model.pretrained_weights={_foreign_state_dict(t / 'w.pth')}"], "model.pretrained_weights"),
    ("spnas-weights-text", "spnas/full",
     lambda t: ["--set", f"model.pretrained_weights={_text(t / 'w.pth')}"], "model.pretrained_weights"),
    ("spnas-weights-no-match", "spnas/full",
     lambda t: ["--set", f"model.pretrained_weights={_foreign_state_dict(t / 'w.pth')}"], "model.pretrained_weights"),
    ("coco-not-json", "spnas/full", lambda t: _coco_sets(t, raw=b"\x00\xff not json"), "data.train_json"),
    ("coco-no-annotations", "spnas/full", lambda t: _coco_sets(t, mutate=_no_annotations), "data.train_json"),
    ("coco-negative-width", "spnas/full", lambda t: _coco_sets(t, mutate=_bad_bbox), "data.train_json"),
    ("coco-unknown-image", "spnas/full", lambda t: _coco_sets(t, mutate=_unknown_image), "data.train_json"),
    ("prune-depth", "prune-ea/full", lambda t: ["--set", "depth=44"], "depth"),
    ("prune-population", "prune-ea/full", lambda t: ["--set", "search.random_models=2", "--set",
                                                     "search.num_individual=8"], "search.random_models"),
    ("prune-generations", "prune-ea/full", lambda t: ["--set", "search.num_generation=0"], "search.num_generation"),
    ("prune-mutation", "prune-ea/full", lambda t: ["--set", "search.mutation=gauss"], "search.mutation"),
    ("prune-channels", "prune-ea/full", lambda t: ["--set", "search.channels=l1"], "search.channels"),
    ("prune-missing-folder", "prune-ea/full", lambda t: ["--set", f"data.dataset_dir={t / 'nope'}"],
     "data.dataset_dir"),
    ("prune-malformed-cifar", "prune-ea/full",
     lambda t: ["--set", f"data.dataset_dir={_broken_cifar(t)}"], "data.dataset_dir"),
    ("spos-preset", "spos/full", lambda t: ["--set", "model.preset=huge"], "model.preset"),
    ("spos-limit-below-smallest", "spos/full", lambda t: ["--set", "search.macs_limit=1000"], "search.macs_limit"),
    ("spos-empty-bins", "spos/full", lambda t: ["--set", "supernet.macs_range=[100,200]"], "supernet.macs_range"),
    ("spos-range-reversed", "spos/full", lambda t: ["--set", "supernet.macs_range=[5000000,4000000]"],
     "supernet.macs_range"),
    ("spos-negative-recalib", "spos/full", lambda t: ["--set", "search.recalib_batches=-1"], "search.recalib_batches"),
    ("spos-convention", "spos/full", lambda t: ["--set", "model.input_convention=yuv"], "model.input_convention"),
    ("spos-topk", "spos/full", lambda t: ["--set", "search.topk=50"], "search.topk"),
    ("spos-rank-count", "spos/full", lambda t: ["--set", "rank_check.count=2"], "rank_check.count"),
    ("sanas-ctype", "sanas/full", lambda t: ["--set", "constraint.ctype=area"], "constraint.ctype"),
    ("sanas-min-above-max", "sanas/full", lambda t: ["--set", "constraint.min=5", "--set", "constraint.max=3"],
     "constraint.min"),
    ("sanas-infeasible", "sanas/full", lambda t: ["--set", "constraint.max=1000"], "constraint.max"),
    ("sanas-t0", "sanas/full", lambda t: ["--set", "search.init_temperature=0"], "search.init_temperature"),
    ("sanas-reduce-rate", "sanas/full", lambda t: ["--set", "search.reduce_rate=1.5"], "search.reduce_rate"),
    ("sanas-starts-fill-the-budget", "sanas/full", lambda t: ["--set", "search.random_starts=12"],
     "search.random_starts"),
    ("sanas-malformed-table", "sanas/full",
     lambda t: ["--set", "latency.table_file=" + str(_latency_table(t / "table.txt", "conv,0,0,1\t0.05"))],
     "latency.table_file"),
    ("sanas-table-lacks-op", "sanas/full", lambda t: ["--set", "constraint.ctype=latency", "--set",
                                                      f"latency.table_file={_latency_table(t / 'table.txt')}"],
     "latency.table_file"),
    ("coco-half-given", "spnas/full", lambda t: [f"--set=data.train_json={_coco(t)['val_json']}"], "data.train_json"),
]


@pytest.mark.parametrize("deployment, build, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_params_refuses_with_one_line(deployment, build, field, tmp_path: Path, capsys) -> None:
    argv = ["check-params", deployment, *build(tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {field}: "), err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert err.count(field.split(".")[-1] + ":") == 1, err  # the field is named once, in front
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_nan_is_not_reported_as_a_range(capsys) -> None:
    assert main(["check-params", "spnas/full", "--set", "optimizer.learning_rate=.nan"]) == 2
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("argv, field", [
    (["run", "spnas/full", "--refresh-from", "bogus"], "refresh_from"),
    (["run", "spnas/full", "--refresh", "--refresh-from", "serial"], "--refresh-from"),
    (["run", "lcnet/full", "--set", "train.epochs=0"], "train.epochs"),
])
def test_run_refuses_before_touching_the_stack(argv, field, capsys) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {field}: ")


def test_good_params_pass(tmp_path: Path, capsys) -> None:
    # a one-category set whose 10 px box is kept as a crop (with a background class) for reignite
    assert main(["check-params", "spnas/full", *_coco_sets(tmp_path), "--set", "data.crop_min_size=8"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"]["train_json"].endswith("instances.json") and shown["fully_train"]["epochs"] == 3


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_refuses_a_dask_scheduler_that_does_not_answer(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every pipeline's `dask_address` (here prune-ea's, a shared RunParams field) is checked to
    answer, client-side, before the stack is touched (the flow checks again before any stage:
    tests/test_dask_cluster.py)."""
    home, out = tmp_path / "home", tmp_path / "out"
    monkeypatch.setenv("SPNAS_HOME", str(home))
    address = f"tcp://127.0.0.1:{_closed_port()}"
    assert main(["run", "prune-ea/full", "--no-watch", "--set", f"dask_address={address}",
                 "--set", f"output_root={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: dask_address: no Dask scheduler answers at {address}: "), err
    assert err.endswith("start one (dask scheduler) or set dask_address: null"), err
    assert not out.exists()
    assert [p for p in home.rglob("*") if p.is_file()] == []  # no stack started, no state written
