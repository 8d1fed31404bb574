"""The sink stage: overlay the HUD, record the fused video at the source frame rate, serve a live view
(MJPEG for browsers) and, optionally, send the recording's H.264 on to live viewers (`--stream`).

Port: `input` (bound; the fuse stage connects). Each fused frame's capture time fixes its slot on the
source frame-rate grid, so the recording plays at the source rate and a dropped frame leaves a gap instead
of speeding the video up. A JSON-lines sidecar gets one record per recorded frame (sequence numbers,
capture times, per-hop latencies); `stats.json` gets every stage's statistics at the end.

A frame counts as recorded once it is handed to the recorder's encoding thread (its place in the video is
then fixed and the live view has it); the `encode` hop measures from there to muxed. When that thread falls
behind, lossless mode waits for it (queue policy `block`: back-pressure), live mode drops the newest frame
and counts it as `encoder_busy` (`drop_newest`), as the rest of the pipeline does in live mode.

The recording's size and rate are the run's (announced by `skyfuse run` before the first frame) or the
first valid frame's; a later frame of another size is scaled to it (`resized`, counted). Capture times are
held to a `Timeline`: a frame dated far from the stream's recent ones is dropped (`time_jump`,
`out_of_order`) instead of pushing every later frame into the wrong place of the recording; after a real
clock change the recording continues from its last slot. `stats.json` is written in every case, and its
`complete` says whether the stream ended by its end-of-stream with the fuse stage's inputs complete
(`incomplete` says why not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from core.errors import SkyfuseError

from .frame import MAX_FPS, MIN_FPS, EndOfStream, Frame, Timeline, wall_ns
from .hud import HudInfo, draw_hud, draw_no_signal, picture_in_picture, thermal_colormap
from .keys import RECEIVER, add_keys_argument, link_keys
from .liveview import LiveView, access_token
from .recorder import ENCODERS, Recorder, RecorderConfig, Sidecar, add_stream_arguments, recorder_config_of
from .stage import (
    LauncherChannel,
    add_handshake_argument,
    add_mode_argument,
    die_with_parent,
    log,
    stop_on_signals,
)
from .stats import StageStats
from .wire import BLOCK, DROP_NEWEST, DROP_OLDEST, Receiver, close_transport

NO_SIGNAL_S = 1.0  # seconds without a frame after which the live view says its picture is frozen

# Latency of each hop, from the stamps a frame collects on its way: (name, from stamp, to stamp).
HOPS = (("capture_to_fuse", "capture", "fuse_in"), ("wait_in_fuse", "fuse_in", "engine_start"),
        ("engine", "engine_start", "engine_end"), ("fuse_to_sink", "engine_end", "sink_in"),
        ("sink", "sink_in", "recorded"), ("end_to_end", "capture", "recorded"))


class SinkStage:
    name = "sink"

    def __init__(self, port: Receiver, *, output: Path, sidecar: Path | None, stats_path: Path | None,
                 hud: bool = True, pip: bool = True, colormap: bool = False,
                 live_view: LiveView | None = None, progress_s: float = 1.0, encoder: str = "auto",
                 encoder_policy: str = DROP_NEWEST, recorder_config: RecorderConfig | None = None):
        if encoder_policy not in (BLOCK, DROP_NEWEST):
            raise ValueError(f"the encoder's policy is {BLOCK} or {DROP_NEWEST}, not {encoder_policy!r}")
        self.port, self.output, self.stats_path = port, output, stats_path
        self.encoder_policy = encoder_policy
        self.sidecar = Sidecar(sidecar) if sidecar else None
        self.hud, self.pip, self.colormap, self.live_view = hud, pip, colormap, live_view
        self.recorder: Recorder | None = None
        self.recorder_config = recorder_config or RecorderConfig(codec=encoder)  # the stream's settings too
        self.stats = StageStats(self.name)
        self.upstream: dict[str, dict] = {}
        self.upstream_incomplete: str | None = None  # why the fuse stage's inputs did not end, if so
        self.drops: dict[str, int] = {}
        self.timeline = Timeline()
        self.time_resyncs = 0
        self.resized = 0  # frames scaled to the recording's size
        self.anchor: tuple[int, int] | None = None  # (capture ns, slot): where the recording's time grid sits
        self.fps = 30.0
        self.recent: deque[float] = deque(maxlen=60)  # monotonic times of recent frames, for the HUD fps
        self.progress_s, self.next_progress = progress_s, time.monotonic() + progress_s
        self.ended = False
        self.resize_logged = False
        self.last_shown: np.ndarray | None = None  # the live view's last picture, for "no signal"
        self.next_no_signal = 0.0

    def run(self, stop) -> dict:
        """Record until end-of-stream or `stop`; the recording is finalised in every case."""
        try:
            while not stop.is_set() and not self.ended:
                message = self.port.recv(100)
                if isinstance(message, EndOfStream):
                    self.upstream.update(message.meta.get("stats", {}))
                    if message.meta.get("complete") is False:
                        self.upstream_incomplete = message.meta.get("why", "the fuse stage did not finish")
                    self.ended = True
                elif message is not None:
                    self._record(message)
                self._report_progress()
                self._show_no_signal()
        finally:
            self._finish()
        return self.summary()

    def open_recording(self, size: tuple[int, int], fps: float | None) -> None:
        """Open the recorder at `size` (W, H) and `fps` (the source rate; None keeps the default)."""
        if isinstance(fps, (int, float)) and MIN_FPS <= fps <= MAX_FPS:
            self.fps = float(fps)
        self.recorder = Recorder(self.output, self.fps, size, self.recorder_config)
        log(self.name, f"encoding {size[0]}x{size[1]} with {self.recorder.codec}"
                       + (f" ({self.recorder.fallback})" if self.recorder.fallback else ""))
        stream = self.recorder.stream_out
        if stream is not None:
            sdp = stream.config.sdp_path if stream.target.format == "rtp" else None
            log(self.name, f"streaming the recording's H.264 to {stream.target.shown} "
                           f"({stream.target.format})" + (f"; SDP: {sdp}" if sdp else ""))

    def _record(self, frame: Frame) -> None:
        verdict = self.timeline.admit(frame.capture_ns, frame.meta.get("fps"))
        if verdict not in ("ok", "resync"):
            self.stats.drops[verdict] += 1
            return
        if self.recorder is None:
            height, width = frame.image.shape[:2]
            self.open_recording((width, height), frame.meta.get("fps"))
        if self.anchor is None or verdict == "resync":
            # The grid starts here; after a clock change it goes on from the last slot, without a gap.
            self.time_resyncs += verdict == "resync"
            last = self.recorder.last_slot
            self.anchor = (frame.capture_ns, 0 if last is None else last + 1)
        elif self.encoder_policy == DROP_NEWEST and self.recorder.busy:
            self.stats.drops["encoder_busy"] += 1  # live: never wait for the encoder, keep latency flat
            return
        image = self._compose(frame)
        if (image.shape[1], image.shape[0]) != self.recorder.size:
            if not self.resize_logged:
                log(self.name, f"frames of {image.shape[1]}x{image.shape[0]} are scaled to the recording's "
                               f"{self.recorder.size[0]}x{self.recorder.size[1]}")
                self.resize_logged = True
            self.resized += 1
            image = cv2.resize(image, self.recorder.size, interpolation=cv2.INTER_AREA)
        anchor_ns, anchor_slot = self.anchor
        slot = anchor_slot + round((frame.capture_ns - anchor_ns) * self.fps / 1e9)
        if self.recorder.last_slot is not None:
            slot = max(slot, self.recorder.last_slot + 1)  # capture jitter must not cost a frame
        self.recorder.write(image, slot)  # the image is the recorder's now: nothing below changes it
        frame.stamp("recorded")
        self._add_encode_times()
        self.stats.count_frame()
        self.recent.append(time.monotonic())
        latencies = {name: (frame.stamps[b] - frame.stamps[a]) / 1e6
                     for name, a, b in HOPS if a in frame.stamps and b in frame.stamps}
        for name, ms in latencies.items():
            self.stats.add_latency(name, ms)
        self.drops = frame.meta.get("drops", self.drops)
        if self.sidecar:
            self.sidecar.write({"seq": frame.seq, "slot": slot, "capture_ns": frame.capture_ns,
                                "capture_wall_ns": frame.stamps.get("capture"),
                                "thermal": {k: v for k, v in frame.meta.get("thermal", {}).items()
                                            if k != "stamps"},
                                "latency_ms": {k: round(v, 3) for k, v in latencies.items()},
                                "drops": self._total_drops()})
        if self.live_view:
            self.live_view.publish(image, self._live_stats(latencies))
            self.last_shown = image

    def _show_no_signal(self) -> None:
        """While no frame arrives, show the live view's viewers the last picture marked as frozen, once a
        second: the recording keeps the gap (nothing is written), the viewer is not misled."""
        if self.live_view is None or self.last_shown is None or not self.recent:
            return
        silent_s = time.monotonic() - self.recent[-1]
        if silent_s < NO_SIGNAL_S or time.monotonic() < self.next_no_signal:
            return
        self.next_no_signal = time.monotonic() + 1.0
        self.live_view.publish(draw_no_signal(self.last_shown.copy(), silent_s),
                               {**self._live_stats({}), "no_signal_s": round(silent_s, 1)})

    def _compose(self, frame: Frame) -> np.ndarray:
        image = np.array(frame.image)  # the received buffer is read-only
        if self.pip and frame.extras:
            extras = frame.extras
            thumbs = [thermal_colormap(extras[k]) if k == "thermal" and self.colormap else extras[k]
                      for k in ("visible", "thermal") if k in extras]
            image = picture_in_picture(image, thumbs)
        if self.hud:
            latency = (wall_ns() - frame.stamps.get("capture", wall_ns())) / 1e6
            draw_hud(image, HudInfo(fps=self._recent_fps(), latency_ms=latency, drops=self._total_drops(),
                                    engine=str(frame.meta.get("engine", "?")),
                                    capture_wall_ns=frame.stamps.get("capture")))
        return image

    def _add_encode_times(self) -> None:
        for ms in self.recorder.encode_times_ms():
            self.stats.add_latency("encode", ms)

    def _recent_fps(self) -> float:
        if len(self.recent) < 2 or self.recent[-1] == self.recent[0]:
            return 0.0
        return (len(self.recent) - 1) / (self.recent[-1] - self.recent[0])

    def _total_drops(self) -> int:
        return sum(self.drops.values()) + sum(self._own_drops().values())

    def _own_drops(self) -> dict[str, int]:
        """This stage's drops: the input port's and the encoder's."""
        return {**self.port.drops, **self.stats.drops}

    def _live_stats(self, latencies: dict[str, float]) -> dict:
        return {"frames": self.stats.frames, "fps": round(self._recent_fps(), 2),
                "latency_ms": {k: round(v, 2) for k, v in latencies.items()}, "drops": self._total_drops()}

    def _report_progress(self) -> None:
        if self.progress_s <= 0 or time.monotonic() < self.next_progress:
            return
        self.next_progress = time.monotonic() + self.progress_s
        e2e = self.stats.latency.get("end_to_end")
        p50 = e2e.summary().get("p50_ms", 0) if e2e else 0
        log(self.name, f"{self.stats.frames} frames recorded | {self._recent_fps():.1f} fps | "
                       f"latency p50 {p50:.0f} ms | drops {self._total_drops()}")

    def _finish(self) -> None:
        """Finalise the recording (encoding what is queued), then close the rest and write the statistics
        even when the recorder reports a failure."""
        try:
            if self.recorder is not None:
                self.recorder.close()
                self._add_encode_times()
        finally:
            if self.sidecar:
                self.sidecar.close()
            if self.live_view:
                self.live_view.close()
            if self.stats_path:
                self.stats_path.parent.mkdir(parents=True, exist_ok=True)
                self.stats_path.write_text(json.dumps(self.report(), indent=2) + "\n")

    def summary(self) -> dict:
        summary = self.stats.summary()
        summary["drops"] = self._own_drops()
        summary.update(received=self.port.received, rejected_peers=self.port.rejected,
                       peers_dropped=self.port.peers_dropped,
                       resized=self.resized, time_resyncs=self.time_resyncs,
                       queue_policy={"input": self.port.policy, "encoder": self.encoder_policy})
        if self.live_view:
            summary["live_view"] = self.live_view.stats()
        if self.recorder is not None and self.recorder.stream_out is not None:
            summary["stream"] = self.recorder.stream_stats()
        return summary

    def incomplete(self) -> str | None:
        """Why the recording does not hold the whole run, or None when it does (as far as the sink knows)."""
        if not self.ended:
            return "stopped before the end of the stream"
        return self.upstream_incomplete

    def report(self) -> dict:
        """Everything `stats.json` holds: the run, every stage, every drop by stage and reason;
        `drops_total` counts the steady-state drops, `drops_warmup` those of live sources before the run
        was ready."""
        drops = {**self.drops, **{f"{self.name}:{k}": v for k, v in self._own_drops().items()}}
        for stage, stats in self.upstream.items():  # final counts from end-of-stream beat per-frame ones
            drops.update({f"{stage}:{k}": v for k, v in stats.get("drops", {}).items()})
        warmup = sum(v for k, v in drops.items() if k.endswith(":warmup"))
        why = self.incomplete()
        return {"output": str(self.output), "frames_recorded": self.stats.frames, "fps_recorded": self.fps,
                "complete": why is None, **({"incomplete": why} if why else {}),
                "stages": {**self.upstream, self.name: self.summary()},
                "drops": drops, "drops_total": sum(drops.values()) - warmup, "drops_warmup": warmup}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyfuse sink", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="endpoint to listen on for fused frames")
    parser.add_argument("--output", required=True, type=Path, help="recording, .mp4 (fragmented) or .mkv")
    parser.add_argument("--sidecar", type=Path, default=None,
                        help="per-frame JSON lines (default: the recording's name + .frames.jsonl)")
    parser.add_argument("--stats", type=Path, default=None, help="write run statistics JSON here")
    add_mode_argument(parser)
    parser.add_argument("--no-hud", action="store_true", help="record without the HUD overlay")
    parser.add_argument("--no-pip", action="store_true", help="no picture-in-picture of the inputs")
    parser.add_argument("--colormap", action="store_true", help="show the thermal input in false colour")
    parser.add_argument("--live-view", type=int, default=None, metavar="PORT",
                        help="serve an MJPEG live view on PORT of --live-view-host (0 picks a free port)")
    parser.add_argument("--live-view-host", default="127.0.0.1", help="address the live view listens on")
    parser.add_argument("--live-view-token", default=None, metavar="TOKEN",
                        help="access token the live view asks for (default: none on a loopback address, a "
                             "random one, shown in the logged URL, on any other)")
    add_keys_argument(parser)
    parser.add_argument("--encoder", choices=ENCODERS, default="auto",
                        help="H.264 encoder: auto (h264_nvenc where it opens, else libx264), libx264 or "
                             "h264_nvenc")
    add_stream_arguments(parser)
    parser.add_argument("--progress", type=float, default=1.0, help="seconds between progress lines (0: off)")
    add_handshake_argument(parser)
    args = parser.parse_args(argv)
    started = time.monotonic()
    channel = LauncherChannel() if args.handshake else None
    die_with_parent()
    stop = stop_on_signals()
    if args.output.suffix.lower() not in (".mp4", ".mkv"):
        raise SkyfuseError(f"cannot record to {args.output}: use a .mp4 or .mkv file name")
    recorder_config = recorder_config_of(args.encoder, args.output, stream=args.stream,
                                         stream_format=args.stream_format, stream_bitrate=args.stream_bitrate,
                                         keyframe_interval=args.keyframe_interval,
                                         rtsp_transport=args.rtsp_transport)
    live_view = None
    if args.live_view is not None:
        live_view = LiveView(host=args.live_view_host, port=args.live_view,
                             token=access_token(args.live_view_host, args.live_view_token))
        log("sink", f"live view on {live_view.url}")
    sidecar = args.sidecar or args.output.with_name(args.output.name + ".frames.jsonl")
    recording = None
    if channel:  # the recording's size and rate first: the size also sets what the input lets through
        message = channel.receive()
        if message is None:
            log("sink", "the run stopped before it started")
            return 0
        recording = recording_of(message)
    lossless = args.mode == "lossless"
    port = Receiver(args.input, stream="fused", policy=BLOCK if lossless else DROP_OLDEST, stamp="sink_in",
                    queue_size=4, size=recording[0] if recording else None,
                    keys=link_keys(args.keys, RECEIVER, endpoints=(args.input,), insecure=args.insecure))
    try:
        stage = SinkStage(port, output=args.output, sidecar=sidecar, stats_path=args.stats,
                          hud=not args.no_hud, pip=not args.no_pip, colormap=args.colormap,
                          live_view=live_view, progress_s=args.progress, encoder=args.encoder,
                          encoder_policy=BLOCK if lossless else DROP_NEWEST, recorder_config=recorder_config)
        if recording:
            stage.open_recording(*recording)
        if channel:
            channel.report("ready", startup_s=round(time.monotonic() - started, 3))
        summary = stage.run(stop)
    finally:
        port.close()
        close_transport()
    log("sink", f"recorded {summary['frames']} frames to {args.output}")
    sys.stdout.flush()
    return 0


def recording_of(message: dict) -> tuple[tuple[int, int], float | None] | None:
    """The recording's size (W, H) and rate that `skyfuse run` announces before the first frame; None when
    it could not tell (a stream without frames): the first valid frame sets them then."""
    recording = message.get("recording")
    if not isinstance(recording, dict):
        return None
    width, height = recording.get("width"), recording.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return None
    return (width, height), recording.get("fps")
