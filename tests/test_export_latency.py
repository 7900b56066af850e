"""Every exported classifier re-measured (latency.check) and set beside its search-time figure."""
from __future__ import annotations

from pathlib import Path

import torch

from nas_models.prune_resnet import build_prune_resnet
from params.models import CifarData, Runtime
from tasks.cifar.data import cifar_sources
from tasks.cifar.training import TrainedClassifier, export_compared, measure


def test_exported_models_are_remeasured_and_a_missed_prediction_is_flagged(tmp_path: Path, monkeypatch,
                                                                          one_thread) -> None:
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path / "home"))
    (tmp_path / "data").mkdir()
    data = cifar_sources(CifarData(), 0, tmp_path / "data")
    models = []
    for name, search_ms in (("baseline", None), ("member_3", 1000.0)):  # 1 s: far off any real figure
        net = build_prune_resnet(20, num_classes=data.num_classes)
        path = tmp_path / f"{name}.pth"
        torch.save(net.state_dict(), path)
        perf = {"acc": 0.1, **measure(net), **({} if search_ms is None else {"search_latency_ms": search_ms})}
        models.append(TrainedClassifier(name=name, desc={"type": "PruneResNet", **net.arch}, model_path=str(path),
                                        performance=perf))
    out = export_compared(models, data, 0, Runtime(num_threads=1), tmp_path / "export")
    base, member = out["rows"]
    assert base["measured_ms"] > 0 and "prediction_flag" not in base  # no search figure: measured only
    assert member["predicted_ms"] == 1000.0 and member["prediction_flag"] == 1
    assert member["prediction_error_pct"] > 1000
    assert len(out["latency_notes"]) == 1 and out["latency_notes"][0].startswith("member_3: predicted 1000.000 ms")
