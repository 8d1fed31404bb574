"""Recording: H.264 video at the source frame rate that stays playable if the process dies, and a
JSON-lines sidecar with one record per recorded frame.

Why the file survives a kill: the container is written in self-contained pieces that reach the OS as
soon as they are complete. `.mp4` is fragmented MP4 (an empty `moov` up front, then one `moof`+`mdat`
fragment at most every `fragment_s`); `.mkv` is Matroska, whose clusters are closed at the same
interval. `flush_packets=1` makes libavformat hand every finished piece to the OS at once; without it
the output sits in a 256 KiB buffer that a low-bitrate recording fills only every few seconds. A
SIGKILL therefore loses at most the fragment being built (`fragment_s` of video) and the frames still
waiting for the encoder (`queue_frames`); a file killed before its first fragment was complete holds no
frames (an MP4 then opens empty, an MKV does not open). A power cut can also lose what the OS had not yet
written to disk, so a background thread fsyncs both files every `fsync_s`.

Why a thread: colour conversion and H.264 encoding cost about as much as a 1080p frame period on a CPU,
so they run on an encoding thread fed through a bounded queue; `write` only checks the frame and hands
it over (both OpenCV and FFmpeg release the GIL, so the two run on separate cores). A full queue makes
`write` wait (back-pressure); `busy` lets a live caller drop instead. Frames are encoded in the order
written, `close` encodes and muxes every queued frame, and a failure in the thread is raised by the next
`write` or by `close` as a SkyfuseError.

Live stream: with `RecorderConfig.stream` set, every packet the encoder gives is also handed, before it
is muxed into the file, to a `StreamOutput` (pipeline/streamout.py) that sends the same bytes to viewers
(RTP or MPEG-TS over UDP, or an RTSP server): one encoder, one bitstream, and a network that never stalls
the recording. `bitrate` caps the encoder for a radio link (capped constant quality: VBV maxrate with a
one-second buffer), which then holds for the recording too, since it is the same bitstream.

Time: `write(image, slot)` places the frame at `slot` on the source frame-rate grid (the first slot
written is time 0); skipped slots leave a gap in time, so playback keeps the real timing when frames
were dropped upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from core.errors import SkyfuseError

from .streamout import (
    FORMATS,
    RTSP_TRANSPORTS,
    StreamConfig,
    StreamOutput,
    parse_bitrate,
    parse_keyframe_interval,
    parse_stream_url,
    sdp_path_for,
)

CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}
ENCODERS = ("auto", "libx264", "h264_nvenc")  # auto: h264_nvenc where it opens, else libx264
MAX_ENCODER_THREADS = 8  # x264 slices per frame: more cost compression for little speed at 1080p


@dataclass
class RecorderConfig:
    """Encoder and container settings; the defaults suit live recording on a small CPU."""

    codec: str = "auto"  # one of ENCODERS
    preset: str = "veryfast"  # libx264 speed/size trade-off (h264_nvenc always uses its fastest, p1)
    tune: str = "zerolatency"  # libx264: no lookahead or B-frames, each frame is muxed once written
    crf: int = 23  # constant quality, lower is better and larger (libx264 crf, h264_nvenc cq)
    keyframe_interval_s: float = 1.0  # a player can start decoding at most this far before any point
    keyframe_interval_frames: int | None = None  # the same in frames; replaces keyframe_interval_s when set
    bitrate: int | None = None  # bits/s cap on the constant quality (VBV, 1 s buffer), e.g. for a radio link
    fragment_s: float = 0.5  # longest piece of video a kill can lose
    fsync_s: float | None = 1.0  # how often the files are forced to disk (None: leave it to the OS)
    threads: int = 0  # libx264 threads (0: one per core, at most MAX_ENCODER_THREADS)
    queue_frames: int = 4  # frames that may wait for the encoding thread before `write` waits
    extra_options: dict[str, str] = field(default_factory=dict)  # more encoder options, passed as-is
    stream: StreamConfig | None = None  # also send the encoded packets to live viewers (streamout.py)


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


def _encoder_options(codec: str, config: RecorderConfig, gop: int) -> dict[str, str]:
    """Low-latency constant-quality options for `codec`; each frame leaves the encoder as it goes in."""
    if codec == "h264_nvenc":
        options = {"preset": "p1", "tune": "ull", "zerolatency": "1", "delay": "0", "bf": "0",
                   "rc": "vbr", "cq": str(config.crf)}
    else:
        options = {"preset": config.preset, "tune": config.tune, "crf": str(config.crf)}
    if config.bitrate:  # capped quality: easy scenes stay below the cap, no second ever exceeds it
        options.update(maxrate=str(config.bitrate), bufsize=str(config.bitrate))
    return {**options, "g": str(gop), **config.extra_options}


def encoder_threads(config: RecorderConfig) -> int:
    """Threads libx264 gets: as configured, or one per core up to MAX_ENCODER_THREADS (libx264's own
    choice, 1.5 per core, oversubscribes a small machine that also runs the other stages)."""
    return config.threads or min(os.cpu_count() or 1, MAX_ENCODER_THREADS)


def open_output(path: Path, rate: Fraction, size: tuple[int, int], codec: str,
                config: RecorderConfig) -> tuple[av.container.OutputContainer, av.VideoStream]:
    """The container at `path` with one opened H.264 stream of `size` (even) counting slots of 1/rate;
    SkyfuseError if the encoder does not open (bad options, no such hardware)."""
    fmt = CONTAINERS[path.suffix.lower()]
    container = av.open(str(path), "w", format=fmt, container_options=_container_options(fmt, config))
    try:
        gop = config.keyframe_interval_frames or max(1, round(float(rate) * config.keyframe_interval_s))
        stream = container.add_stream(codec, rate=rate, options=_encoder_options(codec, config, gop))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate  # pts counts slots
        if codec == "libx264":
            stream.codec_context.thread_count = encoder_threads(config)
        stream.codec_context.open()  # now, so a bad option or a missing device fails here, not mid-run
    except (av.FFmpegError, ValueError) as exc:
        container.close()
        raise SkyfuseError(f"cannot set up the {codec} encoder: {exc}") from exc
    return container, stream


def to_yuv420(image: np.ndarray, pad: tuple[int, int] = (0, 0)) -> av.VideoFrame:
    """A yuv420p frame of a BGR or gray uint8 image, padded by `pad` (columns, rows) of replicated edge.

    OpenCV's BGR->I420 (BT.601, limited range: what FFmpeg's own conversion gives, within rounding) is
    several times faster than FFmpeg's, which is what encoding a BGR frame would otherwise use."""
    if any(pad):
        image = cv2.copyMakeBorder(image, 0, pad[1], 0, pad[0], cv2.BORDER_REPLICATE)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")


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
            except OSError:
                pass  # not syncable (a device); a failing disk shows up as a write error instead
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
    """H.264 recorder (PyAV, yuv420p) into fragmented MP4 (`.mp4`) or Matroska (`.mkv`), encoding on its
    own thread.

    `size` is (width, height) of the images to be written, BGR (H, W, 3) or gray (H, W) uint8. yuv420p
    needs even sizes: an odd width or height is padded by one replicated column or row. `codec` is the
    encoder in use and `fallback` says why `auto` did not get h264_nvenc (None when it did or was not
    asked to).
    """

    dtype = np.dtype(np.uint8)  # the samples `write` takes (a lossless subclass records others)

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int],
                 config: RecorderConfig | None = None):
        self.path = Path(path)
        self.config = config or RecorderConfig()
        self.rate = _frame_rate(fps)
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise SkyfuseError(f"recording size must be positive, got {size}")
        if self.path.suffix.lower() not in CONTAINERS:
            raise SkyfuseError(f"cannot record to {self.path}: use a .mp4 or .mkv file name")
        if self.config.fragment_s <= 0 or self.config.keyframe_interval_s <= 0:
            raise SkyfuseError("recorder fragment_s and keyframe_interval_s must be positive")
        if self.config.codec not in ENCODERS:
            raise SkyfuseError(f"unknown encoder {self.config.codec!r}; choose one of {', '.join(ENCODERS)}")
        if self.config.queue_frames < 1:
            raise SkyfuseError("recorder queue_frames must be at least 1")
        if self.config.keyframe_interval_frames is not None and self.config.keyframe_interval_frames < 1:
            raise SkyfuseError("recorder keyframe_interval_frames must be at least 1")
        _prepare_output(self.path)
        width, height = self.size
        self._pad = (width % 2, height % 2)
        coded = (width + self._pad[0], height + self._pad[1])
        self.codec, self.fallback = self._open(coded)
        self.stream_out: StreamOutput | None = None
        if self.config.stream is not None:
            try:
                self.stream_out = StreamOutput(self.config.stream, self.rate, coded,
                                               self._stream.codec_context.extradata)
            except SkyfuseError:
                self._container.close()
                raise
        self.frames = 0
        self.last_slot: int | None = None
        self._first_slot = 0
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.queue_frames)
        self._error: SkyfuseError | None = None
        self._error_reported = False
        self._encode_ms: deque[float] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._encode_loop, name="recorder-encode", daemon=True)
        self._thread.start()
        self._fsync = (_PeriodicFsync([self.path], self.config.fsync_s)
                       if self.config.fsync_s else None)

    def _open(self, size: tuple[int, int]) -> tuple[str, str | None]:
        """Open the container with the configured encoder; `auto` tries h264_nvenc, then libx264."""
        if self.config.codec != "auto":
            self._container, self._stream = open_output(self.path, self.rate, size, self.config.codec,
                                                        self.config)
            return self.config.codec, None
        try:
            self._container, self._stream = open_output(self.path, self.rate, size, "h264_nvenc", self.config)
            return "h264_nvenc", None
        except SkyfuseError as exc:
            self._container, self._stream = open_output(self.path, self.rate, size, "libx264", self.config)
            reason = getattr(exc.__cause__, "strerror", None) or exc.__cause__
            return "libx264", f"h264_nvenc did not open ({reason}); using libx264"

    @property
    def busy(self) -> bool:
        """Whether the encoder's queue is full, so that `write` would wait."""
        return self._queue.full()

    def write(self, image: np.ndarray, slot: int) -> bool:
        """Queue `image` for encoding at grid position `slot`; False (nothing written) unless slot > the
        last one. Waits while the queue is full. The image is encoded later: do not change it afterwards."""
        if self._closed:
            raise SkyfuseError(f"recording {self.path} is already closed")
        self._raise_error()
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        height, width = image.shape[:2]
        if (width, height) != self.size or image.dtype != self.dtype or image.ndim not in (2, 3):
            raise SkyfuseError(f"recording {self.path} takes {self.size[0]}x{self.size[1]} {self.dtype} "
                               f"images, got shape {image.shape} dtype {image.dtype}")
        if self.last_slot is None:
            self._first_slot = slot
        self._queue.put((image, slot - self._first_slot, time.perf_counter()))
        self.last_slot = slot
        self.frames += 1
        return True

    def encode_times_ms(self) -> list[float]:
        """Milliseconds from `write` to muxed of the frames finished since the last call."""
        times = []
        while self._encode_ms:
            times.append(self._encode_ms.popleft())
        return times

    def _encode_loop(self) -> None:
        """Encode and mux queued frames in order; after a failure keep taking (and dropping) them so
        that a waiting `write` returns and raises, then finalise the container in every case."""
        while (item := self._queue.get()) is not None:
            if self._error is None:
                self._run(self._encode, *item)
        if self._error is None:
            self._run(self._flush)
        self._run(self._container.close)

    def _encode(self, image: np.ndarray, pts: int, queued: float) -> None:
        frame = to_yuv420(image, self._pad)
        frame.pts = pts
        self._mux(self._stream.encode(frame))
        self._encode_ms.append((time.perf_counter() - queued) * 1e3)

    def _flush(self) -> None:
        """Mux what the encoder still holds (none with the low-latency options, but keep it exact)."""
        self._mux(self._stream.encode(None))

    def _mux(self, packets: list[av.Packet]) -> None:
        """Into the file, and first to the live stream (the file's muxer rescales the packets' times)."""
        if self.stream_out is not None:
            for packet in packets:
                self.stream_out.send(bytes(packet), packet.pts, packet.dts, packet.is_keyframe,
                                     packet.time_base)
        self._container.mux(packets)

    def stream_stats(self) -> dict | None:
        """What the live stream sent, dropped and failed (None without one)."""
        return self.stream_out.stats() if self.stream_out is not None else None

    def _run(self, step, *args) -> None:
        """Run one step of the encoding thread, keeping its first failure for the writer."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - disk full, encoder failure: whatever it is must reach the writer
            self._error = self._error or SkyfuseError(f"encoding recording {self.path} failed: {exc}")

    def _raise_error(self) -> None:
        if self._error is not None and not self._error_reported:
            self._error_reported = True
            raise self._error

    def close(self) -> None:
        """Encode and mux every queued frame, flush the encoder and finalise the container; raises a
        failure of the encoding thread not raised yet. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        if self.stream_out is not None:
            self.stream_out.close()
        if self._fsync:
            self._fsync.close()
        self._raise_error()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The live stream's flags and the encoder settings it needs (`skyfuse sink` and `skyfuse run`)."""
    parser.add_argument("--stream", metavar="URL", default=None,
                        help="also send the recording's H.264 (encoded once) to udp://HOST:PORT (RTP, SDP "
                             "written beside the recording, or MPEG-TS) or publish it to an RTSP server "
                             "at rtsp://SERVER[:PORT]/PATH")
    parser.add_argument("--stream-format", choices=FORMATS, default=None,
                        help="what a udp:// stream carries: rtp (default) or mpegts")
    parser.add_argument("--stream-bitrate", metavar="RATE", default=None,
                        help="cap the H.264 bitrate (e.g. 2M, 800k) for a radio link; the recording is the "
                             "same bitstream, so it is capped too (default: constant quality, uncapped)")
    parser.add_argument("--keyframe-interval", metavar="N|Ss", default=None,
                        help="a keyframe every N frames (e.g. 30) or S seconds (e.g. 1s, the default): how "
                             "long a viewer that joins or loses packets waits for a picture")
    parser.add_argument("--rtsp-transport", choices=RTSP_TRANSPORTS, default=None,
                        help="how RTP reaches an RTSP server: tcp (default, reliable) or udp")


