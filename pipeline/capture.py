"""The capture stage: reads one source and sends its frames, stamped at capture, to a fuse stage.

Port: `output` (connects to the fuse stage's input for this stream). Pacing: `native` replays files and
the synthetic flight at their own frame rate (in live mode a source that falls behind skips, unread, the
frames a newer one has replaced, as a real camera would lose them), `max` sends as fast as the receiver
takes them. Cameras are always real time.

Started by `skyfuse run` (`--handshake`), the stage opens its source, reads the first frame to report the
stream's geometry (what the fuse stage warms its engine up for, and the recording's size and rate), and
waits for the run's epoch: files and the synthetic flight simply wait, keeping that first frame; a live
source cannot wait, so its frames are read and dropped as `warmup` until the epoch arrives.

A live source that loses its signal reconnects until the run ends (`reconnects` in the statistics, each
outage logged); its frames carry `stalled_s` (how long the source sent nothing before this frame, 0 while
frames flow) and `reconnects` in their metadata, so later stages can show the outage. A corrupt or vanished
file is logged once per reason and counted (`corrupt_frame`, `missing_file`); a video that ends before the
frame count in its header is logged and its missing frames counted as `ended_early`.

`--record PATH` (thermal only; `skyfuse run --record-thermal`) keeps every frame the stage captures,
bit-exactly, in a raw recording (pipeline/thermal_recorder.py) with its seq and capture time: recorded here,
before the network, so frames the send queue then drops are kept too. Frames a live replay skips unread
(`late_skipped`) and a live source's frames before the run's epoch (`warmup`) were never captured for the
run and are not recorded. In live mode a recorder that has fallen a whole queue behind loses the frame
(counted as `raw_record_busy`) rather than hold up the capture; in lossless mode the capture waits for it.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from core.errors import SkyfuseError

from .frame import EndOfStream, Frame
from .keys import SENDER, add_keys_argument, link_keys
from .sources import (
    DEFAULT_OPEN_TIMEOUT_S,
    DEFAULT_STALL_TIMEOUT_S,
    CorruptFrame,
    SignalLost,
    Source,
    SourceFrame,
    open_source,
)
from .stage import (
    LauncherChannel,
    StopFlag,
    add_handshake_argument,
    add_mode_argument,
    die_with_parent,
    log,
    stop_on_signals,
)
from .stats import StageStats
from .thermal_recorder import RawThermalRecorder, prepare_raw_recording
from .wire import BLOCK, DROP_NEWEST, Sender, close_transport

RATE_FRAMES = 15  # intervals over which a live stream's real frame rate is measured (half a second)


class CaptureStage:
    def __init__(self, source: Source, output: Sender, *, pace: bool, epoch_ns: int | None = None,
                 record: Path | None = None):
        self.source, self.output, self.pace, self.epoch_ns = source, output, pace, epoch_ns
        self.record_path = record  # raw recording of every captured frame, opened at the first frame
        self.recorder: RawThermalRecorder | None = None
        self.name = f"capture.{source.stream}"
        self.stats = StageStats(self.name)
        self.first: SourceFrame | None = None  # read ahead for its geometry, sent first
        self._logged: set[str] = set()  # drop reasons already explained in the log
        self._last_frame_at: float | None = None  # monotonic time the source last gave a frame
        self._lost_since: float | None = None  # while the signal is lost: when the last frame came
        self._stalled_s = 0.0  # the outage that ended with the frame just read
        self.signal_lost_s = 0.0  # all outages of the run together

    def geometry(self, stop: StopFlag) -> dict | None:
        """Read the first frame (kept for run()) and describe the stream; None for an empty source."""
        self.first = self._read(stop, counted=not self.source.live)  # live: dropped, not one of --frames
        if self.first is None:
            return None
        image = self.first.image
        return {"width": image.shape[1], "height": image.shape[0],
                "channels": 1 if image.ndim == 2 else image.shape[2], "dtype": str(image.dtype),
                "fps": self.source.fps, "live": self.source.live}

    def measure_rate(self, stop: StopFlag, frames: int = RATE_FRAMES) -> None:
        """Measure a live stream's frame rate from the arrival of its next `frames` frames (dropped as
        `warmup`) and use it when the rate the stream reports is off by over 10 %: FFmpeg reports 25 for
        any HTTP MJPEG stream, and the recording would then run at the wrong speed."""
        arrivals = []
        while len(arrivals) <= frames and not stop.is_set() and self._read(stop, counted=False) is not None:
            arrivals.append(time.monotonic())
            self.stats.drops["warmup"] += 1
        if len(arrivals) < 3:
            return
        measured = 1.0 / statistics.median(np.diff(arrivals))
        if abs(measured - self.source.fps) > 0.1 * self.source.fps:
            log(self.name, f"the source reports {self.source.fps:g} fps but delivers {measured:.1f}: "
                           "recording at the measured rate (--fps sets it)")
            self.source.fps = round(measured, 2)

    def wait_for_epoch(self, channel: LauncherChannel, stop: StopFlag) -> None:
        """Take the run's epoch from the launcher. A live source keeps delivering meanwhile: its frames are
        read and dropped as `warmup`, so the first frame sent is a fresh one."""
        answered = threading.Event()

        def listen() -> None:
            message = channel.receive()
            epoch = message.get("epoch_ns") if message else None
            if isinstance(epoch, int):
                self.epoch_ns = epoch
            else:
                stop.set()  # no epoch: the launcher is stopping the run
            answered.set()

        threading.Thread(target=listen, name="epoch", daemon=True).start()
        if self.source.live and self.first is not None:
            self.first = None
            self.stats.drops["warmup"] += 1
        while not answered.is_set() and not stop.is_set():
            if not self.source.live:
                answered.wait(0.1)
            elif self._read(stop, counted=False) is not None:
                self.stats.drops["warmup"] += 1
            else:
                break  # stopped while the signal was lost (or a plug-in live source ended)

    def run(self, stop) -> dict:
        """Send frames until the source ends or `stop` is set; then send end-of-stream. Returns stats."""
        if self.epoch_ns is None:
            self.epoch_ns = time.monotonic_ns()
        try:
            self._send_frames(stop)
        finally:
            if self.recorder is not None:
                self.recorder.close()  # every queued frame muxed, even when the loop failed
        self.stats.drops.update(self.output.drops)
        summary = self.stats.summary()
        if self.recorder is not None:
            summary["raw_recorded"] = self.recorder.frames
        if self.source.live:
            summary.update(reconnects=self.source.reconnects, signal_lost_s=round(self.signal_lost_s, 3))
        eos = EndOfStream(self.source.stream, {"stats": {self.name: summary}})
        if not self.output.send_eos(eos, timeout_ms=10_000) and not stop.is_set():
            log(self.name, "no receiver took the end-of-stream message")
        return summary

    def _send_frames(self, stop: StopFlag) -> None:
        """Read, record (with --record) and send each frame at its time, until the source ends or `stop`."""
        paced = self.pace and not self.source.live
        while not stop.is_set():
            if paced and not self.output.lossless and self.first is None:
                self._skip_late()
            item, self.first = self.first or self._read(stop), None
            if item is None:
                if not stop.is_set():
                    self._check_length()
                break
            media_ns = self.epoch_ns + int(round(item.time_s * 1e9))
            if paced:
                stop.wait((media_ns - time.monotonic_ns()) / 1e9)
            capture_ns = time.monotonic_ns() if self.source.live else media_ns
            if self.record_path is not None:
                self._record(item, capture_ns)
            meta = {"fps": self.source.fps, "drops": self._drops()}
            if item.capture_ns is not None:  # a replayed recording: the capture time it was recorded with
                meta["recorded_capture_ns"] = item.capture_ns
            if self.source.live:
                meta.update(stalled_s=round(self._stalled_s, 3), reconnects=self.source.reconnects)
            frame = Frame(stream=self.source.stream, seq=item.index, capture_ns=capture_ns, image=item.image,
                          meta=meta)
            frame.stamp("capture")
            if self.output.send(frame):
                self.stats.count_frame()

    def _record(self, item: SourceFrame, capture_ns: int) -> None:
        """Keep the captured frame in the raw recording (opened at the first frame: its size and type)."""
        if self.recorder is None:
            self.recorder = RawThermalRecorder(self.record_path, self.source.fps, item.image)
        if not self.output.lossless and self.recorder.busy:
            self.stats.drops["raw_record_busy"] += 1
            self._log_once("raw_record_busy", "the raw recording is a second behind; frames it cannot take "
                                              "are counted as raw_record_busy")
            return
        self.recorder.record(item.image, item.index, capture_ns)

    def _skip_late(self) -> None:
        """Live mode keeps a replay at real time as a camera would: frames already replaced by a newer one
        are skipped before they cost a render or a decode, and counted as `late_skipped`."""
        skipped = self.source.skip_late((time.monotonic_ns() - self.epoch_ns) / 1e9)
        if skipped:
            self.stats.drops["late_skipped"] += skipped

    def _read(self, stop: StopFlag, counted: bool = True) -> SourceFrame | None:
        """The source's next frame, skipping (and counting) corrupt ones and waiting out a lost signal while
        the source reconnects; None at its end or once `stop` is set."""
        while True:
            try:
                item = self.source.read(counted)
            except CorruptFrame as exc:
                self.stats.drops[exc.reason] += 1
                self._log_once(exc.reason, f"skipping a frame ({exc}); further ones are only counted "
                                           f"as {exc.reason}")
                continue
            except SignalLost as exc:
                if self._lost_since is None:
                    self._lost_since = self._last_frame_at or time.monotonic()
                    log(self.name, f"signal lost ({exc}); reconnecting")
                if stop.wait(exc.retry_in_s):
                    return None
                continue
            now = time.monotonic()
            self._stalled_s = 0.0
            if item is not None and self._lost_since is not None:
                self._stalled_s, self._lost_since = now - self._lost_since, None
                self.signal_lost_s += self._stalled_s
                log(self.name, f"signal back after {self._stalled_s:.1f} s without frames "
                               f"(reconnect {self.source.reconnects})")
            self._last_frame_at = now
            return item

    def _check_length(self) -> None:
        """A video that ends before the frame count in its header is truncated or damaged: say so once and
        count the frames it lacks, so a short recording is never mistaken for a complete one."""
        expected, position = self.source.frame_count, self.source.position
        if not self.source.live and expected is not None and position < expected:
            self.stats.drops["ended_early"] += expected - position
            log(self.name, f"the source ended after {position} of the {expected} frames it announced "
                           f"(truncated or damaged); {expected - position} counted as ended_early")

    def _log_once(self, reason: str, message: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log(self.name, message)

    def _drops(self) -> dict[str, int]:
        merged = Counter(self.stats.drops)
        merged.update(self.output.drops)
        return {f"{self.name}:{reason}": count for reason, count in merged.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyfuse capture", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="synthetic[:k=v,...], video file, folder, glob, "
                        "CSV[#column], camera:N, rtsp://..., or a GStreamer pipeline")
    parser.add_argument("--stream", required=True, choices=("visible", "thermal"))
    parser.add_argument("--output", required=True, help="fuse stage endpoint, e.g. tcp://ground:5550")
    add_mode_argument(parser)
    parser.add_argument("--pace", choices=("native", "max"), default=None,
                        help="native: replay at the source's frame rate; max: as fast as taken "
                             "(default: native in live mode, max in lossless)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate for files without one, and of a live source whatever it reports "
                             "(an HTTP MJPEG stream reports 25)")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--open-timeout", type=float, default=DEFAULT_OPEN_TIMEOUT_S, metavar="SECONDS",
                        help="how long a camera or stream may take to open or reconnect "
                             f"(default {DEFAULT_OPEN_TIMEOUT_S:g})")
    parser.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT_S, metavar="SECONDS",
                        help="a live source without a frame for this long has lost its signal and "
                             f"reconnects (default {DEFAULT_STALL_TIMEOUT_S:g})")
    parser.add_argument("--epoch-ns", type=int, default=None,
                        help="monotonic-clock ns of media time 0, shared by the captures of one run")
    add_handshake_argument(parser)
    add_keys_argument(parser)
    parser.add_argument("--record", metavar="PATH.mkv",
                        help="keep every captured thermal frame bit-exactly (FFV1, lossless) with a sidecar "
                             "of seqs and capture times (PATH.frames.jsonl)")
    parser.add_argument("--summary", help="also write the final statistics here (JSON): how `skyfuse run` "
                                          "reports a capture that ends after the fuse stage has finished")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.record:
        if args.stream != "thermal":
            raise SkyfuseError("--record keeps raw thermal frames: use it with --stream thermal")
        prepare_raw_recording(args.record)  # a bad path fails before the source opens
    channel = LauncherChannel() if args.handshake else None
    die_with_parent()
    stop = stop_on_signals()
    if channel:
        channel.status("opening the source")
    keys = link_keys(args.keys, SENDER, endpoints=(args.output,), insecure=args.insecure)
    source = open_source(args.source, args.stream, fps=args.fps, frames=args.frames,
                         open_timeout=args.open_timeout, stall_timeout=args.stall_timeout)
    lossless = args.mode == "lossless"
    pace = (args.pace or ("max" if lossless else "native")) == "native"
    output = Sender(args.output, policy=BLOCK if lossless else DROP_NEWEST, stamp="capture_sent", stop=stop,
                    keys=keys)
    stage = CaptureStage(source, output, pace=pace, epoch_ns=args.epoch_ns,
                         record=Path(args.record) if args.record else None)
    try:
        if source.live and args.fps is None:
            stage.measure_rate(stop)
        if channel:
            geometry = stage.geometry(stop)
            channel.report("ready", geometry=geometry, startup_s=round(time.monotonic() - started, 3))
            stage.wait_for_epoch(channel, stop)
        summary = stage.run(stop)
    finally:
        source.close()
        output.close()
        close_transport()
    # Done: a stop that arrives while the interpreter exits (a source that ended as the run stops) would
    # otherwise meet the default handler and report a clean end as "killed by SIGTERM".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log(f"capture.{args.stream}", f"sent {summary['frames']} frames at {summary['fps']} fps, "
        f"drops {summary['drops'] or 'none'}")
    if args.summary:
        Path(args.summary).write_text(json.dumps({f"capture.{args.stream}": summary}))
    return 0
