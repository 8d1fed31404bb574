"""The fuse stage: pair visible and thermal frames by time, pre-warp by the rig, fuse with an engine.

Ports: `visible` and `thermal` inputs (bound), `output` (connects to the sink). In lossless mode it reads
whichever input is behind in media time, so both streams advance together with bounded buffering and
nothing is dropped; in live mode it drains both inputs every turn and, when the engine falls behind,
fuses only the newest pairs (the older ones are dropped as `engine_busy`), so latency stays flat.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import cv2
import numpy as np
import zmq

from calibration.rig import Rig
from engines.base import Engine
from engines.registry import create_engine

from .agc import ThermalAGC
from .errors import SkyfuseError
from .frame import EndOfStream, Frame
from .pairing import Pair, Pairer, PairingPolicy
from .stage import add_mode_argument, die_with_parent, log, parse_options, stop_on_signals
from .stats import StageStats
from .wire import Receiver, Sender, close_transport

THUMBNAIL_SCALE = 4  # picture-in-picture inputs travel at 1/4 size


class FuseStage:
    name = "fuse"

    def __init__(self, visible: Receiver, thermal: Receiver, output: Sender, engine: Engine, *,
                 policy: PairingPolicy, rig: Rig | None, output_size: tuple[int, int] | None = None,
                 batch: int = 1, thumbnails: bool = True):
        self.visible, self.thermal, self.output, self.engine = visible, thermal, output, engine
        self.lossless = output.lossless
        self.pairer = Pairer(policy)
        self.rig, self.output_size, self.batch, self.thumbnails = rig, output_size, max(1, batch), thumbnails
        self.agc = ThermalAGC()
        self.stats = StageStats(self.name)
        self.upstream_drops: dict[str, dict[str, int]] = {}  # latest cumulative drops per capture stage
        self.upstream_stats: dict[str, dict] = {}

    def run(self, stop) -> dict:
        """Fuse until both inputs have ended (or `stop` is set), then send end-of-stream (also when the
        engine fails, so the sink finalises the recording at once). Returns the stage's statistics."""
        poller = zmq.Poller()
        poller.register(self.visible.socket, zmq.POLLIN)
        poller.register(self.thermal.socket, zmq.POLLIN)
        try:
            while not stop.is_set() and not self._finished():
                if self.lossless:
                    message = self._port_behind().recv(100)
                    if message is not None:
                        self._accept(message)
                else:
                    if not (self.visible.pending() or self.thermal.pending()):
                        poller.poll(20)
                    for port in (self.visible, self.thermal):
                        while (message := port.recv(0)) is not None:
                            self._accept(message)
                self._fuse_ready()
            self._fuse_ready()
        finally:
            self.stats.drops = self._own_drops()
            summary = self.stats.summary()
            summary["engine"] = self.engine.describe()
            summary["pairing"] = dict(self.pairer.counts)
            stats = {**self.upstream_stats, self.name: summary}
            if not self.output.send_eos(EndOfStream("fused", {"stats": stats}), timeout_ms=10_000):
                log(self.name, "no sink took the end-of-stream message")
        return summary

    def _finished(self) -> bool:
        return self.pairer.visible_ended and not self.pairer.visible

    def _port_behind(self) -> Receiver:
        """Lossless: the input to read next so that neither stream runs ahead of the other."""
        pairer = self.pairer
        if pairer.visible_ended:
            return self.thermal
        if pairer.thermal_ended:
            return self.visible
        head, latest = pairer.head_visible_ns(), pairer.latest_thermal_ns()
        if head is not None and (latest is None or latest < head):
            return self.thermal
        return self.visible

    def _accept(self, message: Frame | EndOfStream) -> None:
        if isinstance(message, EndOfStream):
            self.upstream_stats.update(message.meta.get("stats", {}))
            (self.pairer.end_visible if message.stream == "visible" else self.pairer.end_thermal)()
            return
        drops = message.meta.get("drops")
        if isinstance(drops, dict):
            self.upstream_drops[message.stream] = drops
        if message.stream == "visible":
            self.pairer.add_visible(message)
        elif message.stream == "thermal":
            self.pairer.add_thermal(message)
        else:
            self.stats.drops["unknown_stream"] += 1

    def _fuse_ready(self) -> None:
        pairs = self.pairer.pop_ready()
        if not self.lossless and len(pairs) > self.batch:
            self.stats.drops["engine_busy"] += len(pairs) - self.batch
            pairs = pairs[-self.batch:]
        for start in range(0, len(pairs), self.batch):
            self._fuse_batch(pairs[start:start + self.batch])

    def _fuse_batch(self, pairs: list[Pair]) -> None:
        started = time.time_ns()
        thermal = np.stack([self._prepare_thermal(p.thermal.image) for p in pairs])
        size = (thermal.shape[2], thermal.shape[1])
        visible = np.stack([self._prewarp(p.visible.image, size) for p in pairs])
        try:
            result = self.engine.fuse(visible, thermal)
        except Exception as exc:  # a backend failure ends the stage with a message, not a traceback
            raise SkyfuseError(f"engine {self.engine.describe()} failed on visible frame "
                               f"{pairs[0].visible.seq}: {type(exc).__name__}: {exc}") from exc
        finished = time.time_ns()
        self.stats.add_latency("engine_per_frame", (finished - started) / 1e6 / len(pairs))
        for i, pair in enumerate(pairs):
            self._send(pair, result.fused[i], visible[i], thermal[i], started, finished)

    def _send(self, pair: Pair, fused: np.ndarray, visible: np.ndarray, thermal: np.ndarray,
              started: int, finished: int) -> None:
        source = pair.visible
        stamps = {**source.stamps, "engine_start": started, "engine_end": finished}
        self.stats.add_latency("wait_in_fuse", (started - source.stamps.get("fuse_in", started)) / 1e6)
        self.stats.add_latency("pair_dt", abs(pair.dt_s) * 1e3)
        drops = {k: v for stream in self.upstream_drops.values() for k, v in stream.items()}
        drops.update({f"{self.name}:{k}": v for k, v in self._own_drops().items()})
        meta = {"fps": source.meta.get("fps"), "engine": self.engine.describe(), "drops": drops,
                "thermal": {"seq": pair.thermal.seq, "capture_ns": pair.thermal.capture_ns,
                            "dt_ms": round(pair.dt_s * 1e3, 3), "reuse": pair.reuse,
                            "stamps": pair.thermal.stamps}}
        extras = {}
        if self.thumbnails:
            extras = {"visible": _thumbnail(visible), "thermal": _thumbnail(thermal)}
        frame = Frame("fused", source.seq, source.capture_ns, fused, stamps=stamps, meta=meta, extras=extras)
        if self.output.send(frame):
            self.stats.count_frame()

    def _own_drops(self) -> Counter:
        drops = Counter(self.stats.drops)
        for counter in (self.visible.drops, self.thermal.drops, self.output.drops, self.pairer.drops):
            drops.update(counter)
        return drops

    def _prepare_thermal(self, image: np.ndarray) -> np.ndarray:
        gray = self.agc(image)
        if self.output_size is not None and (gray.shape[1], gray.shape[0]) != self.output_size:
            gray = cv2.resize(gray, self.output_size, interpolation=cv2.INTER_AREA)
        return gray

    def _prewarp(self, visible: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.rig is None:
            vh, vw = visible.shape[:2]
            self.rig = Rig.identity((vw, vh), size)
            log(self.name, "no calibration given: the visible frame is only resized to the thermal view "
                           "(run `skyfuse calibrate` and pass --calibration for a real pre-warp)")
        return self.rig.warp_visible(visible, size)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (w // THUMBNAIL_SCALE, h // THUMBNAIL_SCALE), interpolation=cv2.INTER_AREA)


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 16 or int(height) < 16:
        raise SkyfuseError(f"size must be WIDTHxHEIGHT (e.g. 640x512), got {text!r}")
    return int(width), int(height)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyfuse fuse", description=__doc__.split("\n")[0])
    parser.add_argument("--visible-in", required=True, help="endpoint to listen on for visible frames")
    parser.add_argument("--thermal-in", required=True, help="endpoint to listen on for thermal frames")
    parser.add_argument("--output", required=True, help="sink endpoint, e.g. ipc:///tmp/skyfuse/sink")
    add_mode_argument(parser)
    parser.add_argument("--engine", default="pyramid", help="fusion engine name (default: pyramid)")
    parser.add_argument("--engine-options", default="", help="engine options KEY=VALUE,...")
    parser.add_argument("--calibration", default=None, help="rig JSON from `skyfuse calibrate`")
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
    parser.add_argument("--batch", type=int, default=1, help="pairs fused per engine call")
    parser.add_argument("--no-thumbnails", action="store_true", help="do not send input thumbnails (PiP)")
    args = parser.parse_args(argv)
    die_with_parent()
    stop = stop_on_signals()
    rig = Rig.load(args.calibration) if args.calibration else None
    lossless = args.mode == "lossless"
    offset = args.time_offset if args.time_offset is not None else (rig.time_offset_s if rig else 0.0)
    try:
        policy = PairingPolicy(strategy=args.pairing or ("nearest" if lossless else "latest"),
                               time_offset_s=offset, window_s=args.window, max_reuse=args.max_reuse,
                               max_wait_s=None if lossless else 0.25)
    except ValueError as exc:
        raise SkyfuseError(str(exc)) from None
    engine = create_engine(args.engine, **parse_options(args.engine_options, "--engine-options"))
    size = parse_size(args.size) if args.size else None
    ports = [Receiver(args.visible_in, lossless=lossless, stamp="fuse_in", queue_size=4),
             Receiver(args.thermal_in, lossless=lossless, stamp="fuse_in", queue_size=4),
             Sender(args.output, lossless=lossless, stamp="fuse_sent", stop=stop)]
    log("fuse", f"engine {engine.describe()}, pairing {policy.strategy}, time offset {offset:+.3f} s")
    try:
        summary = FuseStage(*ports, engine, policy=policy, rig=rig, output_size=size, batch=args.batch,
                            thumbnails=not args.no_thumbnails).run(stop)
    finally:
        for port in ports:
            port.close()
        close_transport()
        engine.close()
    log("fuse", f"fused {summary['frames']} frames at {summary['fps']} fps, "
        f"drops {summary['drops'] or 'none'}")
    return 0
