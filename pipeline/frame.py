"""What travels between stages: a frame with its identity, timing and pixels.

Every frame is stamped when it is captured and keeps that identity to the recording, so every stage can
measure latency from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

# Pixel formats the wire accepts: name -> (dtype, channels); channels 1 means a 2-D (H, W) array.
PIXEL_FORMATS: dict[str, tuple[np.dtype, int]] = {
    "bgr8": (np.dtype(np.uint8), 3),
    "gray8": (np.dtype(np.uint8), 1),
    "gray16": (np.dtype(np.uint16), 1),
    "flow32": (np.dtype(np.float32), 2),  # per-pixel (dx, dy) displacement, for display and checks
}


def pixel_format_of(image: np.ndarray) -> str:
    """The wire pixel format that describes `image`; raises ValueError for arrays the wire cannot carry."""
    channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else -1
    for name, (dtype, ch) in PIXEL_FORMATS.items():
        if image.dtype == dtype and ch == channels:
            return name
    raise ValueError(f"no pixel format for an array of shape {image.shape} and dtype {image.dtype}")


def wall_ns() -> int:
    """Wall-clock time in ns: the clock used for latency stamps (comparable across NTP-synced machines)."""
    return time.time_ns()


@dataclass
class Frame:
    """One image of one stream.

    `capture_ns` is the media time on the source's clock and is what pairing uses: for cameras the
    monotonic clock at grab time, for files and the synthetic flight the run epoch plus the frame's
    presentation time. `stamps` holds wall-clock ns per pipeline event ("capture", "fuse_in", ...), from
    which every stage measures latency. `extras` carries additional named images (e.g. input thumbnails
    for picture-in-picture); `meta` carries JSON-able facts (source sequence numbers, drop counters).
    """

    stream: str
    seq: int
    capture_ns: int
    image: np.ndarray
    stamps: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def stamp(self, event: str) -> None:
        self.stamps[event] = wall_ns()


@dataclass
class EndOfStream:
    """Sent once by a stage when its stream ends; `meta` carries the stage's final statistics."""

    stream: str
    meta: dict = field(default_factory=dict)
