"""Split a COCO set by image into two instances files (search-train / search-val), seeded.

SP-NAS scores candidates on images held out of their training, and reports the final
detector on the user's separate val set, so the search never sees the images it is judged on.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from core.errors import InputError
from data.coco import CocoSet


def split_image_ids(coco: CocoSet, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0 < val_fraction < 1:
        raise InputError("search_val_fraction", f"must be between 0 and 1 exclusive, got {val_fraction}")
    ids = [im["id"] for im in coco.images]
    n_val = int(len(ids) * val_fraction)
    if n_val < 1 or n_val >= len(ids):
        raise InputError("search_val_fraction", f"{val_fraction} of {len(ids)} images leaves an empty side; "
                                                "use more images or another fraction")
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])


def write_subset(coco: CocoSet, image_ids: list[int], path: Path) -> Path:
    """An instances file holding only `image_ids` (same categories, same image folder)."""
    keep = set(image_ids)
    data = dict(coco.dataset)
    data["images"] = [im for im in coco.dataset["images"] if im["id"] in keep]
    data["annotations"] = [a for a in coco.dataset["annotations"] if a["image_id"] in keep]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return path
