"""The fuse stage: pair visible and thermal frames by time, pre-warp by the rig, fuse with an engine.

It serves one or more camera pairs (`links`: several drones into one ground station), each with its own
ports — `visible` and `thermal` inputs (bound) and an `output` (connects to that pair's sink) — its own
pairing, calibration, AGC and statistics. Pairs that are ready, from any link, are fused together in one
batched engine call of at most `batch` frames, waiting at most `max_wait_s` for a batch to fill; each
link's frames keep their order and timestamps.

Flow control: in lossless mode each link reads whichever input is behind in media time, so both streams
advance together with bounded buffering and nothing is dropped (queue policy `block` on every port and
before the engine); in live mode every input is drained each turn (`drop_oldest`) and, when the engine
falls behind, only a link's newest pairs are fused (the older ones are dropped as `engine_busy`:
`drop_oldest` before the engine), so latency stays flat.

The fused end-of-stream says whether the run was complete: `complete` is false, with `why`, when the stage
stopped (a signal, an engine failure) before a link's visible stream ended.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import zmq

from core.errors import SkyfuseError
from core.rig import Rig
from core.sizes import parse_size
from engines.base import Engine
from engines.batching import BatchScheduler, StreamStats
from engines.registry import create_engine

from .agc import ThermalAGC, parse_agc_options
from .frame import EndOfStream, Frame
from .keys import RECEIVER, SENDER, add_keys_argument, link_keys
from .pairing import Pair, Pairer, PairingPolicy
from .stage import (
    LauncherChannel,
    add_handshake_argument,
    add_mode_argument,
    die_with_parent,
    log,
    parse_options,
    stop_on_signals,
)
from .stats import StageStats
from .wire import BLOCK, DROP_NEWEST, DROP_OLDEST, Receiver, Sender, close_transport

THUMBNAIL_SCALE = 4  # picture-in-picture inputs travel at 1/4 size


@dataclass
class Link:
    """One camera pair served by the fuse stage: its ports, pairing, calibration and statistics."""

    name: str
    visible: Receiver
    thermal: Receiver
    output: Sender
    pairer: Pairer
    rig: Rig | None = None
    agc: ThermalAGC = field(default_factory=ThermalAGC)
    upstream_drops: dict = field(default_factory=dict)  # latest cumulative drops per capture stage
    upstream_stats: dict = field(default_factory=dict)  # final statistics from end-of-stream messages
    ended: bool = False  # end-of-stream sent downstream

    def __post_init__(self):
        self.stats = StageStats("fuse" if self.name == "main" else f"fuse.{self.name}")
        if self.rig is None:
            log(self.stats.stage, "no calibration given: the visible frame is only resized to the thermal "
                                  "view (run `skyfuse calibrate` and pass --calibration for a real pre-warp)")

    @property
    def inputs_done(self) -> bool:
        return self.pairer.visible_ended and not self.pairer.visible

    def port_behind(self) -> Receiver:
        """Lossless: the input to read next so that neither stream runs ahead of the other (visible when
        the thermal buffer is full: its head is waiting for a time the thermal stream does not reach)."""
        pairer = self.pairer
        if pairer.visible_ended:
            return self.thermal
        if pairer.thermal_ended or pairer.thermal_full:
            return self.visible
        head, latest = pairer.head_visible_ns(), pairer.latest_thermal_ns()
        if head is not None and (latest is None or latest < head):
            return self.thermal
        return self.visible

    def accept(self, message: Frame | EndOfStream) -> None:
        if isinstance(message, EndOfStream):
            self.upstream_stats.update(message.meta.get("stats", {}))
            (self.pairer.end_visible if message.stream == "visible" else self.pairer.end_thermal)()
            return
        if "drops" in message.meta:
            self.upstream_drops[message.stream] = message.meta["drops"]
        (self.pairer.add_visible if message.stream == "visible" else self.pairer.add_thermal)(message)

    def drops(self) -> Counter:
        """This link's own drops: pairing, its ports, and the stage's decisions."""
        drops = Counter(self.stats.drops)
        for counter in (self.visible.drops, self.thermal.drops, self.output.drops, self.pairer.drops):
            drops.update(counter)
        return drops

    def all_drops(self) -> dict[str, int]:
        """Every drop upstream of the sink, keyed `stage:reason`, for the HUD and the sidecar."""
        drops = {k: v for stream in self.upstream_drops.values() for k, v in stream.items()}
        drops.update({f"{self.stats.stage}:{k}": v for k, v in self.drops().items()})
        return drops


class FuseStage:
    def __init__(self, links: list[Link], engine: Engine, *, lossless: bool,
                 output_size: tuple[int, int] | None = None, batch: int = 1, max_wait_s: float = 0.0,
                 thumbnails: bool = True):
        self.links, self.engine, self.lossless = links, engine, lossless
        self.output_size, self.batch, self.thumbnails = output_size, max(1, batch), thumbnails
        self.scheduler = BatchScheduler(engine, max_batch=self.batch, max_wait_s=max_wait_s)

    def run(self, stop) -> dict:
        """Fuse until every link's inputs have ended (or `stop` is set); each link then sends its
        end-of-stream (also when the engine fails, so every sink finalises its recording at once).
        Returns the statistics of every link."""
        why = "the fuse stage failed"
        try:
            while not stop.is_set() and not all(link.inputs_done for link in self.links):
                self._receive()
                for link in self.links:
                    self._submit(link)
                self._engine_call(self.scheduler.poll)
                self._finish_links()
            why = "the fuse stage was stopped"
            for link in self.links:
                self._submit(link)
            self._engine_call(self.scheduler.flush)
        finally:
            for link in self.links:
                self._end(link, why)
        return {link.stats.stage: self._summary(link) for link in self.links}

    def warm_up(self, visible_size: tuple[int, int], thermal_size: tuple[int, int]) -> None:
        """Run the engine once per batch size at the run's frame sizes ((W, H) of each camera) before the
        first frame, so that lazy start-up work (CUDA context and graphs, cuDNN autotuning, ONNX Runtime's
        memory arenas) is not paid by real frames."""
        visible = np.zeros((visible_size[1], visible_size[0], 3), np.uint8)
        for batch in sorted({1, self.batch}):
            for link in self.links:  # (an 8-bit frame leaves the AGC as it is, and its state too)
                thermal, homography = prepare_pair(visible, np.zeros(thermal_size[::-1], np.uint8), link.agc,
                                                   link.rig, self.output_size)
                with self._engine_errors():
                    self.engine.fuse_unwarped(np.stack([visible] * batch), np.stack([thermal] * batch),
                                              np.stack([homography] * batch), extras=False)

    def _receive(self) -> None:
        poller = zmq.Poller()
        active = [link for link in self.links if not link.inputs_done]
        deadline = self.scheduler.time_to_deadline()
        timeout_ms = (100 if self.lossless else 20) if deadline is None else max(0, int(deadline * 1000))
        if self.lossless:
            wanted = {}
            for link in active:
                port = link.port_behind()
                wanted[port.socket] = (link, port)
                poller.register(port.socket, zmq.POLLIN)
            for socket, _ in poller.poll(timeout_ms):
                link, port = wanted[socket]
                if (message := port.recv(0)) is not None:
                    link.accept(message)
            return
        ports = [(link, port) for link in active for port in (link.visible, link.thermal)]
        if not any(port.pending() for _, port in ports):
            for _, port in ports:
                poller.register(port.socket, zmq.POLLIN)
            poller.poll(timeout_ms)
        for link, port in ports:
            while (message := port.recv(0)) is not None:
                link.accept(message)

    def _submit(self, link: Link) -> None:
        """Hand the link's ready pairs, pre-warped, to the batch scheduler."""
        pairs = link.pairer.pop_ready()
        if not self.lossless and len(pairs) > self.batch:  # the engine cannot keep up: newest only
            link.stats.drops["engine_busy"] += len(pairs) - self.batch
            pairs = pairs[-self.batch:]
        for pair in pairs:
            visible = pair.visible.image
            thermal, homography = prepare_pair(visible, pair.thermal.image, link.agc, link.rig,
                                               self.output_size)
            item = (link, pair, visible, thermal)
            self._engine_call(self.scheduler.submit, link.name, visible, thermal, item, homography)

    def _engine_call(self, call, *args) -> None:
        """Run a scheduler call (which may fuse a batch) and send what it fused."""
        started = time.time_ns()
        with self._engine_errors():
            outputs = call(*args)
        finished = time.time_ns()
        for output in outputs:
            link, pair, visible, thermal = output.meta
            link.stats.add_latency("engine_per_frame", (finished - started) / 1e6 / output.batch_size)
            self._send(link, pair, output.fused, visible, thermal, started, finished)

    @contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """A backend failure ends the stage with a message naming the engine, not a traceback."""
        try:
            yield
        except Exception as exc:
            raise SkyfuseError(f"engine {self.engine.describe()} failed: {type(exc).__name__}: {exc}") \
                from exc

    def _send(self, link: Link, pair: Pair, fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray,
              started: int, finished: int) -> None:
        source = pair.visible
        stamps = {**source.stamps, "engine_start": started, "engine_end": finished}
        link.stats.add_latency("wait_in_fuse", (started - source.stamps.get("fuse_in", started)) / 1e6)
        link.stats.add_latency("pair_dt", abs(pair.dt_s) * 1e3)
        meta = {"engine": self.engine.describe(), "link": link.name, "drops": link.all_drops(),
                "thermal": {"seq": pair.thermal.seq, "capture_ns": pair.thermal.capture_ns,
                            "dt_ms": round(pair.dt_s * 1e3, 3), "reuse": pair.reuse,
                            "stamps": pair.thermal.stamps}}
        if "recorded_capture_ns" in pair.thermal.meta:  # replayed from a raw recording: its original time
            meta["thermal"]["recorded_capture_ns"] = pair.thermal.meta["recorded_capture_ns"]
        if "fps" in source.meta:
            meta["fps"] = source.meta["fps"]
        box = (fused.shape[1] // THUMBNAIL_SCALE, fused.shape[0] // THUMBNAIL_SCALE)
        extras = ({"visible": _thumbnail(visible, box), "thermal": _thumbnail(thermal, box)}
                  if self.thumbnails else {})
        frame = Frame("fused", source.seq, source.capture_ns, fused, stamps=stamps, meta=meta, extras=extras)
        if link.output.send(frame):
            link.stats.count_frame()

    def _finish_links(self) -> None:
        for link in self.links:
            batching = self.scheduler.stats.get(link.name)
            if link.inputs_done and (batching is None or batching.fused == batching.submitted):
                self._end(link, None)

    def _end(self, link: Link, why: str | None) -> None:
        """Send the link's end-of-stream: complete once its visible stream ended, else saying `why` not."""
        if link.ended:
            return
        link.ended = True
        stats = {**link.upstream_stats, link.stats.stage: self._summary(link)}
        meta = {"stats": stats, "complete": link.inputs_done}
        if not link.inputs_done:
            meta["why"] = f"{why} before the visible stream ended"
        if not link.output.send_eos(EndOfStream("fused", meta), timeout_ms=10_000):
            log(link.stats.stage, "no sink took the end-of-stream message")

    def _summary(self, link: Link) -> dict:
        summary = link.stats.summary()
        summary["drops"] = dict(link.drops())
        summary["engine"] = self.engine.describe()
        summary["pairing"] = dict(link.pairer.counts)
        summary["batching"] = self.scheduler.stats.get(link.name, StreamStats()).summary()
        summary["received"] = {"visible": link.visible.received, "thermal": link.thermal.received}
        summary["rejected_peers"] = link.visible.rejected + link.thermal.rejected
        summary["peers_dropped"] = link.visible.peers_dropped + link.thermal.peers_dropped
        summary["queue_policy"] = {"visible_in": link.visible.policy, "thermal_in": link.thermal.policy,
                                   "engine": BLOCK if self.lossless else DROP_OLDEST,
                                   "output": link.output.policy}
        return summary


def prepare_pair(visible: np.ndarray, thermal: np.ndarray, agc: ThermalAGC, rig: Rig | None,
                 output_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What the engine takes for one raw pair (Engine.fuse_unwarped): the thermal frame in 8 bits (the
    AGC) at `output_size` (W, H; default its own), and the homography from the visible frame into it (the
    rig's, else a plain resize). The fuse stage and `skyfuse fuse-pair` both call it, so a pair fused from
    streams and from files gives the same pixels."""
    gray = agc(thermal)
    if output_size is not None and (gray.shape[1], gray.shape[0]) != tuple(output_size):
        gray = cv2.resize(gray, tuple(output_size), interpolation=cv2.INTER_AREA)
    rig = rig or Rig.identity(visible.shape[1::-1], gray.shape[::-1])
    return gray, rig.homography_for(visible.shape, gray.shape[::-1])


def _thumbnail(image: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """`image` shrunk to fit `box` (W, H), its aspect kept: the sink shows it at a quarter of the fused
    width, so a larger one would only cost bandwidth, and the protocol keeps extras within the frame."""
    h, w = image.shape[:2]
    scale = min(box[0] / w, box[1] / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skyfuse fuse", description=__doc__.split("\n")[0],
        epilog="Serve several camera pairs by repeating --visible-in, --thermal-in and --output (and, per "
               "pair, --link and --calibration) in the same order. To fuse one pair of image files the "
               "same way: skyfuse fuse --visible V --thermal T --output F (= skyfuse fuse-pair; see "
               "skyfuse fuse-pair --help).")
    parser.add_argument("--visible-in", action="append", required=True, help="endpoint to listen on for "
                        "visible frames")
    parser.add_argument("--thermal-in", action="append", required=True,
                        help="endpoint to listen on for thermal frames")
    parser.add_argument("--output", action="append", required=True, help="sink endpoint")
    parser.add_argument("--link", action="append", default=None, help="name of each camera pair")
    parser.add_argument("--calibration", action="append", default=None,
                        help="rig JSON from `skyfuse calibrate` (one for all pairs, or one per pair)")
    add_mode_argument(parser)
    parser.add_argument("--engine", default="pyramid", help="fusion engine name (default: pyramid)")
    parser.add_argument("--engine-options", default="", help="engine options KEY=VALUE,...")
    parser.add_argument("--time-offset", type=float, default=None,
                        help="seconds added to thermal times (overrides the rig file)")
    parser.add_argument("--pairing", choices=("nearest", "latest"), default=None,
                        help="nearest waits for the closest thermal frame; latest never waits "
                             "(default: nearest in lossless mode, latest in live)")
    parser.add_argument("--window", type=float, default=None,
                        help="max seconds between paired frames (default: half a thermal period + 5 ms)")
    parser.add_argument("--max-reuse", type=int, default=None,
                        help="extra visible frames one thermal frame may serve (default: unlimited)")
    parser.add_argument("--size", default=None, help="output WIDTHxHEIGHT (default: the thermal size)")
    parser.add_argument("--batch", type=int, default=1, help="most pairs fused in one engine call")
    parser.add_argument("--max-wait", type=float, default=0.0,
                        help="seconds a ready pair may wait for a batch to fill (default 0)")
    parser.add_argument("--no-thumbnails", action="store_true", help="do not send input thumbnails (PiP)")
    parser.add_argument("--agc", default="", metavar="KEY=VALUE,...",
                        help="16-bit thermal AGC per camera pair: mode=dde|linear|plateau, detail_gain, "
                             "base_levels, detail_radius, low_tail_pct, high_tail_pct, roi=x0,y0,x1,y1, "
                             "plateau, linear_mix, smoothing, min_span, stride (default: dde, tails 1 %% "
                             "and 0.2 %%; see README)")
    parser.add_argument("--warm-up", metavar="VISIBLE_WxH,THERMAL_WxH",
                        help="run the engine once at these camera sizes before taking frames (e.g. "
                             "1280x720,640x512), so the first frames are not slowed by its start-up")
    add_keys_argument(parser)
    add_handshake_argument(parser)
    return parser


def parse_warm_up(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    visible, sep, thermal = text.partition(",")
    if not sep:
        raise SkyfuseError(f"--warm-up takes VISIBLE_WxH,THERMAL_WxH (e.g. 1280x720,640x512), got {text!r}")
    return parse_size(visible), parse_size(thermal)


def warm_up_sizes(message: dict) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The cameras' sizes from the launcher's geometry message (what the captures reported); None when a
    stream has no frame, so there is nothing to warm up for."""
    geometry = message.get("geometry")
    sizes = []
    for stream in ("visible", "thermal"):
        camera = geometry.get(stream) if isinstance(geometry, dict) else None
        if not isinstance(camera, dict):
            return None
        width, height = camera.get("width"), camera.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            return None
        sizes.append((width, height))
    return sizes[0], sizes[1]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    channel = LauncherChannel() if args.handshake else None
    count = len(args.visible_in)
    names = args.link or (["main"] if count == 1 else [f"pair{i}" for i in range(count)])
    calibrations = args.calibration or [None]
    if len(args.thermal_in) != count or len(args.output) != count or len(names) != count:
        raise SkyfuseError(f"{count} --visible-in but {len(args.thermal_in)} --thermal-in, "
                           f"{len(args.output)} --output and {len(names)} --link: give one of each per "
                           "camera pair")
    if len(calibrations) not in (1, count):
        raise SkyfuseError(f"give one --calibration for all {count} camera pairs or one per pair")
    if args.batch < 1 or args.max_wait < 0:
        raise SkyfuseError("--batch must be at least 1 and --max-wait not negative")
    rigs = [Rig.load(path) if path else None for path in calibrations] * (count // len(calibrations))
    agc = parse_agc_options(args.agc)
    lossless = args.mode == "lossless"
    size = parse_size(args.size) if args.size else None
    warm_up = parse_warm_up(args.warm_up) if args.warm_up else None
    endpoints = (*args.visible_in, *args.thermal_in, *args.output)
    keys = link_keys(args.keys, RECEIVER, SENDER, endpoints=endpoints, insecure=args.insecure)
    if channel:
        channel.status(f"building engine {args.engine}")
    engine = create_engine(args.engine, **parse_options(args.engine_options, "--engine-options"))
    engine_s = time.monotonic() - started
    die_with_parent()
    stop = stop_on_signals()
    links = []
    try:
        if channel:  # the cameras' sizes first: they set what the input ports let through
            message = channel.receive()
            if message is None:
                log("fuse", "the run stopped before it started")
                return 0
            warm_up = warm_up_sizes(message)
        visible_size, thermal_size = warm_up or (None, None)
        for name, vis, ir, out, rig in zip(names, args.visible_in, args.thermal_in, args.output, rigs):
            offset = args.time_offset if args.time_offset is not None else rig.time_offset_s if rig else 0.0
            try:
                policy = PairingPolicy(strategy=args.pairing or ("nearest" if lossless else "latest"),
                                       time_offset_s=offset, window_s=args.window,
                                       max_reuse=args.max_reuse, max_wait_s=None if lossless else 0.25)
            except ValueError as exc:
                raise SkyfuseError(str(exc)) from None
            inputs = [Receiver(endpoint, stream=stream, policy=BLOCK if lossless else DROP_OLDEST,
                               stamp="fuse_in", queue_size=4, size=camera, keys=keys)
                      for endpoint, stream, camera in ((vis, "visible", visible_size),
                                                       (ir, "thermal", thermal_size))]
            output = Sender(out, policy=BLOCK if lossless else DROP_NEWEST, stamp="fuse_sent", stop=stop,
                            keys=keys)
            links.append(Link(name, *inputs, output, Pairer(policy), rig, ThermalAGC(agc)))
            log(links[-1].stats.stage, f"engine {engine.describe()}, pairing {policy.strategy}, "
                                       f"time offset {offset:+.3f} s, AGC {agc.to_options() or 'default'}")
        stage = FuseStage(links, engine, lossless=lossless, output_size=size, batch=args.batch,
                          max_wait_s=args.max_wait, thumbnails=not args.no_thumbnails)
        warm_up_s = 0.0
        if warm_up:
            if channel:
                channel.status("warming the engine up")
            warm_up_started = time.monotonic()
            stage.warm_up(*warm_up)
            warm_up_s = time.monotonic() - warm_up_started
        log("fuse", f"ready after {time.monotonic() - started:.1f} s (engine {engine_s:.1f} s"
                    + (f", {engine.startup_note}" if engine.startup_note else "")
                    + (f"; warm-up {warm_up_s:.2f} s)" if warm_up else ")"))
        if channel:
            channel.report("ready", startup_s=round(time.monotonic() - started, 3),
                           engine_s=round(engine_s, 3), warm_up_s=round(warm_up_s, 3),
                           note=engine.startup_note)
        summaries = stage.run(stop)
    finally:
        for link in links:
            for port in (link.visible, link.thermal, link.output):
                port.close()
        close_transport()
        engine.close()
    for name, summary in summaries.items():
        log(name, f"fused {summary['frames']} frames at {summary['fps']} fps (mean batch "
                  f"{summary['batching']['mean_batch']}), drops {summary['drops'] or 'none'}")
    return 0
