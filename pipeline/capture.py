"""The capture stage: reads one source and sends its frames, stamped at capture, to a fuse stage.

Port: `output` (connects to the fuse stage's input for this stream). Pacing: `native` replays files and
the synthetic flight at their own frame rate (in live mode a source that falls behind skips, unread, the
frames a newer one has replaced, as a real camera would lose them), `max` sends as fast as the receiver
takes them. Cameras are always real time.

Started by `skyfuse run` (`--handshake`), the stage opens its source, reads the first frame to report the
stream's geometry (what the fuse stage warms its engine up for, and the recording's size and rate), and
waits for the run's epoch: files and the synthetic flight simply wait, keeping that first frame; a live
source cannot wait, so its frames are read and dropped as `warmup` until the epoch arrives.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from pathlib import Path

from .frame import EndOfStream, Frame
from .keys import SENDER, add_keys_argument, link_keys
from .sources import CorruptFrame, Source, SourceFrame, open_source
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
from .wire import Sender, close_transport


class CaptureStage:
    def __init__(self, source: Source, output: Sender, *, pace: bool, epoch_ns: int | None = None):
        self.source, self.output, self.pace, self.epoch_ns = source, output, pace, epoch_ns
        self.name = f"capture.{source.stream}"
        self.stats = StageStats(self.name)
        self.first: SourceFrame | None = None  # read ahead for its geometry, sent first
        self._corrupt_logged = False

    def geometry(self) -> dict | None:
        """Read the first frame (kept for run()) and describe the stream; None for an empty source."""
        self.first = self._read(counted=not self.source.live)  # a live source drops it: not one of --frames
        if self.first is None:
            return None
        image = self.first.image
        return {"width": image.shape[1], "height": image.shape[0],
                "channels": 1 if image.ndim == 2 else image.shape[2], "dtype": str(image.dtype),
                "fps": self.source.fps, "live": self.source.live}

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
            elif self._read(counted=False) is not None:
                self.stats.drops["warmup"] += 1
            else:
                break  # the live source ended before the run started

    def run(self, stop) -> dict:
        """Send frames until the source ends or `stop` is set; then send end-of-stream. Returns stats."""
        if self.epoch_ns is None:
            self.epoch_ns = time.monotonic_ns()
        paced = self.pace and not self.source.live
        while not stop.is_set():
            if paced and not self.output.lossless and self.first is None:
                self._skip_late()
            item, self.first = self.first or self._read(), None
            if item is None:
                break
            media_ns = self.epoch_ns + int(round(item.time_s * 1e9))
            if paced and media_ns > time.monotonic_ns():
                stop.wait((media_ns - time.monotonic_ns()) / 1e9)
            capture_ns = time.monotonic_ns() if self.source.live else media_ns
            frame = Frame(stream=self.source.stream, seq=item.index, capture_ns=capture_ns, image=item.image,
                          meta={"fps": self.source.fps, "drops": self._drops()})
            frame.stamp("capture")
            if self.output.send(frame):
                self.stats.count_frame()
        self.stats.drops.update(self.output.drops)
        summary = self.stats.summary()
        eos = EndOfStream(self.source.stream, {"stats": {self.name: summary}})
        if not self.output.send_eos(eos, timeout_ms=10_000) and not stop.is_set():
            log(self.name, "no receiver took the end-of-stream message")
        return summary

    def _skip_late(self) -> None:
        """Live mode keeps a replay at real time as a camera would: frames already replaced by a newer one
        are skipped before they cost a render or a decode, and counted as `late_skipped`."""
        skipped = self.source.skip_late((time.monotonic_ns() - self.epoch_ns) / 1e9)
        if skipped:
            self.stats.drops["late_skipped"] += skipped

    def _read(self, counted: bool = True) -> SourceFrame | None:
        """The source's next frame, skipping (and counting) corrupt ones; None at its end."""
        while True:
            try:
                return self.source.read(counted)
            except CorruptFrame as exc:
                self.stats.drops["corrupt_frame"] += 1
                if not self._corrupt_logged:
                    log(self.name, f"skipping corrupt frame ({exc}); further ones are only counted")
                    self._corrupt_logged = True

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
    parser.add_argument("--fps", type=float, default=None, help="frame rate for sources without one")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--epoch-ns", type=int, default=None,
                        help="monotonic-clock ns of media time 0, shared by the captures of one run")
    add_handshake_argument(parser)
    add_keys_argument(parser)
    parser.add_argument("--summary", help="also write the final statistics here (JSON): how `skyfuse run` "
                                          "reports a capture that ends after the fuse stage has finished")
    args = parser.parse_args(argv)
    started = time.monotonic()
    channel = LauncherChannel() if args.handshake else None
    die_with_parent()
    stop = stop_on_signals()
    if channel:
        channel.status("opening the source")
    source = open_source(args.source, args.stream, fps=args.fps, frames=args.frames)
    lossless = args.mode == "lossless"
    pace = (args.pace or ("max" if lossless else "native")) == "native"
    output = Sender(args.output, lossless=lossless, stamp="capture_sent", stop=stop,
                    keys=link_keys(args.keys, SENDER))
    stage = CaptureStage(source, output, pace=pace, epoch_ns=args.epoch_ns)
    try:
        if channel:
            channel.report("ready", geometry=stage.geometry(), startup_s=round(time.monotonic() - started, 3))
            stage.wait_for_epoch(channel, stop)
        summary = stage.run(stop)
    finally:
        source.close()
        output.close()
        close_transport()
    log(f"capture.{args.stream}", f"sent {summary['frames']} frames at {summary['fps']} fps, "
        f"drops {summary['drops'] or 'none'}")
    if args.summary:
        Path(args.summary).write_text(json.dumps({f"capture.{args.stream}": summary}))
    return 0
