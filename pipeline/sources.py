"""Where frames come from: the synthetic flight, video files, image sequences and cameras.

`open_source(spec, stream)` picks the kind from the spec string:

    synthetic[:key=value,...]   the synthetic flight; keys are FlightConfig fields (seed=3, thermal_fps=9,
                                thermal_bits=16, visible_size=640x360, offset_px=12x-8, ...)
    synthetic-camera[:...]      the synthetic flight as a live camera: frames exist in real time from
                                when it opens, whether or not anyone reads them (live)
    camera:N | N | /dev/videoN  a V4L2 camera by index (live)
    rtsp://... | http(s)://...  a network stream through FFmpeg (live)
    '... ! ... ! appsink'       a GStreamer pipeline (any spec containing '!'; live)
    DIR                         the image files of a folder, in natural name order (frame2 < frame10)
    'DIR/*.png'                 the files a glob matches, in natural name order
    FILE.csv[#COLUMN]           the paths in COLUMN (default `path`) of a CSV, relative to the CSV's folder;
                                an optional `time_s` column gives presentation times; a blank cell is a
                                missing frame (skipped, its time slot stays empty)
    FILE.png|.jpg|.tif|...      a single image
    FILE                        anything else: a video file (fps from the file, times = index / fps); a
                                raw thermal recording (lossless FFV1 gray or gray16le, what `skyfuse run
                                --record-thermal` writes) is recognised and replayed bit-exactly at its
                                recorded times

Visible frames are always BGR uint8 (H, W, 3); thermal frames gray (H, W) uint8 or uint16 (16-bit PNG
and TIFF files are kept as uint16; AGC happens downstream). Image sequences without times run at `fps`
(default 30); frame i of a sequence is row i (blank rows keep their index). Every frame of a source must
have the size of its first frame; a frame of another size, or an undecodable file, raises CorruptFrame
for that frame and the next read() continues. Problems with the spec itself raise SkyfuseError.

A replay (files, the synthetic flight) that falls behind real time can `skip_late`: the frames a newer one
has replaced are passed over without being decoded or rendered. A frame limit counts source frames (read,
skipped or corrupt), so `frames=300` is always the first 10 s of a 30 fps source.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import av
import cv2
import numpy as np

from core.errors import SkyfuseError

from .sidecar import PIXEL_FORMATS, read_frame_identities, sidecar_path
from .stage import log, split_options
from .synthetic import FlightConfig, SyntheticFlight, config_field_types

STREAMS = ("visible", "thermal")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".webp")
DEFAULT_SEQUENCE_FPS = 30.0
DEFAULT_OPEN_TIMEOUT_S = 5.0  # a camera or stream that has not opened by then is unreachable (FFmpeg: 30 s)
DEFAULT_STALL_TIMEOUT_S = 5.0  # a live source without a frame for this long has lost its signal
RECONNECT_BACKOFF_S = (0.0, 0.25, 0.5, 1.0)  # waits before successive reconnection attempts; then the last


@dataclass
class SourceFrame:
    index: int  # position in the source (image sequences: row, so missing frames leave gaps; a raw
    # recording: the seq the frame was captured with)
    time_s: float  # presentation time from the stream start
    image: np.ndarray
    capture_ns: int | None = None  # a replayed raw recording: the capture time the frame was recorded with


class CorruptFrame(Exception):
    """One frame could not be decoded or does not fit the stream; the next read() continues. `reason` is
    the drop counter it is counted under."""

    reason = "corrupt_frame"


class MissingFile(CorruptFrame):
    """A frame's file is gone (a folder deleted or unmounted mid-run); the next read() continues."""

    reason = "missing_file"


class SignalLost(Exception):
    """A live source has no frame now: its stream closed, or nothing came within the stall time-out. The
    next read(), best after `retry_in_s` (a back-off), tries to reconnect; a live source never ends by
    itself."""

    def __init__(self, message: str, retry_in_s: float):
        super().__init__(message)
        self.retry_in_s = retry_in_s


