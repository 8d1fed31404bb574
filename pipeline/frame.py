"""What travels between stages: a frame with its identity, timing and pixels, and the frame protocol that
says what each stream may carry.

Every frame is stamped when it is captured and keeps that identity to the recording, so every stage can
measure latency from it.

The frame protocol (`STREAMS`, `END_META`, `check_frame`, `check_end`) is what a receiver holds every
decoded message to, because a message that is well-formed on the wire can still carry contents that would
kill a stage (a drop counter that is a string, a frame rate of 1e-9, a 16-bit image where colour is
expected):

- streams and pixel formats: `visible` carries a bgr8 image; `thermal` a gray8 or gray16 image; `fused` a
  bgr8 image with optional picture-in-picture extras `visible` (bgr8) and `thermal` (gray8), each no larger
  than the image. An image is at least MIN_IMAGE_SIDE pixels a side.
- numbers: `seq`, `capture_ns` and every stamp are integers in 0..MAX_INT (ns); `fps` is in
  MIN_FPS..MAX_FPS; counters are integers in 0..MAX_INT; no number is NaN or infinite.
- frame metadata, per stream (`STREAMS[stream].meta`; any other key is refused): `fps`, `drops` (the
  sender's cumulative drops so far, `stage:reason` -> count) on every stream, and from a live source
  `stalled_s` (seconds without a frame before this one: the signal was lost) and `reconnects`; a thermal
  frame replayed from a raw recording carries `recorded_capture_ns` (the capture time it was recorded
  with, on the recording run's clock; its seq is the recorded one); the fused stream adds
  `engine` and `link` (text) and `thermal` (the partner thermal frame: seq, capture_ns, dt_ms, reuse,
  stamps, and recorded_capture_ns when it has one).
- statistics flow on one channel: each frame's `drops` carries the running counts, for the live HUD; the
  end-of-stream's `stats` (stage name -> that stage's summary: frames, fps, drops, latency, ...) carries
  the final ones and replaces them. The fused end-of-stream adds `complete` (whether the fuse stage saw its
  inputs end) and `why` (what cut it short).
- a stream keeps its image's pixel format and size (`StreamCheck`) and its capture times move forward
  within a window (`Timeline`); a change that persists for RESYNC_FRAMES frames in a row is real and taken
  over (a camera restarted, a clock stepped), a shorter one is dropped.

A receiver drops and counts what breaks the protocol (`invalid:<reason>`); nothing here raises into a stage
except ProtocolError, which the receiving port catches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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


MAX_INT = 2**63 - 1  # int64: every integer on the wire (ns, sequence numbers, counters)
MIN_FPS, MAX_FPS = 0.01, 1000.0  # below MIN_FPS a recording's rate would round to zero
MIN_IMAGE_SIDE = 16  # the smallest frame an engine, the pre-warp and a 1/4 thumbnail still handle
MAX_TEXT = 1000  # characters of a text field (engine description with auto's reasons, link, reason)
MAX_TIME_STEP_S = 2.0  # a capture time further ahead of the stream's last one is a jump
RESYNC_FRAMES = 5  # consecutive frames that agree on a new time base, size or format make it the stream's


class ProtocolError(ValueError):
    """A message whose contents break the frame protocol; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value) -> bool:
    return _is_int(value) and 0 <= value <= MAX_INT


def _number(value) -> bool:
    if _is_int(value):
        return -MAX_INT <= value <= MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def _rate(value) -> bool:
    return _number(value) and MIN_FPS <= value <= MAX_FPS


def _text(value) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _flag(value) -> bool:
    return isinstance(value, bool)


def _counters(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _count(v) for k, v in value.items())


def _fields(value, spec: dict[str, Callable[[object], bool]]) -> str | None:
    """The first key of `value` that `spec` does not allow or whose value fails its check; None if fine
    ("" when `value` is not an object at all)."""
    if not isinstance(value, dict):
        return ""
    return next((key for key, item in value.items() if key not in spec or not spec[key](item)), None)


def _partner(value) -> bool:
    return _fields(value, {"seq": _count, "capture_ns": _count, "dt_ms": _number, "reuse": _count,
                           "stamps": _counters, "recorded_capture_ns": _count}) is None


