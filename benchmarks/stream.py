"""The live H.264 stream on loopback: what it costs the link against the MJPEG live view, and the latency it
adds between the sink handing a frame to the encoder and a viewer having it.

Frames of the synthetic flight at the fused size, each with its index written as black/white blocks in the
top-left corner, are written to a `Recorder` with a stream at 30 fps (paced, as the sink writes them). The
stream goes to a UDP relay in this process, which counts every datagram (the bytes a radio link carries,
RTP or MPEG-TS headers included) and notes when the last packet of each frame arrives (RTP marker bit),
then forwards it to a PyAV viewer thread that decodes every frame and reads the index back.

- `wire Mbit/s`: datagram bytes per second of video, as received; `MJPEG Mbit/s`: the same frames as the
  live view encodes them (OpenCV JPEG, quality 80), at the live view's 15 fps and at the full 30 fps;
- `to wire ms`: hand-off to the encoder -> the frame's last RTP packet received (what a viewer that
  completes a frame on the RTP marker, as GStreamer and so QGroundControl do, can start decoding at);
- `decoded ms`: hand-off -> decoded by the PyAV (FFmpeg) viewer, whose demuxer completes a frame only when
  the next one starts (or the end-of-stream NAL comes), hence about one frame period more.
Latencies are of the steady state: frames of the first second are left out (the viewer probes the stream
when it opens and decodes what it buffered meanwhile late).

`--pipeline` adds glass-to-glass through a whole `skyfuse run` (live mode, the synthetic flight, engine
pyramid, MPEG-TS to a viewer thread here): capture -> recorded (the sink's hand-off to the encoder, from
stats.json) against capture -> decoded by the viewer (each frame found by its slot in the sidecar; both
wall clocks of this machine). Camera exposure and display are not in either.

    python -m benchmarks.stream --json out/bench/stream.json [--seconds 5] [--sizes 640x512,1280x720]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.machine import machine_line
from core.sizes import parse_size
from pipeline.recorder import Recorder, RecorderConfig
from pipeline.sidecar import read_sidecar
from pipeline.streamout import StreamConfig, parse_bitrate
from pipeline.synthetic import FlightConfig, SyntheticFlight

FPS = 30
BITS, BLOCK = 12, 16  # the frame index, as blocks along the top-left edge
JPEG_QUALITY = 80  # pipeline/liveview.py: LiveViewConfig.jpeg_quality
LIVE_VIEW_FPS = 15  # LiveViewConfig.max_fps
LOW_DELAY = {"probesize": "32768", "analyzeduration": "0"}  # the viewer opens at the first parameter sets


def stamp(image: np.ndarray, index: int) -> np.ndarray:
    bits = (index >> np.arange(BITS)) & 1
    image[:BLOCK, :BITS * BLOCK] = np.repeat(bits * 255, BLOCK).astype(np.uint8)[None, :, None]
    return image


def read_stamp(luma: np.ndarray) -> int:
    strip = luma[4:BLOCK - 4, :BITS * BLOCK].reshape(BLOCK - 8, BITS, BLOCK)[:, :, 4:-4].mean(axis=(0, 2))
    return int(sum(1 << i for i, level in enumerate(strip) if level > 128))


def bound(port: int) -> bool:
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows):
            return True
    return False


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port % 2 == 0 and port < 65000:
            return port


class Relay(threading.Thread):
    """Receives the stream's datagrams, counts them and forwards them to the viewer's port."""

    def __init__(self, port: int, to_port: int, rtp: bool):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.to = ("127.0.0.1", to_port)
        self.rtp = rtp
        self.bytes = 0
        self.datagrams = 0
        self.frame_ends: dict[int, float] = {}  # RTP timestamp -> arrival of its marker packet
        self.stop = threading.Event()

    def run(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.bytes += len(data)
            self.datagrams += 1
            if self.rtp and len(data) >= 12 and data[1] & 0x80:
                self.frame_ends.setdefault(int.from_bytes(data[4:8], "big"), now)
            out.sendto(data, self.to)
        out.close()
        self.sock.close()


class Viewer(threading.Thread):
    """Decodes the stream; the monotonic time each frame index was decoded."""

    def __init__(self, url: str, fmt: str, options: dict):
        super().__init__(daemon=True)
        self.url, self.fmt, self.options = url, fmt, options
        self.decoded: dict[int, float] = {}

    def run(self) -> None:
        try:
            with av.open(self.url, format=self.fmt, options=self.options, timeout=(60.0, 3.0)) as container:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.InvalidDataError:
                        continue
                    for frame in frames:
                        now = time.monotonic()
                        luma = frame.to_ndarray()[:BLOCK]  # yuv420p: the Y plane's top rows
                        self.decoded.setdefault(read_stamp(luma), now)
        except (av.FFmpegError, OSError):
            pass  # the read time-out once the stream has ended


class TimedViewer(threading.Thread):
    """Decodes an MPEG-TS stream: (time in the stream s, wall ns when decoded) of every frame."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.decoded: list[tuple[float, int]] = []

    def run(self) -> None:
        try:
            with av.open(f"udp://127.0.0.1:{self.port}", format="mpegts", options=LOW_DELAY,
                         timeout=(300.0, 5.0)) as container:
                for packet in container.demux(container.streams.video[0]):
                    try:
                        frames = packet.decode()
                    except av.InvalidDataError:
                        continue
                    self.decoded += [(float(f.pts * f.time_base), time.time_ns()) for f in frames]
        except (av.FFmpegError, OSError):
            pass