class Source(ABC):
    """A stream of frames. `read()` returns the next frame, None at the end, or raises CorruptFrame."""

    stream: str  # "visible" | "thermal"
    fps: float  # native rate
    frame_count: int | None  # frames read() will return; None for live or unknown
    live: bool  # a camera: frames come in real time and cannot be replayed faster

    reconnects = 0  # live sources: how often the signal came back after it was lost

    def __init__(self, stream: str, limit: int | None):
        self.stream, self.limit = stream, limit
        self.position = 0  # frames used up so far: read, skipped or corrupt; `limit` bounds it
        self._size: tuple[int, int] | None = None  # (height, width) of the first frame

    def read(self, counted: bool = True) -> SourceFrame | None:
        """The next frame, None at the end; `counted=False` reads one that does not count against `limit`
        (a live source's frames that arrive before the run starts). A corrupt frame counts too: `limit` is
        a length of the source, not a number of good frames."""
        if counted and self.limit is not None and self.position >= self.limit:
            return None
        try:
            item = self._next()
        except CorruptFrame:
            if counted:
                self.position += 1
            raise
        if item is not None and counted:
            self.position += 1
        return item

    def skip_late(self, now_s: float) -> int:
        """Skip, without decoding or rendering them, the frames that a later frame has replaced by media time
        `now_s`, so a replay that fell behind real time goes on with the frame due now instead of spending
        its time on frames it would throw away. Skipped frames count against `limit`; returns how many."""
        skipped = 0
        while (self.limit is None or self.position + 1 < self.limit) and self._skip_if_replaced(now_s):
            self.position += 1
            skipped += 1
        return skipped

    @abstractmethod
    def _next(self) -> SourceFrame | None:
        """The next frame without the length limit."""

    def _skip_if_replaced(self, now_s: float) -> bool:
        """Move past the next frame, unread, if the frame after it is presented by `now_s`; False when it is
        not, or when this source cannot tell (every frame is then read: live sources, plug-ins)."""
        return False

    def close(self) -> None:
        """Release the device or file; reading afterwards is not allowed. Sources that hold nothing open
        (the synthetic flight, image sequences) have nothing to do."""
        return None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _limited(self, count: int | None) -> int | None:
        if count is None:
            return self.limit
        return count if self.limit is None else min(count, self.limit)

    def _conform(self, image: np.ndarray, what: str) -> np.ndarray:
        """The decoded `image` in this stream's pixel format; CorruptFrame if it cannot be."""
        if image.dtype not in (np.uint8, np.uint16):
            raise CorruptFrame(f"{what}: unsupported pixel type {image.dtype}")
        channels = 1 if image.ndim == 2 else image.shape[2]
        if self.stream == "visible":
            if image.dtype == np.uint16:
                image = (image >> 8).astype(np.uint8)
            code = {1: cv2.COLOR_GRAY2BGR, 4: cv2.COLOR_BGRA2BGR}.get(channels)
        else:
            code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(channels)
        if code is not None:
            image = cv2.cvtColor(image, code)
        elif image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if self._size is None:
            self._size = image.shape[:2]
        elif image.shape[:2] != self._size:
            raise CorruptFrame(f"{what}: size {image.shape[1]}x{image.shape[0]} differs from the stream's "
                               f"{self._size[1]}x{self._size[0]}")
        return image


class SyntheticSource(Source):
    """One camera of the synthetic flight; unlimited unless `limit` is given."""

    live = False

    def __init__(self, flight: SyntheticFlight, stream: str, limit: int | None):
        super().__init__(stream, limit)
        self.flight = flight
        cfg = flight.config
        self.fps = cfg.visible_fps if stream == "visible" else cfg.thermal_fps
        self.frame_count = limit
        self._render = flight.visible_frame if stream == "visible" else flight.thermal_frame
        self._time = flight.visible_time if stream == "visible" else flight.thermal_time
        self._index = 0

    def _next(self) -> SourceFrame:
        i, self._index = self._index, self._index + 1
        return SourceFrame(i, self._time(i), self._render(i))

    def _skip_if_replaced(self, now_s: float) -> bool:
        if self._time(self._index + 1) > now_s:
            return False
        self._index += 1
        return True


