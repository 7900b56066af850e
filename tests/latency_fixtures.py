"""A latency predictor for the SPOS small space made up on the spot (fake op latencies, a known
law for whole paths): what a predictor fitted on another device looks like to a search."""
from __future__ import annotations

import random
from pathlib import Path

from latency.predictor import LatencyPredictor, Sample
from latency.table import LatencyTable, key_of
from latency.trace import ops_of_network


def spos_predictor(tmp_path: Path) -> Path:
    """A predictor for the SPOS small space (10 classes) from a made-up table of every op the space
    can run, fitted on 40 random paths whose latency follows a known law of their table sum."""
    from tasks.spos.search import latency_space

    space = latency_space("small")
    ops = list(space.ops())
    rng = random.Random(1)
    table = LatencyTable({key_of(op): rng.uniform(0.001, 0.01) for op in ops}, device="cpu")
    table.save(tmp_path / "spos.txt")
    samples = []
    for i, arch in enumerate(space.sample(40, seed=5)):
        arch_ops = list(ops_of_network(*space.build(arch)).ops)
        samples.append(Sample(f"s{i}", arch_ops, 0.1 + 0.3 * table.sum(arch_ops)))
    return LatencyPredictor.fit(table, samples).save(tmp_path / "spos.predictor.json")
