"""`skyfuse run`: start every stage as its own process, supervise them, stop them in order.

The launcher wires capture(visible) + capture(thermal) -> fuse -> sink over ipc (or loopback tcp) and
watches the processes. A stage that exits with an error is reported with its exit reason and the others
are shut down in order; Ctrl-C or SIGTERM stops the captures first so the end-of-stream travels down
the pipeline and the recording is finalised. Each stage runs with a parent-death signal, so a launcher
killed outright leaves no orphans.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from core.errors import SkyfuseError
from core.sizes import parse_size

from .recorder import ENCODERS, RTSP_TRANSPORTS, add_stream_arguments, recorder_config_of
from .stage import MODES, StopFlag, die_with_parent, parse_options

START_MARGIN_S = 0.3  # media time 0 lies this far after every stage reported ready


@dataclass
class RunConfig:
    """Everything `skyfuse run` needs; YAML keys and command-line flags share these names."""

    visible: str = "synthetic"
    thermal: str = "synthetic"
    output: str = "out/run/fused.mp4"
    stats: str | None = None  # default: stats.json beside the recording
    engine: str = "pyramid"
    engine_options: dict = field(default_factory=dict)
    mode: str = "live"
    pace: str | None = None  # native | max (default: native in live mode, max in lossless)
    frames: int | None = None  # stop each capture after this many frames
    fps: float | None = None  # frame rate for sources without one
    calibration: str | None = None
    time_offset: float | None = None
    pairing: str | None = None
    window: float | None = None
    max_reuse: int | None = None
    size: str | None = None
    batch: int = 1
    hud: bool = True
    pip: bool = True
    colormap: bool = False
    encoder: str = "auto"  # H.264 encoder: auto (h264_nvenc where it opens, else libx264) or either one
    live_view: int | None = None  # port; 0 picks a free one
    live_view_host: str | None = None  # address it listens on (default: loopback only)
    live_view_token: str | None = None  # access token (default: a random one off the loopback address)
    stream: str | None = None  # also send the recording's H.264 to udp://HOST:PORT or rtsp://SERVER/PATH
    stream_format: str | None = None  # rtp (default) | mpegts, for a udp:// stream
    stream_bitrate: str | int | None = None  # bits/s cap, e.g. 2M (the recording is the same bitstream)
    keyframe_interval: str | int | None = None  # N frames, or "Ss" seconds (default 1s)
    rtsp_transport: str | None = None  # tcp (default) | udp: how RTP reaches an RTSP server
    transport: str = "ipc"  # ipc | tcp (loopback)
    keys: str | None = None  # link keys folder (`skyfuse keys`): encrypted, authenticated links
    allow_unequal_length: bool = False
    ready_timeout: float = 300.0  # seconds every stage has to start (a first-use export included)
    open_timeout: float | None = None  # seconds a camera or stream may take to open (default: the capture's)
    stall_timeout: float | None = None  # seconds without a frame after which a live source reconnects
    record_thermal: str | None = None  # .mkv: every captured thermal frame, lossless, with capture times
    agc: str | dict | None = None  # thermal AGC options: KEY=VALUE,... or a mapping (pipeline/agc.py)

    def __post_init__(self):
        if self.mode not in MODES:
            raise SkyfuseError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.encoder not in ENCODERS:
            raise SkyfuseError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.transport not in ("ipc", "tcp"):
            raise SkyfuseError(f"transport must be ipc or tcp, got {self.transport!r}")
        if Path(self.output).suffix.lower() not in (".mp4", ".mkv"):
            raise SkyfuseError(f"cannot record to {self.output}: use a .mp4 or .mkv file name")
        if self.record_thermal:
            taken = {"the fused recording (--output)": self.output, "the thermal source": self.thermal,
                     "the visible source": self.visible}
            for what, path in taken.items():
                if Path(self.record_thermal).resolve() == Path(path).resolve():
                    raise SkyfuseError(f"--record-thermal {self.record_thermal} would overwrite {what}: "
                                       "give it another name")
        if not self.ready_timeout > 0:
            raise SkyfuseError(f"ready_timeout must be a positive number of seconds, got "
                               f"{self.ready_timeout}")
        if self.live_view is None and (self.live_view_host or self.live_view_token) is not None:
            raise SkyfuseError("a live view host or token needs a live view: add --live-view PORT "
                               "(live_view in a YAML config)")
        if self.agc is not None:
            from .agc import parse_agc_options  # (OpenCV only when asked)

            self.agc = parse_agc_options(self.agc).to_options()  # refuses a bad one now
        if self.live_view_token is not None:
            from .liveview import access_token  # (OpenCV only when asked)

            access_token(self.live_view_host or "127.0.0.1", self.live_view_token)  # refuses a bad one now
        if self.rtsp_transport is not None and self.rtsp_transport not in RTSP_TRANSPORTS:
            raise SkyfuseError(f"rtsp_transport must be tcp or udp, got {self.rtsp_transport!r}")
        # A bad stream URL, format, bitrate or keyframe interval is refused now.
        recorder_config_of(self.encoder, Path(self.output), stream=self.stream,
                           stream_format=self.stream_format, stream_bitrate=self.stream_bitrate,
                           keyframe_interval=self.keyframe_interval, rtsp_transport=self.rtsp_transport)

    @property
    def stats_path(self) -> Path:
        return Path(self.stats) if self.stats else Path(self.output).with_name("stats.json")


def load_config(path: str | None, overrides: dict) -> RunConfig:
    """A RunConfig from a YAML file (optional) with command-line overrides applied on top."""
    values: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise SkyfuseError(f"config file not found: {path}") from None
        except (OSError, yaml.YAMLError) as exc:
            raise SkyfuseError(f"config file {path} is not readable YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SkyfuseError(f"config file {path} must hold a mapping of options")
        known = {f.name for f in fields(RunConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise SkyfuseError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**values)
    except TypeError as exc:
        raise SkyfuseError(f"bad configuration: {exc}") from None


@dataclass
class StageProcess:
    """One stage's process and its control channel (stage.LauncherChannel): reports arrive on its stdout
    and are queued by a reader thread; answers go to its stdin."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    doing: str = "starting"  # its last status report: what a time-out message names
    ready: dict | None = None  # its ready report

    def start(self, reports: queue.Queue) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "pipeline", *self.argv, "--handshake"],
                                        text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        start_new_session=True, preexec_fn=die_with_parent)
        threading.Thread(target=self._read_reports, args=(reports,), name=f"{self.name}-reports",
                         daemon=True).start()

    def _read_reports(self, reports: queue.Queue) -> None:
        for line in self.process.stdout:
            try:
                report = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(report, dict):
                reports.put((self, report))

    def tell(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it has ended; the supervisor reports why

    def close_channel(self) -> None:
        """End of the launcher's answers: a stage still waiting for one stops."""
        try:
            self.process.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def exit_reason(self) -> str:
        code = self.process.returncode
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return "finished" if code == 0 else f"exited with code {code}"

    def signal(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)


class Launcher:
    """Builds the stage command lines from a RunConfig, runs and supervises them."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir
        self.stop_requested = StopFlag()
        self.stages = self._plan()
        self.startup: dict | None = None  # how long each stage took to become ready (stats.json)

    def _endpoints(self) -> dict[str, str]:
        if self.config.transport == "ipc":
            return {name: f"ipc://{self.run_dir}/{name}" for name in ("visible", "thermal", "sink")}
        ports = _free_tcp_ports(3)
        return {name: f"tcp://127.0.0.1:{port}" for name, port in zip(("visible", "thermal", "sink"), ports)}

    def _plan(self) -> list[StageProcess]:
        c, ends = self.config, self._endpoints()
        mode = ["--mode", c.mode]
        captures = []
        for stream, source in (("visible", c.visible), ("thermal", c.thermal)):
            argv = ["capture", "--source", source, "--stream", stream, "--output", ends[stream], *mode]
            # The visible stream sets the run's length; the thermal capture runs until the run ends.
            argv += _flags(pace=c.pace, frames=c.frames if stream == "visible" else None, fps=c.fps,
                           summary=self._capture_summary(stream), keys=c.keys, open_timeout=c.open_timeout,
                           stall_timeout=c.stall_timeout,
                           record=c.record_thermal if stream == "thermal" else None)
            captures.append(StageProcess(f"capture.{stream}", argv))
        fuse = ["fuse", "--visible-in", ends["visible"], "--thermal-in", ends["thermal"],
                "--output", ends["sink"], *mode, "--engine", c.engine, "--batch", str(c.batch)]
        fuse += _flags(calibration=self._calibration(), time_offset=c.time_offset, pairing=c.pairing,
                       window=c.window, max_reuse=c.max_reuse, size=c.size, keys=c.keys, agc=c.agc or None)
        if c.engine_options:
            fuse += ["--engine-options", ",".join(f"{k}={v}" for k, v in c.engine_options.items())]
        if not c.pip:
            fuse.append("--no-thumbnails")
        sink = ["sink", "--input", ends["sink"], "--output", c.output, "--stats", str(c.stats_path), *mode]
        sink += _flags(live_view=c.live_view, live_view_host=c.live_view_host,
                       live_view_token=c.live_view_token, keys=c.keys, encoder=c.encoder, stream=c.stream,
                       stream_format=c.stream_format, stream_bitrate=c.stream_bitrate,
                       keyframe_interval=c.keyframe_interval, rtsp_transport=c.rtsp_transport)
        sink += [flag for flag, on in (("--no-hud", not c.hud), ("--no-pip", not c.pip),
                                       ("--colormap", c.colormap)) if on]
        # Receivers first: the sink, then the fuse stage, then the captures that feed it.
        return [StageProcess("sink", sink), StageProcess("fuse", fuse), *captures]

    def _capture_summary(self, stream: str) -> Path:
        return self.run_dir / f"capture.{stream}.json"

    def _complete_statistics(self) -> None:
        """Add to the statistics file what the sink cannot know: how start-up went, and what the captures
        wrote themselves (the thermal capture runs until the run ends, after the fuse stage has passed the
        other stages' final statistics on to the sink)."""
        stats_path = self.config.stats_path
        try:
            report = json.loads(stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # the sink wrote none; the run's exit code and messages say why
        captures = {}
        for stream in ("visible", "thermal"):
            try:
                captures.update(json.loads(self._capture_summary(stream).read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        report["stages"] = {**captures, **report["stages"]}  # captures first, the sink's copies win
        report["startup"] = self.startup
        report["transit"] = self._transit(report["stages"])
        for hop, counts in report["transit"].items():
            if counts.get("lost"):
                report["drops"][f"transit:{hop}"] = counts["lost"]
                report["drops_total"] += counts["lost"]
        partial = stats_path.with_name(stats_path.name + ".partial")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(stats_path)

    def _transit(self, stages: dict) -> dict:
        """Frames sent on each hop of the recorded path against those received at its other end: frames
        that were in flight when a stage died are counted nowhere else. A hop whose receiver left no
        statistics (killed) says so. (The thermal capture runs on after the fuse stage has stopped reading,
        so its hop is not reconciled.)"""
        transit = {}
        fuse_received = stages.get("fuse", {}).get("received")
        for sender, receiver, received in (
                ("capture.visible", "fuse", fuse_received["visible"] if fuse_received else None),
                ("fuse", "sink", stages.get("sink", {}).get("received"))):
            sent, hop = stages.get(sender, {}).get("frames"), f"{sender}->{receiver}"
            if sent is None:
                continue
            if received is None:
                stage = next((s for s in self.stages if s.name == receiver), None)
                why = f"no statistics from {receiver} ({stage.exit_reason() if stage else 'not run'})"
                transit[hop] = {"sent": sent, "received": None, "why": why}
            else:
                transit[hop] = {"sent": sent, "received": received, "lost": max(0, sent - received)}
        return transit

    def _calibration(self) -> str | None:
        """The rig file to use: the given one, else the synthetic flight's known mapping."""
        if self.config.calibration:
            return self.config.calibration
        if self.config.visible.startswith("synthetic") and self.config.thermal.startswith("synthetic"):
            from .sources import parse_synthetic_options
            from .synthetic import FlightConfig, true_rig

            visible, thermal = (parse_synthetic_options(spec.partition(":")[2], FlightConfig())
                                for spec in (self.config.visible, self.config.thermal))
            # The thermal spec holds the thermal camera and its clock; the visible spec the visible size.
            path = self.run_dir / "rig.synthetic.json"
            true_rig(replace(thermal, visible_size=visible.visible_size)).save(path)
            return str(path)
        return None

    def run(self) -> int:
        """Start all stages and wait; returns the exit code for `skyfuse run`."""
        reports: queue.Queue = queue.Queue()
        for stage in self.stages:
            stage.start(reports)
        error = self._start_together(reports)
        if error:
            print(f"skyfuse run: error: {error}; stopping the others", file=sys.stderr)
            self.shutdown()
            return 1
        failed = None
        sink = self.stages[0]
        while failed is None and not self.stop_requested.is_set() and sink.process.poll() is None:
            time.sleep(0.1)
            failed = next((s for s in self.stages if s.process.poll() not in (None, 0)), None)
        if failed:
            print(f"skyfuse run: error: stage {failed.name} {failed.exit_reason()}; stopping the others",
                  file=sys.stderr)
        self.shutdown()
        self._complete_statistics()
        if failed:
            return 1
        crashed = [s for s in self.stages if s.process.returncode != 0]
        for stage in crashed:
            print(f"skyfuse run: stage {stage.name} {stage.exit_reason()}", file=sys.stderr)
        return 130 if self.stop_requested.is_set() else (1 if crashed else 0)

    def _start_together(self, reports: queue.Queue) -> str | None:
        """Bring every stage up before the first frame, then start both captures on one epoch, so both
        streams share a time base and no frame meets a stage that is still starting:

        1. the captures open their sources and report each stream's geometry;
        2. the fuse stage warms its engine up at those sizes, the sink opens its recording at the fused
           size and the visible rate;
        3. once all are ready, both captures get the epoch.

        Returns why the run cannot start (a stage failed, or was not ready within the time-out), or None.
        Stopping meanwhile (Ctrl-C) returns None with stop_requested set."""
        started = time.monotonic()
        deadline = started + self.config.ready_timeout
        sink, fuse, *captures = self.stages
        error = self._await_ready(captures, reports, deadline)
        if error or self.stop_requested.is_set():
            return error
        geometry = {stage.name.partition(".")[2]: stage.ready.get("geometry") for stage in captures}
        fuse.tell({"geometry": geometry})
        sink.tell({"recording": self._recording_geometry(geometry)})
        error = self._await_ready([fuse, sink], reports, deadline)
        if error or self.stop_requested.is_set():
            return error
        epoch = time.monotonic_ns() + int(START_MARGIN_S * 1e9)
        for stage in captures:
            stage.tell({"epoch_ns": epoch})
        self.startup = {"ready_s": round(time.monotonic() - started, 3),
                        "stages": {stage.name: stage.ready for stage in self.stages}}
        print(f"skyfuse run: ready in {self.startup['ready_s']:.1f} s: {_startup_text(self.stages)}",
              file=sys.stderr)
        return None

    def _await_ready(self, stages: list[StageProcess], reports: queue.Queue, deadline: float) -> str | None:
        waiting = {id(stage): stage for stage in stages}
        while waiting and not self.stop_requested.is_set():
            failed = next((s for s in self.stages if s.process.poll() is not None), None)
            if failed:
                return f"stage {failed.name} {failed.exit_reason()} before the run started"
            if time.monotonic() > deadline:
                late = ", ".join(f"{s.name} (still {s.doing})" for s in waiting.values())
                return (f"not ready within {self.config.ready_timeout:g} s (--ready-timeout): {late}")
            try:
                stage, report = reports.get(timeout=0.1)
            except queue.Empty:
                continue
            if report.get("event") == "status":
                stage.doing = str(report.get("doing"))
            elif report.get("event") == "ready":
                stage.ready = {k: v for k, v in report.items() if k != "event"}
                waiting.pop(id(stage), None)
        return None

    def _recording_geometry(self, geometry: dict) -> dict | None:
        """The fused frames' size (--size, else the thermal camera's) and the visible camera's rate."""
        thermal, visible = geometry.get("thermal"), geometry.get("visible")
        if not thermal or not visible:
            return None
        width, height = parse_size(self.config.size) if self.config.size else (thermal["width"],
                                                                                thermal["height"])
        return {"width": width, "height": height, "fps": visible.get("fps")}

    def shutdown(self, settle_s: float = 3.0) -> None:
        """Stop in data-flow order: captures first, so their end-of-stream reaches the fuse stage and then
        the sink, which finalises the recording. A stage still running after `settle_s` gets SIGTERM,
        then SIGKILL after another `settle_s`."""
        sink, fuse, *captures = self.stages
        for stage in self.stages:
            stage.close_channel()
        for stage in captures:
            stage.signal(signal.SIGTERM)
        _wait_all(captures, settle_s)
        for stage in (fuse, sink):
            _wait_all([stage], settle_s)  # finishing by itself once end-of-stream arrives
            stage.signal(signal.SIGTERM)
            _wait_all([stage], settle_s)
        for stage in self.stages:
            if stage.process.poll() is None:
                print(f"skyfuse run: stage {stage.name} did not stop; killing it", file=sys.stderr)
                stage.signal(signal.SIGKILL)
                stage.process.wait()


def _startup_text(stages: list[StageProcess]) -> str:
    """Each stage's start-up time, and what the fuse stage spent it on."""
    parts = []
    for stage in stages:
        ready = stage.ready or {}
        text = f"{stage.name} {ready.get('startup_s', 0):.1f} s"
        if "engine_s" in ready:
            note = f", {ready['note']}" if ready.get("note") else ""
            text += f" (engine {ready['engine_s']:.1f} s{note}; warm-up {ready.get('warm_up_s', 0):.2f} s)"
        parts.append(text)
    return ", ".join(parts)


def _wait_all(stages: list[StageProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for stage in stages:
        try:
            stage.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def _flags(**options) -> list[str]:
    argv = []
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _free_tcp_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def print_summary(stats_path: Path) -> None:
    """The end-of-run table: per-stage frames, fps, latency percentiles and drops."""
    try:
        report = json.loads(stats_path.read_text())
    except (OSError, json.JSONDecodeError):
        print(f"skyfuse run: no statistics were written ({stats_path})", file=sys.stderr)
        return
    print(f"\nrecorded {report['frames_recorded']} frames at {report['fps_recorded']:g} fps "
          f"-> {report['output']}")
    print(f"{'stage':<16}{'frames':>8}{'fps':>8}{'drops':>8}")
    for name, stage in report["stages"].items():
        print(f"{name:<16}{stage.get('frames', 0):>8}{stage.get('fps', 0):>8.1f}"
              f"{sum(stage.get('drops', {}).values()):>8}")
    sink = report["stages"].get("sink", {}).get("latency", {})
    if sink:
        print(f"\n{'latency (ms)':<18}{'p50':>8}{'p95':>8}{'p99':>8}")
        for hop, values in sink.items():
            if values.get("count"):
                print(f"{hop:<18}{values['p50_ms']:>8.1f}{values['p95_ms']:>8.1f}{values['p99_ms']:>8.1f}")
    steady = {k: v for k, v in report["drops"].items() if v and not k.endswith(":warmup")}
    if steady:
        print("\ndrops: " + ", ".join(f"{k} {v}" for k, v in sorted(steady.items())))
    if report.get("drops_warmup"):
        print(f"dropped before the run was ready (live sources): {report['drops_warmup']}")
    stream = report["stages"].get("sink", {}).get("stream")
    if stream:
        print(f"stream to {stream['url']} ({stream['format']}): {stream['packets_sent']} packets, "
              f"{stream['bytes_sent'] / 1e6:.2f} MB sent, {stream['failures']} failures, "
              f"{stream['reconnects']} reconnects, {stream['dropped_queue_full']} dropped (queue full), "
              f"{stream['skipped']} not sent (waiting for a keyframe or the network)")
    print(f"statistics: {stats_path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyfuse run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML file with any of the options below (flags override it)")
    parser.add_argument("--visible", help="visible source: synthetic, video, folder, glob, CSV, camera, URL")
    parser.add_argument("--thermal", help="thermal source (same kinds)")
    parser.add_argument("--output", help="recording (.mp4 fragmented, or .mkv)")
    parser.add_argument("--stats", help="statistics JSON (default: stats.json beside the recording)")
    parser.add_argument("--record-thermal", metavar="PATH.mkv",
                        help="also keep every captured thermal frame bit-exactly (lossless FFV1 in "
                             "Matroska, 16 bits where the camera gives them) with PATH.frames.jsonl of seqs "
                             "and capture times; replay it with --thermal PATH.mkv")
    parser.add_argument("--engine", help="fusion engine (blend, pyramid, onnxruntime, auto, ...)")
    parser.add_argument("--engine-options", help="engine options KEY=VALUE,... (e.g. model=skyfuse-rt)")
    parser.add_argument("--agc", metavar="KEY=VALUE,...",
                        help="16-bit thermal AGC: mode=dde|linear|plateau, detail_gain, base_levels, "
                             "detail_radius, low_tail_pct, high_tail_pct, roi=x0,y0,x1,y1, plateau, "
                             "linear_mix, smoothing, min_span, stride (default: dde, tails 1 %% and "
                             "0.2 %%; see README)")
    parser.add_argument("--mode", choices=MODES, help="live (default) or lossless")
    parser.add_argument("--pace", choices=("native", "max"),
                        help="replay rate of files and the synthetic flight")
    parser.add_argument("--frames", type=int, help="stop each capture after this many frames")
    parser.add_argument("--calibration", help="rig JSON from `skyfuse calibrate`")
    parser.add_argument("--time-offset", type=float, help="seconds added to thermal times")
    parser.add_argument("--batch", type=int, help="pairs fused per engine call")
    parser.add_argument("--live-view", type=int, metavar="PORT",
                        help="MJPEG live view port (on 127.0.0.1 unless --live-view-host)")
    parser.add_argument("--live-view-host", metavar="ADDRESS",
                        help="address the live view listens on instead (it then asks for a token)")
    parser.add_argument("--live-view-token", metavar="TOKEN",
                        help="the live view's access token (default: random, in the logged URL)")
    parser.add_argument("--encoder", choices=ENCODERS,
                        help="H.264 encoder (default auto: h264_nvenc where it opens, else libx264)")
    add_stream_arguments(parser)
    parser.add_argument("--transport", choices=("ipc", "tcp"), help="links between stages (default ipc)")
    parser.add_argument("--keys", metavar="DIR", help="link keys from `skyfuse keys`: encrypt the links")
    for flag, text in (("hud", "the HUD overlay"), ("pip", "picture-in-picture of the inputs"),
                       ("colormap", "false-colour thermal thumbnail")):
        parser.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=text)
    parser.add_argument("--ready-timeout", type=float, metavar="SECONDS",
                        help="how long the stages may take to start, a first-use model export included "
                             "(default 300)")
    parser.add_argument("--open-timeout", type=float, metavar="SECONDS",
                        help="how long a camera or stream may take to open or reconnect (default 5)")
    parser.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                        help="a live source without a frame for this long reconnects (default 5)")
    parser.add_argument("--allow-unequal-length", action="store_true", default=None,
                        help="accept file sequences of different lengths at the same frame rate")
    return parser


def main(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["engine_options"] is not None:
        args["engine_options"] = parse_options(args["engine_options"], "--engine-options")
    config = load_config(args.pop("config"), args)
    check_config(config)
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skyfuse-") as run_dir:
        launcher = Launcher(config, Path(run_dir))
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: launcher.stop_requested.set())
        print(f"skyfuse run: {config.mode} mode, engine {config.engine}, recording to {config.output} "
              f"(pid {os.getpid()}; Ctrl-C stops and finalises)", file=sys.stderr)
        code = launcher.run()
    print_summary(config.stats_path)
    return code


def check_config(config: RunConfig) -> None:
    """Fail before starting anything, with a clear message: unknown engine, unreadable calibration,
    sources that do not open, or file sequences whose lengths differ at one frame rate (they cannot cover
    the same time span)."""
    from core.rig import Rig
    from engines.registry import ENGINES

    from .keys import RECEIVER, SENDER, link_keys
    from .sources import DEFAULT_OPEN_TIMEOUT_S, open_source

    if config.engine not in ENGINES and ":" not in config.engine:
        raise SkyfuseError(f"unknown engine {config.engine!r}; choose from {', '.join(sorted(ENGINES))}")
    if config.calibration:
        Rig.load(config.calibration)
    if config.record_thermal:
        from .thermal_recorder import prepare_raw_recording

        prepare_raw_recording(config.record_thermal)
    link_keys(config.keys, RECEIVER, SENDER)

    counts = {}
    for stream in ("visible", "thermal"):
        if getattr(config, stream).startswith("synthetic"):
            continue  # always valid, and building its world takes a moment
        source = open_source(getattr(config, stream), stream, fps=config.fps, frames=config.frames,
                             open_timeout=config.open_timeout or DEFAULT_OPEN_TIMEOUT_S)
        try:
            if source.frame_count is not None and not source.live:
                counts[stream] = (source.frame_count, source.fps)
        finally:
            source.close()
    if len(counts) == 2 and not config.allow_unequal_length:
        (nv, fv), (nt, ft) = counts["visible"], counts["thermal"]
        if nv != nt and abs(fv - ft) < 1e-6:
            raise SkyfuseError(f"the visible sequence has {nv} frames and the thermal one {nt} at the same "
                               f"{fv:g} fps: they cannot cover the same time; trim them, pair them with a "
                               "CSV (pairs.csv#visible, pairs.csv#thermal) or pass --allow-unequal-length")

