"""Per-stage statistics: frame rate, latency percentiles and drops by reason."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np


class LatencyStats:
    """Latency samples in ms with percentiles; keeps at most `capacity` recent samples."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.samples: list[float] = []

    def add(self, ms: float) -> None:
        if len(self.samples) >= self.capacity:
            del self.samples[: self.capacity // 2]
        self.samples.append(ms)

    def summary(self) -> dict:
        if not self.samples:
            return {"count": 0}
        p50, p95, p99 = np.percentile(self.samples, [50, 95, 99])
        return {"count": len(self.samples), "mean_ms": round(float(np.mean(self.samples)), 3),
                "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
                "p99_ms": round(float(p99), 3), "max_ms": round(float(max(self.samples)), 3)}


class StageStats:
    """What one stage reports: frames processed, fps over its running time, latencies, drops by reason."""

    def __init__(self, stage: str):
        self.stage = stage
        self.frames = 0
        self.drops: Counter[str] = Counter()
        self.latency: dict[str, LatencyStats] = {}
        self.started = time.monotonic()
        self.first_frame: float | None = None
        self.last_frame: float | None = None

    def count_frame(self) -> None:
        now = time.monotonic()
        self.first_frame = self.first_frame or now
        self.last_frame = now
        self.frames += 1

    def add_latency(self, name: str, ms: float) -> None:
        self.latency.setdefault(name, LatencyStats()).add(ms)

    def fps(self) -> float:
        if self.frames < 2 or self.first_frame is None or self.last_frame == self.first_frame:
            return 0.0
        return (self.frames - 1) / (self.last_frame - self.first_frame)

    def summary(self) -> dict:
        return {"stage": self.stage, "frames": self.frames, "fps": round(self.fps(), 2),
                "drops": dict(self.drops), "latency": {k: v.summary() for k, v in self.latency.items()}}