def _latency(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(hop, str) and isinstance(numbers, dict) and all(
            isinstance(k, str) and _number(v) for k, v in numbers.items())
        for hop, numbers in value.items())


def _stage_summary(value) -> bool:
    """A stage's final statistics: the keys the sink and `skyfuse run` read are checked, others pass (they
    are plain JSON within the header's bounds, written to stats.json as they came)."""
    checks = {"frames": _count, "fps": lambda v: _number(v) and v >= 0, "drops": _counters,
              "latency": _latency}
    return isinstance(value, dict) and all(check(value[key]) for key, check in checks.items() if key in value)


def _stage_stats(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _stage_summary(v) for k, v in value.items())


@dataclass(frozen=True)
class StreamSpec:
    """What one stream carries: its image's pixel formats, its extra images and their formats, and the
    metadata keys with a check for each value."""

    formats: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]
    meta: dict[str, Callable[[object], bool]]


_CAMERA_META = {"fps": _rate, "drops": _counters, "stalled_s": lambda v: _number(v) and v >= 0,
                "reconnects": _count}
STREAMS: dict[str, StreamSpec] = {
    "visible": StreamSpec(("bgr8",), {}, _CAMERA_META),
    "thermal": StreamSpec(("gray8", "gray16"), {}, {**_CAMERA_META, "recorded_capture_ns": _count}),
    "fused": StreamSpec(("bgr8",), {"visible": ("bgr8",), "thermal": ("gray8",)},
                        {**_CAMERA_META, "engine": _text, "link": _text, "thermal": _partner}),
}
END_META: dict[str, Callable[[object], bool]] = {"stats": _stage_stats, "complete": _flag, "why": _text}


def image_bytes(stream: str, size: tuple[int, int]) -> int:
    """The largest image `stream` may carry at `size` (W, H), in bytes: what a receiver lets through."""
    widest = max(PIXEL_FORMATS[f][0].itemsize * PIXEL_FORMATS[f][1] for f in STREAMS[stream].formats)
    return size[0] * size[1] * widest


def check_frame(frame: Frame) -> None:
    """Raise ProtocolError naming the first thing in `frame` that its stream may not carry."""
    spec = STREAMS.get(frame.stream)
    if spec is None:
        raise ProtocolError("stream", f"unknown stream {frame.stream!r}")
    if not _count(frame.seq) or not _count(frame.capture_ns):
        raise ProtocolError("time", f"seq {frame.seq} or capture_ns {frame.capture_ns} outside 0..{MAX_INT}")
    if not _counters(frame.stamps):
        raise ProtocolError("stamps", f"stamps outside 0..{MAX_INT}")
    bad = _fields(frame.meta, spec.meta)
    if bad is not None:
        raise ProtocolError(f"meta.{bad}".rstrip("."),
                            f"{frame.stream} metadata {bad!r} is not allowed or out of range")
    fmt = pixel_format_of(frame.image)
    if fmt not in spec.formats:
        raise ProtocolError("format", f"{frame.stream} images are {'/'.join(spec.formats)}, not {fmt}")
    height, width = frame.image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ProtocolError("size", f"{width}x{height} is below {MIN_IMAGE_SIDE} pixels a side")
    for name, extra in frame.extras.items():
        if name not in spec.extras or pixel_format_of(extra) not in spec.extras[name]:
            raise ProtocolError("extras", f"{frame.stream} frames carry no {pixel_format_of(extra)} {name!r}")
        if extra.shape[0] > height or extra.shape[1] > width:
            raise ProtocolError("extras", f"{name!r} is larger than the image")


def check_end(eos: EndOfStream) -> None:
    """Raise ProtocolError when an end-of-stream carries metadata the protocol does not allow."""
    if eos.stream not in STREAMS:
        raise ProtocolError("stream", f"unknown stream {eos.stream!r}")
    bad = _fields(eos.meta, END_META)
    if bad is not None:
        raise ProtocolError(f"end.{bad}".rstrip("."),
                            f"end-of-stream metadata {bad!r} is not allowed or malformed")