class SyntheticCameraSource(SyntheticSource):
    """The synthetic flight as a live camera: frame i exists from i / fps after opening, and read() returns
    the newest one (waiting for the next when it is ahead), as a sensor that keeps exposing whether or
    not anyone reads it. What a stage that cannot keep up, or is not ready yet, meets with a real camera."""

    live = True

    def __init__(self, flight: SyntheticFlight, stream: str, limit: int | None):
        super().__init__(flight, stream, limit)
        self.frame_count = None
        self._opened = time.monotonic()

    def _next(self) -> SourceFrame:
        newest = int((time.monotonic() - self._opened) * self.fps)
        if newest < self._index:
            time.sleep(max(0.0, self._opened + self._index / self.fps - time.monotonic()))  # may have passed
        self._index = max(self._index, newest)
        return super()._next()


class ImageSequenceSource(Source):
    """Image files in a given order; an entry without a path is a missing frame (its slot stays empty)."""

    live = False

    def __init__(self, entries: list[tuple[Path | None, float | None]], stream: str, fps: float,
                 limit: int | None):
        super().__init__(stream, limit)
        self.entries, self.fps = entries, fps
        self.frame_count = self._limited(sum(path is not None for path, _ in entries))
        self._row = 0

    def _next(self) -> SourceFrame | None:
        row = self._present_row(self._row)
        if row is None:
            self._row = len(self.entries)
            return None
        self._row = row + 1
        path = self.entries[row][0]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingFile(f"file gone: {path}") from None
        except OSError as exc:
            raise CorruptFrame(f"cannot read {path}: {exc.strerror}") from None
        if path.suffix.lower() in (".jpg", ".jpeg") and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
            # No end-of-image marker after the last scan: libjpeg would decode it, grey below the cut.
            raise CorruptFrame(f"truncated JPEG {path}")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise CorruptFrame(f"cannot decode image {path}")
        return SourceFrame(row, self._row_time(row), self._conform(image, str(path)))

    def _skip_if_replaced(self, now_s: float) -> bool:
        row = self._present_row(self._row)
        following = None if row is None else self._present_row(row + 1)
        if following is None or self._row_time(following) > now_s:
            return False
        self._row = row + 1
        return True

    def _present_row(self, start: int) -> int | None:
        """The first row from `start` on that names a file (blank rows are missing frames)."""
        return next((row for row in range(start, len(self.entries)) if self.entries[row][0] is not None),
                    None)

    def _row_time(self, row: int) -> float:
        time_s = self.entries[row][1]
        return row / self.fps if time_s is None else time_s


class CaptureSource(Source):
    """Anything cv2.VideoCapture reads: video files (replayable) and cameras or network streams (live).

    A live one that loses its signal (the stream closes, or no frame comes within `stall_timeout` seconds)
    raises SignalLost and reconnects on later reads, with a back-off, for as long as the run goes on: its
    frames keep their grab times, so the outage stays a gap in time. Through FFmpeg, opening and every read
    are bounded by `open_timeout` and `stall_timeout` (FFmpeg's own default is 30 s for both)."""

    def __init__(self, target: int | str, api: int, name: str, stream: str, *, live: bool, fps: float | None,
                 limit: int | None, open_timeout: float, stall_timeout: float, failure: str):
        super().__init__(stream, limit)
        self.name, self.live = name, live
        self.open_timeout, self.stall_timeout = open_timeout, stall_timeout
        self._target, self._api = target, api
        self.capture = self._connect()
        if self.capture is None:
            raise SkyfuseError(failure)
        native = self.capture.get(cv2.CAP_PROP_FPS)
        if live and fps:  # an HTTP MJPEG stream carries no rate: FFmpeg reports 25 whatever it is
            self.fps = fps
        else:
            self.fps = native if 0 < native < 1000 else (fps or DEFAULT_SEQUENCE_FPS)
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = None if live else self._limited(count if count > 0 else None)
        self._index, self._start, self._attempt = 0, time.monotonic(), 0

    def _connect(self) -> cv2.VideoCapture | None:
        """A new capture of the target, None if it does not open (within the open time-out)."""
        params = []
        if self._api == cv2.CAP_FFMPEG:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout * 1000)]
        with _quiet_opencv():
            capture = cv2.VideoCapture(self._target, self._api, params)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _next(self) -> SourceFrame | None:
        if self.capture is None:
            self.capture = self._connect()
            if self.capture is None:
                raise self._lost(f"{self.name}: cannot reconnect")
            self.reconnects += 1
        ok, image = self.capture.read()
        if not ok or image is None:
            if not self.live:
                return None  # end of file (FFmpeg does not tell a damaged tail from the end)
            self.capture.release()
            self.capture = None
            raise self._lost(f"{self.name}: the stream closed or sent nothing for {self.stall_timeout:g} s")
        self._attempt = 0
        i, self._index = self._index, self._index + 1
        time_s = time.monotonic() - self._start if self.live else i / self.fps
        return SourceFrame(i, time_s, self._conform(image, f"{self.name} frame {i}"))

    def _skip_if_replaced(self, now_s: float) -> bool:
        # grab() without retrieve(): FFmpeg still decodes the frame (later ones depend on it) but skips the
        # conversion to BGR and the copy, most of a frame's cost at HD.
        following = self._index + 1
        at_last = self.frame_count is not None and following >= self.frame_count
        if self.live or at_last or following / self.fps > now_s or not self.capture.grab():
            return False
        self._index += 1
        return True

    def _lost(self, message: str) -> SignalLost:
        """SignalLost with the wait before the next attempt: none at first, then longer, up to the last."""
        wait = RECONNECT_BACKOFF_S[min(self._attempt, len(RECONNECT_BACKOFF_S) - 1)]
        self._attempt += 1
        return SignalLost(message, wait)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()


