"""The one way a stage turns the run's seed into the seed of one of its own random streams.

Stages used to add an offset (`seed + candidate_id`, `seed + 100 + round`), so streams of
different stages coincided: candidate 100 of one stage drew exactly what reignite round 0
drew. `derive_seed(seed, "<pipeline>.<stage>", index)` instead feeds the run's seed and a
stable hash of every path element to numpy's SeedSequence, whose mixing makes streams with
different paths unrelated: no choice of indices lines one stage's stream up with another's.
"""
from __future__ import annotations

import hashlib

import numpy as np

SEED_LIMIT = 2**31  # torch.manual_seed, random.Random and numpy all take any int below it


def _key(element: str | int) -> int:
    """A stable 64-bit number for one path element.

    Python's hash() is salted per process for strings, so it would change the streams from run
    to run; a cryptographic digest does not. The type is part of what is hashed, so the index 5
    and the name "5" stay different elements.
    """
    if isinstance(element, str):
        text = f"s:{element}"
    elif isinstance(element, (int, np.integer)) and not isinstance(element, bool):
        text = f"i:{int(element)}"  # numpy ints hash as the plain int they equal
    else:
        raise TypeError(f"seed path elements are str or int, got {element!r}")
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_seed(seed: int, *path: str | int) -> int:
    """The seed of the stream named by `path` (e.g. "spnas.reignite", round) under the run's `seed`.

    Deterministic across calls, processes and machines; in [0, 2**31). Name the stage first and
    put indices after it, so equal indices in different stages give different seeds.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not path:
        raise ValueError("derive_seed needs a path naming the stream (at least the stage)")
    sequence = np.random.SeedSequence(int(seed), spawn_key=tuple(_key(e) for e in path))
    return int(sequence.generate_state(1, dtype=np.uint32)[0]) % SEED_LIMIT
