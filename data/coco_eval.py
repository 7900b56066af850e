"""COCO bbox mAP with pycocotools, and conversion of torchvision detector outputs to results.

Numbers come from the official COCOeval so they compare with the papers' mAP@[.5:.95]/mAP@.5.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.coco import CocoSet


def coco_map(coco_set_or_ann_file: CocoSet | Path | str, detections: list[dict[str, Any]],
             image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """{"mAP": mAP@[.5:.95], "mAP50": mAP@.5} of `detections` (COCO result format).

    `image_ids` restricts the evaluation to the images actually run (e.g. a `max_images`
    subset); otherwise every image in the ground truth counts.
    """
    if not detections:
        return {"mAP": 0.0, "mAP50": 0.0}
    from pycocotools.cocoeval import COCOeval  # heavy; only when evaluating

    with _quiet():
        ground_truth = _coco_api(coco_set_or_ann_file)
        _check_image_ids(detections, ground_truth)
        # loadRes adds keys to the dicts it is given; keep the caller's list untouched.
        results = ground_truth.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(ground_truth, results, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 when nothing is defined (no ground truth): count that as 0.
    return {"mAP": max(0.0, float(evaluator.stats[0])), "mAP50": max(0.0, float(evaluator.stats[1]))}


def to_coco_detections(image_ids: Sequence[int], outputs: Sequence[dict[str, Any]],
                       coco_set: CocoSet) -> list[dict[str, Any]]:
    """torchvision outputs (boxes xyxy, contiguous labels 1..C, scores) -> COCO result dicts."""
    if len(image_ids) != len(outputs):
        raise ValueError(f"{len(image_ids)} image ids for {len(outputs)} outputs")
    detections = []
    for image_id, output in zip(image_ids, outputs):
        boxes = _numpy(output["boxes"]).reshape(-1, 4).astype(np.float64)
        labels = _numpy(output["labels"]).reshape(-1)
        scores = _numpy(output["scores"]).reshape(-1)
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
            detections.append({
                "image_id": int(image_id), "category_id": coco_set.label_to_cat_id(int(label)),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            })
    return detections


def _coco_api(source: CocoSet | Path | str):
    from pycocotools.coco import COCO

    if isinstance(source, CocoSet):
        dataset = copy.deepcopy(source.dataset)
    else:
        dataset = json.loads(Path(source).read_text(encoding="utf-8"))
    api = COCO()
    api.dataset = dataset
    api.createIndex()
    return api


def _check_image_ids(detections: list[dict[str, Any]], ground_truth) -> None:
    known = set(ground_truth.getImgIds())
    unknown = sorted({d["image_id"] for d in detections} - known)
    if unknown:
        raise ValueError(f"detections name image ids not in the ground truth: {unknown[:5]}")


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield
