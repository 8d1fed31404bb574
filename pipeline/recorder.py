"""Recording: H.264 video at the source frame rate that stays playable if the process dies, and a
JSON-lines sidecar with one record per recorded frame.

Why the file survives a kill: the container is written in self-contained pieces that reach the OS as
soon as they are complete. `.mp4` is fragmented MP4 (an empty `moov` up front, then one `moof`+`mdat`
fragment at most every `fragment_s`); `.mkv` is Matroska, whose clusters are closed at the same
interval. `flush_packets=1` makes libavformat hand every finished piece to the OS at once; without it
the output sits in a 256 KiB buffer that a low-bitrate recording fills only every few seconds. A
SIGKILL therefore loses at most the fragment being built (`fragment_s` of video); a file killed
before its first fragment was complete holds no frames (an MP4 then opens empty, an MKV does not
open). A power cut can also lose what the OS had not yet written to disk, so a background thread
fsyncs both files every `fsync_s`.

Time: `write(image, slot)` places the frame at `slot` on the source frame-rate grid (the first slot
written is time 0); skipped slots leave a gap in time, so playback keeps the real timing when frames
were dropped upstream.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import SkyfuseError

CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}


@dataclass
class RecorderConfig:
    """Encoder and container settings; the defaults suit live recording on a small CPU."""

    codec: str = "libx264"
    preset: str = "veryfast"  # x264 speed/size trade-off; 640x512 encodes in a few ms per frame
    tune: str = "zerolatency"  # no lookahead or B-frames: each frame is muxed as soon as it is written
    crf: int = 23  # constant quality (lower is better and larger)
    keyframe_interval_s: float = 1.0  # a player can start decoding at most this far before any point
    fragment_s: float = 0.5  # longest piece of video a kill can lose
    fsync_s: float | None = 1.0  # how often the files are forced to disk (None: leave it to the OS)
    threads: int = 0  # encoder threads (0: libx264 decides)
    extra_options: dict[str, str] = field(default_factory=dict)  # more libx264 options, passed as-is


def _frame_rate(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction: 30 -> 30/1, 29.97002997 -> 30000/1001."""
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise SkyfuseError(f"recording frame rate must be positive, got {fps}")
    return rate


def _container_options(fmt: str, config: RecorderConfig) -> dict[str, str]:
    options = {"flush_packets": "1"}
    if fmt == "mp4":
        options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
        options["frag_duration"] = str(int(config.fragment_s * 1e6))  # microseconds
    else:
        options["cluster_time_limit"] = str(int(config.fragment_s * 1e3))  # milliseconds
    return options


class _PeriodicFsync:
    """Forces the named files to disk every `interval_s` from a daemon thread, so the caller never
    waits on the disk. fsync on any descriptor of a file flushes that file's data, including what
    another library wrote through its own descriptor."""

    def __init__(self, paths: list[Path], interval_s: float):
        self.paths = paths
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()

    def sync(self) -> None:
        for path in self.paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # not created yet
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()


def _prepare_output(path: Path) -> None:
    """Create the parent folder and the (empty) file now, so a bad path fails at start-up."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("wb").close()
    except OSError as exc:
        raise SkyfuseError(f"cannot write recording {path}: {exc.strerror or exc}") from exc


class Recorder:
    """H.264 recorder (PyAV/libx264, yuv420p) into fragmented MP4 (`.mp4`) or Matroska (`.mkv`).

    `size` is (width, height) of the images to be written, BGR (H, W, 3) or gray (H, W) uint8. yuv420p
    needs even sizes: an odd width or height is padded by one replicated column or row.
    """

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int],
                 config: RecorderConfig | None = None):
        self.path = Path(path)
        self.config = config or RecorderConfig()
        self.rate = _frame_rate(fps)
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise SkyfuseError(f"recording size must be positive, got {size}")
        fmt = CONTAINERS.get(self.path.suffix.lower())
        if fmt is None:
            raise SkyfuseError(f"cannot record to {self.path}: use a .mp4 or .mkv file name")
        if self.config.fragment_s <= 0 or self.config.keyframe_interval_s <= 0:
            raise SkyfuseError("recorder fragment_s and keyframe_interval_s must be positive")
        _prepare_output(self.path)
        width, height = self.size
        self._pad = (width % 2, height % 2)
        self.frames = 0
        self.last_slot: int | None = None
        self._first_slot = 0
        self._container = av.open(str(self.path), "w", format=fmt,
                                  container_options=_container_options(fmt, self.config))
        try:
            self._stream = self._add_video_stream(width + self._pad[0], height + self._pad[1])
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            raise SkyfuseError(f"cannot set up the {self.config.codec} encoder: {exc}") from exc
        self._fsync = (_PeriodicFsync([self.path], self.config.fsync_s)
                       if self.config.fsync_s else None)

    def _add_video_stream(self, width: int, height: int) -> av.VideoStream:
        c = self.config
        gop = max(1, round(float(self.rate) * c.keyframe_interval_s))
        options = {"preset": c.preset, "tune": c.tune, "crf": str(c.crf), "g": str(gop), **c.extra_options}
        stream = self._container.add_stream(c.codec, rate=self.rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = 1 / self.rate  # pts counts slots
        stream.codec_context.thread_count = c.threads
        stream.codec_context.open()  # now, so bad encoder options fail here rather than at the first frame
        return stream

    def write(self, image: np.ndarray, slot: int) -> bool:
        """Encode `image` at grid position `slot`; False (nothing written) unless slot > the last one."""
        if self._container is None:
            raise SkyfuseError(f"recording {self.path} is already closed")
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        height, width = image.shape[:2]
        if (width, height) != self.size or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise SkyfuseError(f"recording {self.path} takes {self.size[0]}x{self.size[1]} uint8 images, "
                               f"got shape {image.shape} dtype {image.dtype}")
        if any(self._pad):
            image = cv2.copyMakeBorder(image, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE)
        if self.last_slot is None:
            self._first_slot = slot
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                           format="gray" if image.ndim == 2 else "bgr24")
        frame.pts = slot - self._first_slot
        self._mux(self._stream.encode(frame))
        self.last_slot = slot
        self.frames += 1
        return True

    def _mux(self, packets: list) -> None:
        try:
            self._container.mux(packets)
        except OSError as exc:  # disk full, file system gone
            raise SkyfuseError(f"writing recording {self.path} failed: {exc}") from exc

    def close(self) -> None:
        """Flush the encoder and finalise the container; safe to call twice."""
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()
            self._container = None
            if self._fsync:
                self._fsync.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"sidecar records take JSON values, got {type(value).__name__}")


class Sidecar:
    """JSON-lines file, one object per recorded frame. Each line is handed to the OS as it is written,
    so a kill loses at most the line being written; `read_sidecar` skips such a torn last line."""

    def __init__(self, path: str | os.PathLike, fsync_s: float | None = 1.0):
        self.path = Path(path)
        _prepare_output(self.path)
        self._file = self.path.open("w", encoding="utf-8", buffering=1)  # line-buffered
        self._fsync = _PeriodicFsync([self.path], fsync_s) if fsync_s else None

    def write(self, record: dict) -> None:
        if self._file is None:
            raise SkyfuseError(f"sidecar {self.path} is already closed")
        self._file.write(json.dumps(record, default=_json_default, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._fsync:
            self._fsync.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_sidecar(path: str | os.PathLike) -> list[dict]:
    """The records of a sidecar; a torn last line (the writer was killed mid-line) is left out."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    records = [json.loads(line) for line in lines[:-1] if line]
    if lines[-1]:
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return records


@dataclass
class VideoInfo:
    """What a recording holds, found by decoding every frame."""

    frames: int
    fps: float  # the stream's average frame rate as the container reports it
    size: tuple[int, int]  # (width, height)
    duration_s: float | None  # the container's duration (None when it does not say)
    times_s: list[float]  # presentation time of each decoded frame


def iter_frames(path: str | os.PathLike) -> Iterator[tuple[float, np.ndarray]]:
    """(time in s, BGR image) for every frame of a video file; decoding errors raise av.FFmpegError."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield float(frame.pts * stream.time_base), frame.to_ndarray(format="bgr24")


def read_video(path: str | os.PathLike) -> VideoInfo:
    """Decode a whole video file (for tests and benchmarks); raises SkyfuseError if it cannot be read."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkyfuseError(f"cannot read video {path}: it has no video stream")
            stream = container.streams.video[0]
            times = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
            duration = container.duration / 1e6 if container.duration is not None else None
            return VideoInfo(len(times), float(stream.average_rate or 0), (stream.width, stream.height),
                             duration, times)
    except av.FFmpegError as exc:
        raise SkyfuseError(f"cannot read video {path}: {exc}") from exc
