"""A clip: one stream's footage as calibration reads it, in two passes.

The first pass keeps only what is small: every frame's time and the stream's motion track. The second
loads the few frames the geometric calibration pairs up, once the time offset is known. Sources are
re-opened for it, so a long flight never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import SkyfuseError
from pipeline.sources import CorruptFrame, open_source

from .temporal import MotionTracker


@dataclass
class Clip:
    stream: str  # "visible" | "thermal"
    times: np.ndarray  # (N,) presentation time of each frame, s
    track: np.ndarray  # (N, 2) cumulative global image motion, px at the tracker's width
    size: tuple[int, int]  # (width, height)
    load: Callable[[Sequence[int]], list[np.ndarray]]  # the frames at these positions (0..N-1)

    @property
    def fps(self) -> float:
        return float(1.0 / np.median(np.diff(self.times))) if len(self.times) > 1 else 0.0


def clip_from_render(stream: str, times: Sequence[float], render: Callable[[int], np.ndarray]) -> Clip:
    """A clip whose frame at position i is render(i): in-memory frames or a synthetic flight."""
    tracker = MotionTracker()
    first = None
    for i in range(len(times)):
        image = render(i)
        first = image if first is None else first
        tracker.add(image)
    if first is None:
        raise SkyfuseError(f"the {stream} footage has no frames")
    size = (first.shape[1], first.shape[0])
    return Clip(
        stream, np.asarray(times, float), tracker.track(), size, lambda wanted: [render(i) for i in wanted]
    )


def clip_from_source(spec: str, stream: str, *, fps: float | None = None, frames: int | None = None) -> Clip:
    """Scan the source `spec` (see pipeline.sources) once for times and motion; frames load on demand by
    reading it again. Undecodable frames are skipped (they keep no slot)."""
    times, indices, tracker, size = [], [], MotionTracker(), None
    with open_source(spec, stream, fps=fps, frames=frames) as source:
        if getattr(source, "live", False):
            raise SkyfuseError(f"{spec} is a live {stream} source: calibrate from recorded footage")
        for item in _frames(source):
            times.append(item.time_s)
            indices.append(item.index)
            tracker.add(item.image)
            size = size or (item.image.shape[1], item.image.shape[0])
    if not times:
        raise SkyfuseError(f"the {stream} source {spec} has no frames")

    def load(wanted: Sequence[int]) -> list[np.ndarray]:
        targets = {indices[p]: p for p in wanted}
        found: dict[int, np.ndarray] = {}
        with open_source(spec, stream, fps=fps, frames=frames) as again:
            for item in _frames(again):
                if item.index in targets:
                    found[targets[item.index]] = item.image
                if len(found) == len(targets):
                    break
        if len(found) < len(targets):
            raise SkyfuseError(f"the {stream} source {spec} changed while calibrating from it")
        return [found[p] for p in wanted]

    return Clip(stream, np.asarray(times, float), tracker.track(), size, load)


def _frames(source):
    while True:
        try:
            item = source.read()
        except CorruptFrame:
            continue
        if item is None:
            return
        yield item