class RawRecordingSource(Source):
    """A raw thermal recording (lossless FFV1 gray or gray16le, as `skyfuse run --record-thermal` writes it),
    decoded through PyAV so that frames keep their 16 bits (OpenCV would hand them over as 8-bit BGR), at
    the times they were recorded (from the first frame's). A damaged tail (a recording cut by a kill)
    ends the replay after the last whole frame, counted once as a corrupt frame.

    Identity: each frame keeps the seq and capture time its sidecar (`PATH.frames.jsonl`) lists for it, so
    what a replay fuses pairs with the original run and its raw frames. Without a readable sidecar the
    frames are numbered from 0, with a one-line warning; a torn last line (a kill mid-line) is left out
    and said once."""

    live = False

    def __init__(self, path: Path, stream: str, limit: int | None):
        super().__init__(stream, limit)
        self.path = path
        self.name = f"capture.{stream}"
        self._container = av.open(str(path))
        video = self._container.streams.video[0]
        self.fps = float(video.average_rate or DEFAULT_SEQUENCE_FPS)
        self.frame_count = self._limited(video.frames or None)  # Matroska does not say
        self._frames = self._container.decode(video)
        self._index = 0
        self._start_s: float | None = None
        self.identities, self.torn_lines = self._read_identities()
        self._unlisted = 0  # frames the sidecar does not list (a foreign or damaged sidecar)

    def _read_identities(self) -> tuple[dict[int, tuple[int, int]] | None, int]:
        side = sidecar_path(self.path)
        try:
            identities, torn = read_frame_identities(self.path)
        except OSError as exc:
            why = "it has no sidecar" if isinstance(exc, FileNotFoundError) else f"cannot read {side}"
            log(self.name, f"replaying {self.path} with frames renumbered from 0: {why} ({side.name}), so "
                           "seqs and capture times are not the original ones")
            return None, 0
        except SkyfuseError as exc:
            log(self.name, f"replaying {self.path} with frames renumbered from 0: {exc}")
            return None, 0
        if torn:
            log(self.name, f"{side}: left out {torn} torn last line (the recording was cut mid-write)")
        return identities, torn

    def _next(self) -> SourceFrame | None:
        try:
            frame = next(self._frames, None)
        except av.FFmpegError as exc:
            raise CorruptFrame(f"{self.path} frame {self._index}: {exc}") from None
        if frame is None:
            self._say_unreplayed()
            return None
        if self._start_s is None:
            self._start_s = frame.time
        i, self._index = self._index, self._index + 1
        image = self._conform(frame.to_ndarray(), f"{self.path} frame {i}")
        seq, capture_ns = self._identity(i)
        return SourceFrame(seq, frame.time - self._start_s, image, capture_ns)

    def _identity(self, position: int) -> tuple[int, int | None]:
        """The recorded seq and capture time of the frame at `position` in the file; renumbered without a
        sidecar, and continuing from the last listed seq for a frame the sidecar does not list."""
        if self.identities is None:
            return position, None
        if position in self.identities:
            return self.identities[position]
        if not self._unlisted:
            log(self.name, f"{sidecar_path(self.path)} does not list frame {position} of {self.path} or "
                           "later ones: they are numbered on from the last listed seq, without capture times")
        self._unlisted += 1
        listed = [p for p in self.identities if p < position]
        last = max(listed, default=None)
        return (position if last is None else self.identities[last][0] + position - last), None

    def _say_unreplayed(self) -> None:
        """At the end of the file: say how many frames the sidecar lists past it (lost with a kill)."""
        if self.identities is None:
            return
        past = sum(p >= self._index for p in self.identities)
        if past:
            log(self.name, f"{self.path} ends after {self._index} frames; its sidecar lists {past} more that "
                           "the file lost (cut by a kill)")
            self.identities = {p: v for p, v in self.identities.items() if p < self._index}  # said once

    def close(self) -> None:
        self._container.close()


