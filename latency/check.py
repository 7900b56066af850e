"""Every exported winner re-measured: its ONNX file timed end to end and set beside the latency
the search worked with, and one rule for when the two part ways.

A search decides on a figure taken before training (a table prediction in sanas, a direct
measurement at proposal time elsewhere); the network a user ships is the exported file. Those can
differ: another exporter, softmax in the graph, a machine busier at one time than at the other.
`measure_onnx_ms` times the exported files themselves (ONNX Runtime, batch 1, `threads` intra-op
threads, interleaved passes: `latency.measure.TimingConfig`), and `LatencyCheck` flags a
prediction more than ±10 % (nn-Meter's band, as the predictor's accuracy) off the measurement.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latency.measure import TimingConfig, interleaved_ms

__all__ = ["BAND", "LatencyCheck", "measure_onnx_ms"]

BAND = 0.10  # ±10 %: a prediction further off than this is flagged


@dataclass(frozen=True)
class LatencyCheck:
    """A network's latency as the search saw it (`predicted_ms`, None when it had none) and as
    measured on its exported file."""

    measured_ms: float
    predicted_ms: float | None = None

    @property
    def error_pct(self) -> float | None:
        """(predicted − measured) / measured, in percent."""
        if self.predicted_ms is None:
            return None
        return 100 * (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def flagged(self) -> bool:
        return self.error_pct is not None and abs(self.error_pct) > 100 * BAND + 1e-9  # the band is inclusive

    def fields(self) -> dict[str, Any]:
        """Table / MLflow / summary fields: measured_ms, and with a prediction predicted_ms,
        prediction_error_pct and prediction_flag (1 = beyond ±10 %)."""
        out: dict[str, Any] = {"measured_ms": self.measured_ms}
        if self.predicted_ms is not None:
            out |= {"predicted_ms": self.predicted_ms, "prediction_error_pct": self.error_pct,
                    "prediction_flag": int(self.flagged)}
        return out

    def note(self, name: str) -> str | None:
        """One summary line when the prediction missed by more than the band, else None."""
        if not self.flagged:
            return None
        return (f"{name}: predicted {self.predicted_ms:.3f} ms, measured {self.measured_ms:.3f} ms "
                f"({self.error_pct:+.1f} %, beyond ±{100 * BAND:.0f} %)")


def measure_onnx_ms(files: Mapping[str, tuple[Path, Mapping[str, np.ndarray]]], threads: int = 1,
                    timing: TimingConfig = TimingConfig(warmup=10, passes=3)) -> dict[str, float]:
    """Latency (ms) of each exported `name: (model.onnx, feed)`, every session alive at once and
    timed interleaved in shuffled passes (load from other processes hits them alike)."""
    from deploy.onnx_export import make_session  # ORT only when something is timed

    runners = {}
    for name, (path, feed) in files.items():
        session = make_session(Path(path), threads)
        runners[name] = (lambda s=session, f=dict(feed): s.run(None, f))
    return interleaved_ms(runners, timing)
