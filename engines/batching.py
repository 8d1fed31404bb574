"""Batching across streams: one engine call for the pairs of several cameras (several drones into one
ground station). Engines are far more efficient per frame at batch 4-16 than at batch 1 on a GPU.

The scheduler collects (stream, visible, thermal, meta) pairs and fuses them together when `max_batch`
pairs wait or when the oldest has waited `max_wait_s`, whichever comes first. Results come back in
submission order, so every stream keeps its own order; `meta` (timestamps, frame headers) is handed back
untouched. Pairs of different sizes never share a call: a pair whose size differs from the waiting ones
flushes them first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .base import Engine


@dataclass
class BatchOutput:
    stream: Hashable
    meta: Any  # what the caller attached at submit(), untouched
    fused: np.ndarray  # (H, W, 3) uint8
    registered: np.ndarray | None  # (H, W) uint8
    flow: np.ndarray | None  # (H, W, 2) float32
    batch_size: int  # pairs fused in the same engine call
    waited_s: float  # from submit() to the engine call


@dataclass
class StreamStats:
    submitted: int = 0
    fused: int = 0
    calls: int = 0  # engine calls this stream took part in
    pairs_in_calls: int = 0  # sum of the batch sizes of those calls (mean batch = this / calls)
    wait_s_total: float = 0.0
    wait_s_max: float = 0.0

    def summary(self) -> dict:
        return {"submitted": self.submitted, "fused": self.fused,
                "mean_batch": round(self.pairs_in_calls / self.calls, 2) if self.calls else 0.0,
                "mean_wait_ms": round(1e3 * self.wait_s_total / self.fused, 2) if self.fused else 0.0,
                "max_wait_ms": round(1e3 * self.wait_s_max, 2)}


@dataclass
class _Waiting:
    stream: Hashable
    visible: np.ndarray
    thermal: np.ndarray
    meta: Any
    since: float
    visible_to_output: np.ndarray | None  # raw visible frame's homography (Engine.fuse_unwarped)

    @property
    def kind(self) -> tuple:
        return self.visible.shape, self.thermal.shape, self.visible_to_output is None


@dataclass
class BatchScheduler:
    engine: Engine
    max_batch: int = 4
    max_wait_s: float = 0.005
    clock: Callable[[], float] = time.monotonic
    stats: dict[Hashable, StreamStats] = field(default_factory=dict)

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        self._waiting: list[_Waiting] = []

    def submit(self, stream: Hashable, visible: np.ndarray, thermal: np.ndarray, meta: Any = None,
               visible_to_output: np.ndarray | None = None) -> list[BatchOutput]:
        """Queue one pair ((H, W, 3) uint8 BGR, (H, W) uint8); returns the results of any batch this
        completes (possibly pairs of other streams), in submission order. With `visible_to_output` (3×3)
        the visible frame is raw (any size): the engine pre-warps it (Engine.fuse_unwarped)."""
        done = []
        kind = (visible.shape, thermal.shape, visible_to_output is None)  # what can share one engine call
        if self._waiting and self._waiting[0].kind != kind:
            done = self.flush()
        self._waiting.append(_Waiting(stream, visible, thermal, meta, self.clock(), visible_to_output))
        self.stats.setdefault(stream, StreamStats()).submitted += 1
        if len(self._waiting) >= self.max_batch:
            done += self.flush()
        return done

    def poll(self) -> list[BatchOutput]:
        """Fuse the waiting pairs if the oldest has waited max_wait_s; call it whenever input is idle."""
        deadline = self.time_to_deadline()
        return self.flush() if deadline is not None and deadline <= 0 else []

    def time_to_deadline(self) -> float | None:
        """Seconds until the waiting pairs must be fused (None when none wait): a receive timeout."""
        if not self._waiting:
            return None
        return self._waiting[0].since + self.max_wait_s - self.clock()

    def flush(self) -> list[BatchOutput]:
        """Fuse every waiting pair now, in one engine call."""
        if not self._waiting:
            return []
        waiting, self._waiting = self._waiting, []
        started = self.clock()
        visible, thermal = np.stack([w.visible for w in waiting]), np.stack([w.thermal for w in waiting])
        if waiting[0].visible_to_output is None:
            result = self.engine.fuse(visible, thermal)
        else:
            homographies = np.stack([w.visible_to_output for w in waiting])
            result = self.engine.fuse_unwarped(visible, thermal, homographies, extras=False)
        outputs = []
        for i, item in enumerate(waiting):
            waited = started - item.since
            stats = self.stats[item.stream]
            stats.fused += 1
            stats.wait_s_total += waited
            stats.wait_s_max = max(stats.wait_s_max, waited)
            outputs.append(BatchOutput(
                item.stream, item.meta, result.fused[i],
                None if result.registered is None else result.registered[i],
                None if result.flow is None else result.flow[i], len(waiting), waited))
        for stream in {item.stream for item in waiting}:
            self.stats[stream].calls += 1
            self.stats[stream].pairs_in_calls += len(waiting)
        return outputs

    @property
    def waiting(self) -> int:
        return len(self._waiting)