class _Resync:
    """Counts consecutive outliers that agree with each other: `needed` of them in a row mean the stream
    really changed (one hostile or corrupt frame cannot move a stream; a restarted camera can)."""

    def __init__(self, needed: int = RESYNC_FRAMES):
        self.needed, self.count, self.last = needed, 0, None

    def outlier(self, agrees: Callable[[object], bool], value) -> bool:
        """Note an outlier; True when it completes a run of `needed` that agree (`agrees(previous)`)."""
        self.count = self.count + 1 if self.count and agrees(self.last) else 1
        self.last = value
        if self.count >= self.needed:
            self.count = 0
            return True
        return False

    def reset(self) -> None:
        self.count = 0


class StreamCheck:
    """One stream as a receiving port sees it: every message is held to the protocol, and frames keep the
    pixel format and size the stream started with (the configured size where the run knows it). A frame
    that changes them is dropped unless RESYNC_FRAMES in a row agree on the change."""

    def __init__(self, stream: str, size: tuple[int, int] | None = None):
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; the protocol knows {', '.join(STREAMS)}")
        self.stream = stream
        self.layout: tuple[str | None, int, int] | None = (None, *size) if size else None  # format, W, H
        self.changes = 0
        self._resync = _Resync()

    def check(self, message: Frame | EndOfStream) -> None:
        """Raise ProtocolError if `message` may not arrive on this stream now."""
        if message.stream != self.stream:
            raise ProtocolError("stream", f"a {message.stream!r} message on the {self.stream} input")
        if isinstance(message, EndOfStream):
            check_end(message)
            return
        check_frame(message)
        height, width = message.image.shape[:2]
        layout = (pixel_format_of(message.image), width, height)
        if self.layout is None or layout == self.layout or (self.layout[0] is None
                                                            and layout[1:] == self.layout[1:]):
            self.layout = layout
            self._resync.reset()
        elif self._resync.outlier(lambda previous: previous == layout, layout):
            self.layout = layout
            self.changes += 1
        else:
            what = "size" if layout[1:] != self.layout[1:] else "format"
            raise ProtocolError(f"{what}_changed", f"{layout} where the stream has {self.layout}")


class Timeline:
    """A stream's capture times: each frame must come after the last one and at most `max_step_s` (or four
    frame periods, if longer) later — or later by no more than the time that passed here since the last
    one arrived (plus that step): a silence, such as a camera that lost its signal, stays a gap. A frame
    outside that is refused as `out_of_order` or `time_jump`, unless it is the RESYNC_FRAMES-th in a row
    that agree with each other: then the stream's clock really moved (a restarted camera, a stepped clock)
    and the timeline follows it (`resync`)."""

    def __init__(self, max_step_s: float = MAX_TIME_STEP_S):
        self.max_step_s = max_step_s
        self.last_ns: int | None = None
        self.last_arrival_ns: int | None = None  # local monotonic time the last admitted frame arrived
        self._resync = _Resync()

    def admit(self, time_ns: int, fps: float | None = None, arrival_ns: int | None = None) -> str:
        """`ok`, `resync` (accepted on a new time base), `out_of_order` or `time_jump` (refused);
        `arrival_ns`: when the frame arrived here (local monotonic clock; default now)."""
        max_step_ns = int(max(self.max_step_s, 4 / fps if fps else 0) * 1e9)
        arrival_ns = time.monotonic_ns() if arrival_ns is None else arrival_ns

        def follows(previous) -> bool:
            return previous is not None and 0 < time_ns - previous <= max_step_ns

        def after_a_silence() -> bool:
            waited_ns = arrival_ns - self.last_arrival_ns
            return time_ns > self.last_ns and time_ns - self.last_ns <= waited_ns + max_step_ns

        if self.last_ns is None or follows(self.last_ns) or after_a_silence():
            self.last_ns, self.last_arrival_ns = time_ns, arrival_ns
            self._resync.reset()
            return "ok"
        if self._resync.outlier(follows, time_ns):
            self.last_ns, self.last_arrival_ns = time_ns, arrival_ns
            return "resync"
        return "out_of_order" if time_ns <= self.last_ns else "time_jump"
