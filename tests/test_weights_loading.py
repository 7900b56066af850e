"""Loading a user's weights file: every bad file is one InputError naming the parameter."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from core.errors import InputError
from nas_models.convert import check_weights_file, load_weights_file
from nas_models.inherit import InheritReport, inherit_weights, require_loaded_share
from nas_models.lcnet import build_lcnet

FIELD = "model.pretrained_weights"


class NotATensor:  # module level: a pickled instance names this class as its global
    pass


def _save(obj: object) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path)


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _truncated(path: Path) -> None:
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:120])


def _plain_pickle(path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f)


BAD_FILES = [
    ("text file", _bytes(b"conv1.weight: [0.1, 0.2]\nthese are my weights\n"), "text file"),
    ("random bytes", _bytes(bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8))), "neither"),
    ("empty file", _bytes(b""), "empty"),
    ("truncated archive", _truncated, "damaged or truncated"),
    ("plain pickle", _plain_pickle, "neither"),
    ("single tensor", _save(torch.zeros(3, 4)), "single tensor of shape (3, 4)"),
    ("list", _save([torch.zeros(1), torch.ones(1)]), "a list"),
    ("int", _save(7), "an int"),
    ("empty dict", _save({}), "empty dict"),
    ("dict without tensors", _save({"epoch": 3, "lr": 0.1}), "no tensors (keys 'epoch', 'lr')"),
    ("tensors mixed with other values", _save({"w": torch.zeros(1), "epoch": 3}), "'epoch' is an int"),
    ("wrapper without tensors", _save({"model": {"epoch": 3}}), "no tensors"),
    ("whole module", _save(torch.nn.Linear(2, 2)), "torch.nn.modules.linear.Linear"),
    ("other python object", _save({"w": NotATensor()}), "NotATensor"),
    ("numpy array", _save({"w": np.zeros(3)}), "numpy"),
]


@pytest.mark.parametrize("write, words", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_weights_files_are_one_input_error(tmp_path, write, words):
    path = tmp_path / "weights.pth"
    write(path)
    for load in (lambda: load_weights_file(path, FIELD), lambda: check_weights_file(path, FIELD)):
        with pytest.raises(InputError) as err:
            load()
        message = str(err.value)
        assert err.value.field == FIELD and words in message, message
        assert "weights.pth" in message and "torch.save(model.state_dict(), path)" in message
        # Never PyTorch's advice to load unsafely.
        assert "weights_only" not in message and "add_safe_globals" not in message


def test_default_field_and_missing_file(tmp_path):
    with pytest.raises(InputError) as err:
        load_weights_file(tmp_path / "missing.pth")
    assert err.value.field == "pretrained_weights" and "does not exist" in str(err.value)
    with pytest.raises(InputError) as err:
        check_weights_file(tmp_path, FIELD)  # a folder
    assert err.value.field == FIELD


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_lcnet(0.25, num_classes=10)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd, "epoch": 3},
    lambda sd: {"state_dict": sd},
    lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"module." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
], ids=["plain", "model", "state_dict", "model_state_dict", "module-prefix", "wrapped-module-prefix"])
def test_wrapped_state_dicts_load(tmp_path, model, wrap):
    sd = model.state_dict()
    path = tmp_path / "w.pth"
    torch.save(wrap(sd), path)
    assert check_weights_file(path, FIELD) is None
    loaded = load_weights_file(path, FIELD)
    assert list(loaded) == list(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    fresh = build_lcnet(0.25, num_classes=10)
    report = inherit_weights(fresh, loaded)
    require_loaded_share(report, None, FIELD)
    assert report.matched == report.total == len(sd)


def test_weights_for_another_model_are_refused_with_counts(tmp_path, model):
    total = len(model.state_dict())
    wrong = {f"encoder.layer{i}.weight": torch.randn(8, 8) for i in range(total)}
    path = tmp_path / "other.pth"
    torch.save(wrong, path)
    report = inherit_weights(model, load_weights_file(path, FIELD))
    assert report.matched == 0
    with pytest.raises(InputError) as err:
        require_loaded_share(report, None, FIELD)
    assert err.value.field == FIELD
    assert f"only 0 of {total} tensors matched by name and shape (need at least 50 %)" in str(err.value)


def test_share_threshold(model):
    # Right names, half of them with the wrong shape: below the share is refused, at it accepted.
    sd = model.state_dict()
    names = list(sd)
    half = len(names) // 2
    damaged = {k: (v if i < half else torch.zeros(v.numel() + 1)) for i, (k, v) in enumerate(sd.items())}
    report = inherit_weights(build_lcnet(0.25, num_classes=10), damaged)
    assert report.matched == half
    require_loaded_share(report, None, FIELD, min_share=half / len(names))
    with pytest.raises(InputError, match=f"only {half} of {len(names)} tensors .*at least 90 %"):
        require_loaded_share(report, None, FIELD, min_share=0.9)
    # Plain counts work too (e.g. a share of a checkpoint's own tensors).
    require_loaded_share(30, 40, FIELD)
    with pytest.raises(InputError, match="only 19 of 40"):
        require_loaded_share(19, 40, FIELD)
    with pytest.raises(ValueError):
        require_loaded_share(InheritReport(0, 0), None, FIELD)


def test_legacy_non_zip_format_loads(tmp_path, model):
    path = tmp_path / "legacy.pth"
    torch.save({"model": model.state_dict()}, path, _use_new_zipfile_serialization=False)
    check_weights_file(path, FIELD)
    assert set(load_weights_file(path, FIELD)) == set(model.state_dict())