def _probe(path: Path) -> tuple[str, str | None] | None:
    """The codec and pixel format of a file's first video stream; the format is None when not one frame
    of it can be decoded (a recording cut inside its first frame); None when the file does not open as a
    video (not a video, or a recording cut before its first frame)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            video = container.streams.video[0]
            return video.codec_context.name, video.format.name if video.format is not None else None
    except (av.FFmpegError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------- opening

def open_source(spec: str, stream: str, *, fps: float | None = None, flight: FlightConfig | None = None,
                frames: int | None = None, open_timeout: float = DEFAULT_OPEN_TIMEOUT_S,
                stall_timeout: float = DEFAULT_STALL_TIMEOUT_S) -> Source:
    """Open the source `spec` (grammar in the module docstring) as the `stream` camera.

    fps: the rate of image sequences without times (default 30) and of videos that report none; a live
    source's rate whatever it reports; for the synthetic flight it sets this stream's rate. flight: the
    FlightConfig that synthetic options override. frames: stop after this many frames. open_timeout:
    seconds a camera or stream may take to open; stall_timeout: seconds without a frame after which a
    live source has lost its signal.
    """
    if stream not in STREAMS:
        raise SkyfuseError(f"unknown stream {stream!r}: use visible or thermal")
    if fps is not None and not fps > 0:
        raise SkyfuseError(f"fps must be positive, got {fps}")
    if frames is not None and frames < 0:
        raise SkyfuseError(f"frames must not be negative, got {frames}")
    if not (open_timeout > 0 and stall_timeout > 0):
        raise SkyfuseError(f"time-outs must be positive, got open {open_timeout} s, stall {stall_timeout} s")
    timeouts = {"open_timeout": open_timeout, "stall_timeout": stall_timeout}
    kind, _, options = spec.partition(":")
    if kind in ("synthetic", "synthetic-camera"):
        config = parse_synthetic_options(options, flight or FlightConfig())
        if fps is not None:
            config = replace(config, **{f"{stream}_fps": fps})
        source = SyntheticSource if kind == "synthetic" else SyntheticCameraSource
        return source(SyntheticFlight(config), stream, frames)
    camera = _camera_index(spec)
    if camera is not None:
        # V4L2 waits for a frame for OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT seconds (default 10), read once.
        os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", str(max(1, round(stall_timeout))))
        return CaptureSource(camera, cv2.CAP_ANY, f"camera {camera}", stream, live=True, fps=fps,
                             limit=frames, failure=f"camera {camera} not found or busy", **timeouts)
    if "://" in spec:
        return CaptureSource(spec, cv2.CAP_FFMPEG, spec, stream, live=True, fps=fps, limit=frames,
                             failure=f"cannot open stream {spec} within {open_timeout:g} s (unreachable, "
                                     "not answering, or not a video stream)", **timeouts)
    if "!" in spec:
        if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise SkyfuseError("GStreamer pipelines need OpenCV built with GStreamer; this one is not")
        return CaptureSource(spec, cv2.CAP_GSTREAMER, "GStreamer pipeline", stream, live=True, fps=fps,
                             limit=frames, failure=f"GStreamer pipeline did not start: {spec}", **timeouts)
    path, _, column = spec.partition("#")
    if path.lower().endswith(".csv"):
        entries, csv_fps = _csv_entries(Path(path), column or "path")
        return ImageSequenceSource(entries, stream, fps or csv_fps or DEFAULT_SEQUENCE_FPS, frames)
    if glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(spec) if Path(p).is_file()]
        if not files:
            raise SkyfuseError(f"no files match {spec}")
        return _sequence(files, stream, fps, frames)
    target = Path(spec)
    if not target.exists():
        raise SkyfuseError(f"{stream} source not found: {spec}")
    if target.is_dir():
        files = [p for p in target.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise SkyfuseError(f"folder {spec} has no image files ({', '.join(IMAGE_SUFFIXES)})")
        return _sequence(files, stream, fps, frames)
    if target.suffix.lower() in IMAGE_SUFFIXES:
        return _sequence([target], stream, fps, frames)
    probe = _probe(target)
    if probe is not None and probe[0] == "ffv1" and probe[1] in PIXEL_FORMATS.values():
        return RawRecordingSource(target, stream, frames)
    if sidecar_path(target).is_file() and (probe is None or probe[1] is None):
        raise SkyfuseError(f"recording {spec} holds no whole frame: it was cut (killed) before its first "
                           "frame reached the disk")
    return CaptureSource(str(target), cv2.CAP_FFMPEG, str(target), stream, live=False, fps=fps, limit=frames,
                         failure=f"cannot read video file {spec} (not a video, or damaged)", **timeouts)


def parse_synthetic_options(options: str, base: FlightConfig) -> FlightConfig:
    """`key=value,...` overrides of FlightConfig fields; sizes and offsets are written WxH / XxY."""
    types = config_field_types()
    changes = {}
    for key, value in split_options(options, "synthetic options").items():
        if key not in types:
            raise SkyfuseError(f"unknown synthetic option {key!r} (options: {', '.join(types)})")
        try:
            if types[key] is tuple:
                parts = value.lower().split("x")
                kind = int if key.endswith("size") else float
                if len(parts) != 2:
                    raise ValueError
                changes[key] = tuple(kind(p) for p in parts)
            else:
                changes[key] = types[key](value)
        except ValueError:
            example = "640x512" if types[key] is tuple else types[key].__name__
            raise SkyfuseError(f"synthetic option {key}={value!r} is not a valid value ({example})") from None
    config = replace(base, **changes)
    config.validate()
    return config


def _camera_index(spec: str) -> int | None:
    match = re.fullmatch(r"(?:camera:|/dev/video)?(\d+)", spec.strip())
    return int(match.group(1)) if match else None


@contextmanager
def _quiet_opencv():
    """Silence OpenCV's own warnings while probing backends: the SkyfuseError says what failed."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _sequence(files: list[Path], stream: str, fps: float | None, frames: int | None) -> ImageSequenceSource:
    entries = [(path, None) for path in sorted(files, key=_natural_key)]
    return ImageSequenceSource(entries, stream, fps or DEFAULT_SEQUENCE_FPS, frames)