def run_pipeline(seconds: float, visible: str, thermal: str, workdir: Path) -> dict:
    """Glass-to-glass through `skyfuse run` with an MPEG-TS stream (see the module's docstring)."""
    port = free_port()
    viewer = TimedViewer(port)
    viewer.start()
    while not bound(port):
        time.sleep(0.01)
    output = workdir / "run" / "fused.mp4"
    flight = f"visible_size={visible},thermal_size={thermal}"
    command = [sys.executable, "-m", "pipeline", "run", "--visible", f"synthetic:{flight}", "--thermal",
               f"synthetic:{flight}", "--frames", str(round(seconds * FPS)), "--engine", "pyramid",
               "--output", str(output), "--stream", f"udp://127.0.0.1:{port}", "--stream-format", "mpegts"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    if result.returncode != 0:
        raise SystemExit(f"skyfuse run failed: {result.stderr[-2000:]}")
    viewer.join(30)
    records = read_sidecar(output.with_name(output.name + ".frames.jsonl"))
    report = json.loads(output.with_name("stats.json").read_text())
    sink = report["stages"]["sink"]
    by_slot = {r["slot"]: r["capture_wall_ns"] for r in records}
    first_slot = records[0]["slot"]
    glass_ms = []
    if viewer.decoded:
        start = viewer.decoded[0][0]
        for time_s, decoded_ns in viewer.decoded:
            slot = first_slot + round((time_s - start) * report["fps_recorded"])
            if slot in by_slot and slot - first_slot >= FPS:  # steady state, as above
                glass_ms.append((decoded_ns - by_slot[slot]) / 1e6)
    recorded = sink["latency"]["end_to_end"]
    return {"visible": visible, "thermal": thermal, "frames_recorded": report["frames_recorded"],
            "frames_decoded": len(viewer.decoded), "drops_total": report["drops_total"],
            "stream": sink.get("stream"),
            "capture_to_recorded": {"p50_ms": recorded["p50_ms"], "p95_ms": recorded["p95_ms"]},
            "capture_to_decoded": percentiles(glass_ms)}


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    array = np.array(values)
    return {"p50_ms": round(float(np.percentile(array, 50)), 1),
            "p95_ms": round(float(np.percentile(array, 95)), 1), "max_ms": round(float(array.max()), 1)}


def run_case(size: tuple[int, int], fmt: str, bitrate: int | None, frames: int, workdir: Path) -> dict:
    flight = SyntheticFlight(FlightConfig(seed=1, visible_size=size, thermal_size=(320, 256)))
    stream_port, viewer_port = free_port(), free_port()
    sdp = workdir / f"{fmt}.sdp"
    relay = Relay(stream_port, viewer_port, rtp=fmt == "rtp")
    relay.start()
    config = RecorderConfig(bitrate=bitrate, stream=StreamConfig(f"udp://127.0.0.1:{stream_port}", fmt,
                                                                 sdp_path=sdp))
    written: dict[int, float] = {}
    path = workdir / f"{size[0]}x{size[1]}-{fmt}-{bitrate}.mp4"
    jpeg_bytes = []
    with Recorder(path, FPS, size, config) as recorder:
        if fmt == "rtp":  # the viewer reads a copy of the SDP that points at the relay's output
            text = sdp.read_text().replace(f"m=video {stream_port} ", f"m=video {viewer_port} ")
            (workdir / "viewer.sdp").write_text(text)
            viewer = Viewer(str(workdir / "viewer.sdp"), "sdp", {"protocol_whitelist": "file,udp,rtp",
                                                                 **LOW_DELAY})
        else:
            viewer = Viewer(f"udp://127.0.0.1:{viewer_port}", "mpegts", LOW_DELAY)
        viewer.start()
        deadline = time.monotonic() + 30
        while not bound(viewer_port) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        for index in range(frames):
            image = stamp(flight.visible_frame(index), index)
            if index % 5 == 0:  # the MJPEG view of the same frames (a sample: JPEG sizes vary little)
                jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
                jpeg_bytes.append(len(jpeg))
            time.sleep(max(0.0, started + index / FPS - time.monotonic()))
            written[index] = time.monotonic()
            recorder.write(image, index)
    stats = recorder.stream_stats()
    deadline = time.monotonic() + 30
    while len(viewer.decoded) < frames and viewer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.stop.set()
    relay.join()
    seconds = frames / FPS
    # Latency in the steady state: the first second is left out (the viewer probing the stream at start).
    decoded_ms = [(viewer.decoded[i] - written[i]) * 1e3 for i in viewer.decoded if FPS <= i < frames]
    wire_ms = []
    if relay.frame_ends:
        first = min(relay.frame_ends)
        for ts, arrived in relay.frame_ends.items():
            index = round((ts - first) % 2**32 / (90000 / FPS))
            if FPS <= index < frames:
                wire_ms.append((arrived - written[index]) * 1e3)
    jpeg = float(np.mean(jpeg_bytes))
    return {"size": f"{size[0]}x{size[1]}", "format": fmt, "bitrate_cap": bitrate, "frames_sent": frames,
            "frames_decoded": len(viewer.decoded), "packets_sent": stats["packets_sent"],
            "failures": stats["failures"], "dropped": stats["dropped_queue_full"],
            "wire_mbit_s": round(relay.bytes * 8 / seconds / 1e6, 3),
            "h264_mbit_s": round(stats["bytes_sent"] * 8 / seconds / 1e6, 3),
            "recording_mbit_s": round(path.stat().st_size * 8 / seconds / 1e6, 3),
            "datagrams": relay.datagrams, "jpeg_kib": round(jpeg / 1024, 1),
            "mjpeg_mbit_s_15fps": round(jpeg * 8 * LIVE_VIEW_FPS / 1e6, 3),
            "mjpeg_mbit_s_30fps": round(jpeg * 8 * FPS / 1e6, 3),
            "to_wire": percentiles(wire_ms), "decoded": percentiles(decoded_ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seconds", type=float, default=5.0, help="video per case")
    parser.add_argument("--sizes", default="640x512,1280x720", help="fused frame sizes")
    parser.add_argument("--bitrates", default="none,2M", help="caps: none (constant quality), 2M, ...")
    parser.add_argument("--formats", default="rtp,mpegts")
    parser.add_argument("--pipeline", action="store_true",
                        help="also glass-to-glass through a whole `skyfuse run` (1280x720 + 640x512, 10 s)")
    args = parser.parse_args(argv)
    machine = machine_line()
    print(machine)
    frames = round(args.seconds * FPS)
    rows = []
    header = (f"{'size':>9} {'format':>6} {'cap':>5} {'decoded':>8} {'wire Mbit/s':>11} "
              f"{'MJPEG 15/30 fps':>16} {'to wire p50/p95 ms':>19} {'decoded p50/p95 ms':>19}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="skyfuse-stream-") as workdir:
        for size in (parse_size(s) for s in args.sizes.split(",")):
            for cap in args.bitrates.split(","):
                bitrate = None if cap == "none" else parse_bitrate(cap)
                for fmt in args.formats.split(","):
                    row = run_case(size, fmt, bitrate, frames, Path(workdir))
                    rows.append(row)
                    wire, dec = row["to_wire"], row["decoded"]
                    print(f"{row['size']:>9} {fmt:>6} {cap:>5} {row['frames_decoded']:>4}/{frames:<3} "
                          f"{row['wire_mbit_s']:>11.2f} "
                          f"{row['mjpeg_mbit_s_15fps']:>7.1f} / {row['mjpeg_mbit_s_30fps']:<6.1f} "
                          f"{_pair(wire):>19} {_pair(dec):>19}", flush=True)
        pipeline = None
        if args.pipeline:
            pipeline = run_pipeline(10.0, "1280x720", "640x512", Path(workdir))
            recorded, decoded = pipeline["capture_to_recorded"], pipeline["capture_to_decoded"]
            print(f"\nskyfuse run, {pipeline['visible']} + {pipeline['thermal']}, live, MPEG-TS: "
                  f"{pipeline['frames_decoded']} of {pipeline['frames_recorded']} recorded frames decoded; "
                  f"capture -> recorded p50/p95 {recorded['p50_ms']:.1f} / {recorded['p95_ms']:.1f} ms, "
                  f"capture -> viewer decoded {_pair(decoded)} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "fps": FPS, "seconds": args.seconds,
                                         "rows": rows, "pipeline": pipeline}, indent=2) + "\n")
    return 0


def _pair(values: dict) -> str:
    if values["p50_ms"] is None:
        return "-"
    return f"{values['p50_ms']:.1f} / {values['p95_ms']:.1f}"


if __name__ == "__main__":
    sys.exit(main())
