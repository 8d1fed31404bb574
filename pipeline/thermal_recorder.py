"""Raw thermal recording: every captured thermal frame kept bit-exactly (lossless FFV1 in Matroska), with a
JSON-lines sidecar of each frame's sequence number and capture time.

Why: the fused recording keeps 8 bits, but a thermal camera's value for review is its radiometric counts
(16-bit; centikelvin on the synthetic flight), which the fuse stage's AGC throws away. The thermal capture
stage records each frame here as it is captured, before it is sent: what is kept is exactly what the
camera gave, with the capture time the frame travels with, including frames the network then drops.

Format: FFV1 version 3, `gray16le` for uint16 frames and `gray` for uint8, every frame a keyframe (`g=1`,
so each frame decodes alone and a file cut anywhere loses only what was cut) with a CRC per slice, in
Matroska with millisecond timestamps counted from the first frame. Surviving a kill and encoding on a
thread work as for the fused recording (pipeline/recorder.py): clusters are closed every `fragment_s` and
handed to the OS at once, both files are fsynced every `fsync_s`, and frames wait for the encoding thread in
a bounded queue, here a second of video deep (`RAW_QUEUE_FRAMES`).

Sidecar `PATH.frames.jsonl`, one line per frame muxed: `frame` (its position in the file), `seq` and
`capture_ns` (as in the fused sidecar's `thermal` entry, so a fused frame finds its raw frame by `seq`) and
`time_s` (its time in the file). A kill can cost the file its last unfinished cluster (at most `fragment_s`)
that the sidecar already lists; the frames the file holds are the first ones the sidecar lists.
A replay gets each frame's seq and capture time back from the sidecar (pipeline/sidecar.py).
"""

from __future__ import annotations

import os
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.errors import SkyfuseError

from .recorder import (
    Recorder,
    RecorderConfig,
    Sidecar,
    _container_options,
    _prepare_output,
    encoder_threads,
)
from .sidecar import PIXEL_FORMATS, sidecar_path

FFV1_OPTIONS = {"level": "3", "g": "1", "slicecrc": "1"}  # intra-only: every frame decodes on its own
TIME_BASE = Fraction(1, 1000)  # Matroska's own resolution
RAW_QUEUE_FRAMES = 30  # a second at 30 fps that the encoder may fall behind (a busy core) before it blocks


def ffv1_options(config: RecorderConfig) -> dict[str, str]:
    """The FFV1 encoder's options: FFV1_OPTIONS and the configured `extra_options` (e.g. slices)."""
    return {**FFV1_OPTIONS, **config.extra_options}


def ffv1_threads(config: RecorderConfig) -> int:
    """Threads FFV1 encodes a frame's slices on: as configured, else one per core (FFmpeg's own choice,
    one more than the cores, only oversubscribes a small machine). No FFV1 option lowers the work a frame
    costs (benchmarks/raw_thermal.py --variants: slices, coder, context, slice CRCs all within 1 % of CPU
    time at 1280x1024); threads only spread it over cores that are free."""
    return encoder_threads(config)


def prepare_raw_recording(path: str | os.PathLike) -> Path:
    """Check the name and create the recording and its sidecar (empty) now, so a bad path (a folder, no
    permission, a missing drive) fails before the run starts."""
    path = Path(path)
    if path.suffix.lower() != ".mkv":
        raise SkyfuseError(f"cannot record raw thermal frames to {path}: use a .mkv file name (Matroska)")
    _prepare_output(path)
    _prepare_output(sidecar_path(path))
    return path


class RawThermalRecorder(Recorder):
    """Lossless recording of (H, W) uint8 or uint16 thermal frames of `first`'s size and type, and their
    sidecar; `fps` is the camera's rate, kept as the stream's nominal rate (times come from the frames).

    `record` queues a frame for the encoding thread and waits while the queue is full (`busy` says when it
    would); `close` muxes every queued frame and finalises both files."""

    def __init__(self, path: str | os.PathLike, fps: float, first: np.ndarray,
                 config: RecorderConfig | None = None):
        path = prepare_raw_recording(path)
        if first.ndim != 2 or first.dtype not in PIXEL_FORMATS:
            raise SkyfuseError(f"raw thermal recording takes (H, W) uint8 or uint16 frames, got shape "
                               f"{first.shape} dtype {first.dtype}")
        config = config or RecorderConfig(queue_frames=RAW_QUEUE_FRAMES)
        self.dtype = first.dtype
        self.pixel_format = PIXEL_FORMATS[first.dtype]
        self._pending: deque[tuple[int, int]] = deque()  # (seq, capture_ns) of queued frames, in order
        self._muxed = 0
        self._sidecar = Sidecar(sidecar_path(path), config.fsync_s)
        try:
            super().__init__(path, fps, (first.shape[1], first.shape[0]), config)
        except SkyfuseError:
            self._sidecar.close()
            raise

    def _open(self, size: tuple[int, int]) -> tuple[str, None]:
        """The Matroska container with one FFV1 stream at the frames' own size (FFV1 takes odd sizes)."""
        self._container = av.open(str(self.path), "w", format="matroska",
                                  container_options=_container_options("matroska", self.config))
        try:
            self._stream = self._container.add_stream("ffv1", rate=self.rate,
                                                      options=ffv1_options(self.config))
            self._stream.width, self._stream.height = self.size
            self._stream.pix_fmt = self.pixel_format
            self._stream.time_base = self._stream.codec_context.time_base = TIME_BASE
            self._stream.codec_context.thread_count = ffv1_threads(self.config)
            self._stream.codec_context.open()
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            raise SkyfuseError(f"cannot set up the FFV1 encoder for {self.path}: {exc}") from exc
        return "ffv1", None

    def record(self, image: np.ndarray, seq: int, capture_ns: int) -> None:
        """Queue `image`, captured at `capture_ns` (ns on the capture clock) as frame `seq` of its stream.
        Every frame is kept: one captured within a millisecond of the last (a camera's buffer read out)
        is placed a millisecond after it. The image is encoded later: do not change it afterwards."""
        slot = round(capture_ns / 1e6)
        if self.last_slot is not None:
            slot = max(slot, self.last_slot + 1)
        self._pending.append((seq, capture_ns))
        try:
            self.write(image, slot)
        except SkyfuseError:
            self._pending.pop()  # refused before it was queued
            raise

    def _encode(self, image: np.ndarray, pts: int, queued: float) -> None:
        frame = av.VideoFrame.from_ndarray(image.astype(image.dtype.newbyteorder("<"), copy=False),
                                           format=self.pixel_format)
        frame.pts = pts
        self._container.mux(self._stream.encode(frame))
        seq, capture_ns = self._pending.popleft()
        self._sidecar.write({"frame": self._muxed, "seq": seq, "capture_ns": capture_ns,
                             "time_s": float(pts * TIME_BASE)})
        self._muxed += 1
        self._encode_ms.append((time.perf_counter() - queued) * 1e3)

    def close(self) -> None:
        """Mux every queued frame and finalise the recording and its sidecar (both, even if encoding
        failed: what was recorded stays readable); raises a failure of the encoding thread."""
        try:
            super().close()
        finally:
            self._sidecar.close()