def _csv_entries(path: Path, column: str) -> tuple[list[tuple[Path | None, float | None]], float | None]:
    """Rows of a frame-list CSV as (path or None, time or None), and the rate its times imply."""
    if not path.is_file():
        raise SkyfuseError(f"frame list not found: {path}")
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if column not in header:
                names = ", ".join(header) or "none"
                raise SkyfuseError(f"{path} has no column {column!r} (columns: {names})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SkyfuseError(f"cannot read frame list {path}: {exc}") from None
    if not rows:
        raise SkyfuseError(f"frame list {path} has no rows")
    entries, timed = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        cell, time_cell = (row.get(column) or "").strip(), (row.get("time_s") or "").strip()
        frame = path.parent / cell if cell else None
        if frame is not None and not frame.is_file():
            raise SkyfuseError(f"{path} line {number}: file not found: {frame}")
        try:
            time_s = float(time_cell) if time_cell else None
        except ValueError:
            raise SkyfuseError(f"{path} line {number}: time_s {time_cell!r} is not a number") from None
        entries.append((frame, time_s))
        if time_s is not None:
            timed.append((number, time_s))
    if all(frame is None for frame, _ in entries):
        raise SkyfuseError(f"column {column!r} of {path} lists no frames")
    rows_apart, steps = np.diff(np.array(timed).reshape(-1, 2), axis=0).T
    if np.any(steps <= 0):
        raise SkyfuseError(f"{path}: time_s must increase from row to row")
    return entries, (float(np.median(rows_apart / steps)) if len(steps) else None)