def recorder_config_of(encoder: str, output: Path, *, stream: str | None = None,
                       stream_format: str | None = None, stream_bitrate: str | int | None = None,
                       keyframe_interval: str | int | None = None,
                       rtsp_transport: str | None = None) -> RecorderConfig:
    """The recorder's settings from the sink's options; SkyfuseError with one line for a bad one."""
    if stream is None and (stream_format or stream_bitrate or rtsp_transport) is not None:
        raise SkyfuseError("a stream format, bitrate or RTSP transport needs a stream: add --stream URL "
                           "(stream in a YAML config)")
    config = RecorderConfig(codec=encoder)
    if keyframe_interval is not None:
        frames, seconds = parse_keyframe_interval(keyframe_interval)
        config.keyframe_interval_frames = frames
        config.keyframe_interval_s = seconds or config.keyframe_interval_s
    if stream_bitrate is not None:
        config.bitrate = parse_bitrate(stream_bitrate)
    if stream is not None:
        target = parse_stream_url(stream, stream_format)
        config.stream = StreamConfig(url=stream, format=stream_format, rtsp_transport=rtsp_transport or "tcp",
                                     sdp_path=sdp_path_for(output) if target.format == "rtp" else None)
    return config


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"sidecar records take JSON values, got {type(value).__name__}")


class Sidecar:
    """JSON-lines file, one object per recorded frame. Each line is handed to the OS as it is written,
    so a kill loses at most the line being written; `pipeline.sidecar.read_sidecar` skips such a torn
    last line."""

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
