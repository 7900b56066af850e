"""Map torchvision ResNet / FasterRCNN-FPN checkpoints onto SP-NAS names (fine_tune step).

Renaming only — the output holds the very same tensors:
  conv1.* → stem.conv.*, bn1.* → stem.bn.*, layer{i}.{j}.* → stages.{i-1}.{j}.*, fc.* dropped.
A fasterrcnn_resnet50_fpn state_dict gets the same renaming under `backbone.body.`; its
`backbone.fpn.*`, `rpn.*` and `roi_heads.*` keep their names, which are already our
detector's (nas_models.detector uses torchvision's FPN, RPN and RoI heads).

The code's structure (stages, blocks per stage, block type, widths, where downsample
convs are) must match the checkpoint exactly; otherwise InputError says what differs.
Checkpoints saved with FrozenBatchNorm2d lack `num_batches_tracked`; loading them with
`strict=False` or `nas_models.inherit.inherit_weights` is fine (the counter only matters
for BN momentum=None).
"""
from __future__ import annotations

import logging
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from core.errors import InputError
from nas_models.inherit import state_mismatch
from nas_models.serial_backbone import SerialBackbone, validate_block, validate_code

__all__ = [
    "Conversion",
    "check_weights_file",
    "convert_checkpoint",
    "convert_torchvision_resnet",
    "detect_format",
    "load_weights_file",
]

log = logging.getLogger(__name__)

DETECTOR_BODY = "backbone.body."
_LAYER_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_COUNTER = "num_batches_tracked"


@dataclass
class Conversion:
    """Result of a conversion: renamed tensors, the source format, and what was left out."""

    state_dict: OrderedDict[str, torch.Tensor]
    source_format: str  # "resnet" or "fasterrcnn"
    dropped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> reason


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'resnet' or 'fasterrcnn', else InputError."""
    keys = list(_strip_module_prefix(state_dict))
    if any(k.startswith((DETECTOR_BODY + "conv1.", DETECTOR_BODY + "layer1.")) for k in keys):
        return "fasterrcnn"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "resnet"
    if any(k.startswith(("stem.", "stages.", DETECTOR_BODY + "stem.")) for k in keys):
        raise InputError(
            "weights",
            "already uses spnas names (stem.*/stages.*); load it directly instead of converting.",
        )
    raise InputError(
        "weights",
        "is neither a torchvision ResNet state_dict (conv1/bn1/layer1..4/fc) nor a "
        f"fasterrcnn_resnet50_fpn one (backbone.body.*, backbone.fpn.*, rpn.*, roi_heads.*); "
        f"first keys: {keys[:3]}.",
    )


def _rename_body_key(key: str) -> str | None:
    """torchvision ResNet key → SerialBackbone key (None: not part of the body, e.g. fc)."""
    if key.startswith("conv1."):
        return "stem.conv." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.bn." + key[len("bn1."):]
    m = _LAYER_KEY.match(key)
    if m:
        return f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"
    return None


def _checkpoint_layout(body: Mapping[str, torch.Tensor]) -> tuple[list[int], str]:
    """Blocks per layer and block type as stored in a torchvision ResNet body."""
    counts: dict[int, int] = {}
    for k in body:
        m = _LAYER_KEY.match(k)
        if m:
            layer, idx = int(m.group(1)), int(m.group(2))
            counts[layer] = max(counts.get(layer, 0), idx + 1)
    layers = [counts.get(i, 0) for i in range(1, max(counts, default=0) + 1)]
    if "layer1.0.conv3.weight" not in body:
        block = "BasicBlock"
    else:
        w = body["layer1.0.conv2.weight"]
        block = "ResNeXt" if w.shape[0] != w.shape[1] else "Bottleneck"
    return layers, block


def _suggest_code(layers: list[int]) -> str:
    # torchvision's layout: first stage keeps the resolution, later stages start with stride 2.
    return "-".join(("1" if i == 0 else "2") + "1" * (n - 1) for i, n in enumerate(layers) if n)


def _convert_body(
    body: Mapping[str, torch.Tensor], code: str, block: str
) -> tuple[OrderedDict[str, torch.Tensor], dict[str, str]]:
    stages = validate_code(code)
    block = validate_block(block)
    layers, ck_block = _checkpoint_layout(body)
    if [len(s) for s in stages] != layers:
        raise InputError(
            "backbone_code",
            f"{code!r} has {[len(s) for s in stages]} blocks per stage but the checkpoint has "
            f"{layers} (layer1..layer{len(layers)}); use a code with that layout, e.g. "
            f"{_suggest_code(layers)!r}.",
        )
    if ck_block != block:
        raise InputError(
            "block", f"is {block!r} but the checkpoint holds {ck_block} blocks; use {ck_block!r}."
        )

    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    dropped: dict[str, str] = {}
    for k, v in body.items():
        new = _rename_body_key(k)
        if new is None:
            dropped[k] = "classifier head" if k.startswith("fc.") else "not part of the ResNet body"
        else:
            out[new] = v

    # Build the target on the meta device (no memory, no init cost) to check every shape.
    with torch.device("meta"):
        base_width = int(body["conv1.weight"].shape[0])
        expected = SerialBackbone(code, block, base_width=base_width).state_dict()
    detail = state_mismatch(expected, out, optional_suffix=_COUNTER)
    if detail:
        raise InputError(
            "backbone_code",
            f"{code!r} with {block} does not match the checkpoint's structure ({detail}); "
            "strides must put downsample convs where the checkpoint has them.",
        )
    return out, dropped


def convert_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    code: str,
    block: str,
    target: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> Conversion:
    """Rename a torchvision ResNet / fasterrcnn_resnet50_fpn state_dict for spnas.

    Without `target`: a ResNet gives bare SerialBackbone keys, a FasterRCNN gives detector
    keys. With `target` (a model or its state_dict): keys are prefixed/stripped to the
    target's layout and every key the target lacks, or whose shape differs (e.g. a box
    predictor for another class count), is dropped and reported in `dropped`.
    """
    sd = _strip_module_prefix(state_dict)
    fmt = detect_format(sd)
    if fmt == "resnet":
        out, dropped = _convert_body(sd, code, block)
    else:
        body = {k[len(DETECTOR_BODY):]: v for k, v in sd.items() if k.startswith(DETECTOR_BODY)}
        renamed, dropped = _convert_body(body, code, block)
        dropped = {DETECTOR_BODY + k: r for k, r in dropped.items()}
        out = OrderedDict((DETECTOR_BODY + k, v) for k, v in renamed.items())
        for k, v in sd.items():
            if not k.startswith(DETECTOR_BODY):
                out[k] = v  # fpn / rpn / roi_heads: same names in our detector

    if target is not None:
        target_sd = target.state_dict() if isinstance(target, nn.Module) else target
        shapes = {k: tuple(v.shape) for k, v in target_sd.items()}
        target_is_detector = any(k.startswith(DETECTOR_BODY) for k in shapes)
        if fmt == "resnet" and target_is_detector:
            out = OrderedDict((DETECTOR_BODY + k, v) for k, v in out.items())
        elif fmt == "fasterrcnn" and not target_is_detector:
            for k in out:
                if not k.startswith(DETECTOR_BODY):
                    dropped[k] = "detector part; the target is a bare backbone"
            out = OrderedDict(
                (k[len(DETECTOR_BODY):], v) for k, v in out.items() if k.startswith(DETECTOR_BODY)
            )
        kept: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k, v in out.items():
            if k not in shapes:
                dropped[k] = "not in the target model"
            elif shapes[k] != tuple(v.shape):
                dropped[k] = f"shape {tuple(v.shape)} != target {shapes[k]}"
            else:
                kept[k] = v
        out = kept
    return Conversion(out, fmt, dropped)


def convert_torchvision_resnet(
    state_dict: Mapping[str, torch.Tensor],
    code: str,
    block: str,
    target: nn.Module | Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """`convert_checkpoint(...).state_dict`; dropped keys are only logged (convert_checkpoint
    returns them)."""
    conv = convert_checkpoint(state_dict, code, block, target)
    if conv.dropped:
        log.info("convert: %d checkpoint tensors not kept: %s", len(conv.dropped), conv.dropped)
    return conv.state_dict


WEIGHTS_ALLOWED = ("give a state_dict saved with torch.save(model.state_dict(), path) "
                   "(optionally under 'model' or 'state_dict')")
_WRAPPERS = ("model", "state_dict", "model_state_dict")
_ZIP_MAGIC = b"PK\x03\x04"
# What torch's safe unpickler says when a pickle asks for a global it does not allow; its wording
# changed over releases ("Unsupported global: GLOBAL x.y was not an allowed global by default",
# "Trying to load unsupported GLOBAL x.y whose module x is blocked"). The name must be a dotted
# identifier followed by those words, so a text file read as a pickle does not match.
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*) (?:was not an allowed global|whose module )")
# ... and when it refuses to build an instance of a class it was given ("but got <class 'x.Y'>").
_REFUSED_CLASS = re.compile(r"Can only (?:build|create new object)[^<]*<class '([A-Za-z_][\w.]*)'")
_PICKLE_REFUSED = "Weights only load failed"
_NAME_CHARS = 80  # a hostile file may name a huge global: excerpted
_SCAN_OPS = 200_000  # opcodes read when looking for the global a pickle asks for
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"})
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")


def load_weights_file(path: str | Path, field: str = "pretrained_weights") -> dict[str, torch.Tensor]:
    """A state_dict from a weights file, loaded with weights_only=True (no code runs).

    Unwraps {"model"/"state_dict"/"model_state_dict": sd} and strips DataParallel's "module."
    prefix. Every problem is an InputError naming `field`; PyTorch's own text is never shown,
    since it suggests weights_only=False, which would execute code from the file.
    """
    return _load_weights(Path(path), field, mmap=False)


def check_weights_file(path: str | Path, field: str) -> None:
    """Load and validate a weights file once (for a parameter validator); InputError on problems."""
    # mmap: a zip checkpoint's tensors are not read into memory just to be checked.
    _load_weights(Path(path), field, mmap=True)


def _load_weights(p: Path, field: str, mmap: bool) -> dict[str, torch.Tensor]:
    if not p.is_file():
        raise InputError(field, f"{str(p)!r} does not exist or is not a file; {WEIGHTS_ALLOWED}.")
    with p.open("rb") as f:
        head = f.read(4096)
    if not head:
        raise InputError(field, f"{str(p)!r} is empty; {WEIGHTS_ALLOWED}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pickle-protocol notes: the user cannot act on them
            obj = torch.load(p, map_location="cpu", weights_only=True,
                             mmap=mmap and head.startswith(_ZIP_MAGIC))
    except Exception as exc:  # pickle/zip/EOF errors vary by cause; the user needs one sentence
        forbidden = _forbidden_global(p, head, exc)
        if forbidden:
            raise InputError(
                field, f"{str(p)!r} is refused: its pickle asks to load {forbidden}, which is not allowed "
                       f"(only tensors and plain containers are loaded; pickled code never runs); "
                       f"{WEIGHTS_ALLOWED}.") from exc
        raise InputError(
            field, f"{str(p)!r} is not a readable torch weights file ({_load_failure(head, exc)}); "
                   f"{WEIGHTS_ALLOWED}.") from exc
    while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in _WRAPPERS):
        obj = next(obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping))
    problem = _not_a_state_dict(obj)
    if problem:
        raise InputError(field, f"{str(p)!r} has no state_dict: it holds {problem}; {WEIGHTS_ALLOWED}.")
    return _strip_module_prefix(obj)


def _load_failure(head: bytes, exc: Exception) -> str:
    """Why torch.load failed, in our words (never PyTorch's message, see load_weights_file), when
    it was not a forbidden global (_forbidden_global)."""
    if _looks_like_text(head):  # first: a text line starting with "c" reads as a pickle GLOBAL
        return "it is a text file"
    if head.startswith(_ZIP_MAGIC):
        if _PICKLE_REFUSED in str(exc):  # the archive reads, its pickle is not one the safe loader takes
            return ("its pickle is not one the safe loader reads: only tensors and plain containers are "
                    "loaded, and pickled code never runs")
        return "the zip archive is damaged or truncated"
    # torch.save writes a zip archive (or, before 1.6, a binary pickle starting with PROTO).
    return "it is neither a zip archive nor a pickle written by torch.save"


def _forbidden_global(p: Path, head: bytes, exc: Exception) -> str | None:
    """The global (module.name, excerpted) the file's pickle asks for that the safe loader refuses,
    or None when the load failed for another reason (damaged, not a pickle, a text file).

    PyTorch's refusal names it, in wordings that changed between releases; a pickle the safe loader
    cannot even parse (pickle.dumps' protocol 4 or 5, a protocol-0 pickle that looks like text) is
    read opcode by opcode without running anything (pickletools) to find it."""
    import pickle

    name = None
    if isinstance(exc, pickle.UnpicklingError) and head.startswith((_ZIP_MAGIC, b"\x80")):
        found = _UNSAFE_GLOBAL.search(str(exc)) or _REFUSED_CLASS.search(str(exc))
        name = found.group(1) if found else None
    if name is None:
        name = _scan_pickle_global(p, head)
    if name is None:
        return None
    return name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS - 1] + "…"


def _scan_pickle_global(p: Path, head: bytes) -> str | None:
    """The first global a well-formed pickle in `p` (the file itself, or the data.pkl of a
    torch.save archive) asks for that torch's safe loader does not allow; None if there is none or
    the file is no such pickle. A text-looking file counts only as a complete pickle (up to STOP)."""
    import zipfile

    try:
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(p) as archive:
                pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    return None
                with archive.open(pkl) as stream:
                    return _first_forbidden(stream, complete=False)
        if head.startswith(b"\x80") or _looks_like_text(head):
            with p.open("rb") as stream:
                return _first_forbidden(stream, complete=not head.startswith(b"\x80"))
    except Exception:  # a damaged archive or a malformed pickle: no global to name
        return None
    return None


def _first_forbidden(stream: object, complete: bool) -> str | None:
    """Walk the pickle's opcodes (pickletools.genops decodes, never executes); a STACK_GLOBAL's
    module and name are the two strings pushed just before it (MEMOIZE/BINGET tracked)."""
    import pickletools

    allowed = _safe_globals()
    recent: list[object] = []  # what each push put on the stack (None: not a string)
    memo: dict[int, object] = {}
    found = None
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(stream)):
            if count > _SCAN_OPS:
                break
            kind = op.name
            candidate = None
            if kind in _STRING_OPS:
                recent.append(arg if isinstance(arg, str) else None)
            elif kind == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif kind in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = recent[-1] if recent else None
            elif kind in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(arg))
            elif kind in ("GLOBAL", "INST"):
                module, _, qualname = str(arg).partition(" ")
                candidate = (module, qualname)
            elif kind == "STACK_GLOBAL":
                candidate = tuple(recent[-2:]) if len(recent) >= 2 else None
            elif kind == "STOP":
                return found
            elif kind not in ("FRAME", "PROTO"):
                recent.append(None)
            if candidate is not None:
                module, qualname = candidate
                recent.append(None)
                if not (isinstance(module, str) and isinstance(qualname, str)
                        and _IDENTIFIER.match(module) and _IDENTIFIER.match(qualname)):
                    return None  # not names: not a pickle that was written as one
                full = f"{module}.{qualname}"
                if found is None and full not in allowed:
                    found = full
                    if not complete:
                        return found
    except Exception:  # malformed or truncated: only a complete pickle counts when it looked like text
        pass
    return None if complete else found


def _safe_globals() -> set[str]:
    """The globals torch's weights-only unpickler accepts (its built-in list and add_safe_globals')."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals, _get_user_allowed_globals

        return set(_get_allowed_globals()) | set(_get_user_allowed_globals())
    except Exception:  # another torch: what every torch.save file uses
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                "torch.FloatStorage", "torch.LongStorage", "torch.DoubleStorage", "torch.HalfStorage",
                "torch.IntStorage", "torch.BoolStorage", "torch.ByteStorage", "torch.BFloat16Storage"}


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # The 4 KiB cut may split a multi-byte character: retry without the last few bytes.
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return "\x00" not in text and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _not_a_state_dict(obj: object) -> str:
    """'' for a non-empty {str: tensor} mapping, else what the file holds instead."""
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if not isinstance(obj, Mapping):
        return _a(type(obj).__name__)
    if not obj:
        return "an empty dict"
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a dict with no tensors (keys {keys}{', ...' if len(obj) > 5 else ''})"
    for k, v in obj.items():
        if not isinstance(k, str):
            return f"a dict with the non-text key {k!r}"
        if not isinstance(v, torch.Tensor):
            return f"a dict whose entry {k!r} is {_a(type(v).__name__)} rather than a tensor"
    return ""


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
