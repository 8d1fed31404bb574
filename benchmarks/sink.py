"""What the sink spends per frame, by part, before and after the encoding thread, at fused sizes that occur.

Parts, each timed alone on the same frames (synthetic flight, resized to each size): the full-frame copy
of the received (read-only) frame, picture-in-picture, HUD, colour conversion BGR->YUV420 (before:
FFmpeg's swscale, what encoding a BGR frame used; after: OpenCV), H.264 encode (before: libx264 with its
own thread count; after: the recorder's encoder and threads), mux, sidecar line. `sink loop` is what the
sink's own thread spends per frame: before, all of the parts; after, the copy, PiP, HUD, the hand-off to
the encoding thread and the sidecar, with frames offered at 30 fps. `sustained fps` is the most frames per
second the recording keeps up with (before: 1000 / sink loop; after: unpaced through the threaded
recorder, until close). The sgemm rate is printed beside the times: shared machines vary 5x day to day.

    python -m benchmarks.sink --json out/bench/sink.json [--frames 60] [--sizes 640x512,1920x1080]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.machine import sgemm_gflops
from pipeline.hud import HudInfo, draw_hud, picture_in_picture
from pipeline.recorder import Recorder, RecorderConfig, Sidecar, encoder_threads, open_output, to_yuv420
from pipeline.synthetic import FlightConfig, SyntheticFlight

SIZES = ((640, 512), (1280, 720), (1280, 1024), (1920, 1080))  # fused = thermal size; 1280x1024: the HD rig
VISIBLE = (1920, 1080)  # the visible camera of the HD rig; its thumbnail travels at 1/4 size
RATE = Fraction(30)
PARTS = ("copy", "pip", "hud", "colour", "encode", "mux", "sidecar")  # the old loop: all on one thread


def flight_frames(count: int) -> list[np.ndarray]:
    flight = SyntheticFlight(FlightConfig(seed=1, visible_size=VISIBLE, thermal_size=(320, 256)))
    return [flight.visible_frame(i) for i in range(count)]


def _ms(fn, items) -> list[float]:
    times = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - started) * 1e3)
    return times


class _Sink:
    """The sink's per-frame work on prepared frames of one size: compose (copy, PiP, HUD) and sidecar."""

    def __init__(self, size: tuple[int, int], visible: list[np.ndarray], workdir: Path):
        width, height = size
        self.fused = [cv2.resize(v, size, interpolation=cv2.INTER_AREA) for v in visible]
        for image in self.fused:
            image.flags.writeable = False  # as received from the wire
        self.thumbs = [[cv2.resize(v, (VISIBLE[0] // 4, VISIBLE[1] // 4), interpolation=cv2.INTER_AREA),
                        cv2.cvtColor(cv2.resize(f, (width // 4, height // 4), interpolation=cv2.INTER_AREA),
                                     cv2.COLOR_BGR2GRAY)] for v, f in zip(visible, self.fused)]
        self.info = HudInfo(fps=29.97, latency_ms=41.2, drops=0, engine="onnxruntime",
                            capture_wall_ns=time.time_ns())
        self.record = {"seq": 1, "slot": 1, "capture_ns": 1, "capture_wall_ns": time.time_ns(),
                       "thermal": {"seq": 1, "capture_ns": 1, "dt_ms": 1.2},
                       "latency_ms": {"capture_to_fuse": 3.1, "engine": 9.2, "fuse_to_sink": 1.0,
                                      "end_to_end": 22.0}, "drops": 0}
        self.sidecar = Sidecar(workdir / f"{width}x{height}.jsonl", fsync_s=None)

    def compose(self, index: int) -> np.ndarray:
        image = np.array(self.fused[index])
        picture_in_picture(image, self.thumbs[index])
        return draw_hud(image, self.info)


def measure_size(size: tuple[int, int], visible: list[np.ndarray], workdir: Path) -> dict:
    """Median ms per part, before and after, and sustained fps, for fused frames of `size`."""
    name = "{}x{}".format(*size)
    sink = _Sink(size, visible, workdir)
    indices = range(len(sink.fused))
    composed = [sink.compose(i) for i in indices]
    shared = {"copy": _ms(np.array, sink.fused),
              "pip": _ms(lambda i: picture_in_picture(np.array(sink.fused[i]), sink.thumbs[i]), indices),
              "hud": _ms(lambda image: draw_hud(image, sink.info), composed),
              "sidecar": _ms(sink.sidecar.write, [sink.record] * len(composed))}
    shared["pip"] = [t - c for t, c in zip(shared["pip"], shared["copy"])]  # without its copy
    handoff, after_fps, codec = _threaded(workdir / f"after_{name}.mp4", size, sink)
    before_fps = _sustained_before(workdir / f"before_sustained_{name}.mp4", size, sink)
    before = {**shared, "colour": _ms(_swscale_yuv420, composed),
              **_encode_and_mux(workdir / f"before_{name}.mp4", size, composed, "libx264", BEFORE)}
    after = {**shared, "colour": _ms(to_yuv420, composed),
             **_encode_and_mux(workdir / f"after_parts_{name}.mp4", size, composed, codec, AFTER)}
    sink.sidecar.close()
    row = {"size": name, "codec_after": codec, "parts": {}}
    for part in PARTS:
        row["parts"][part] = {"before_ms": _median(before[part]), "after_ms": _median(after[part])}
    loop_before = sum(row["parts"][p]["before_ms"] for p in PARTS)
    loop_after = sum(row["parts"][p]["after_ms"] for p in ("copy", "pip", "hud", "sidecar")) + handoff
    row["parts"]["hand-off"] = {"before_ms": None, "after_ms": handoff}
    row["parts"]["sink loop"] = {"before_ms": round(loop_before, 3), "after_ms": round(loop_after, 3)}
    row["sustained_fps"] = {"before": before_fps, "after": after_fps}
    return row


# Before: libx264 chose its own thread count and FFmpeg converted the BGR frame. After: the recorder's
# defaults. No fsync in either: it runs on its own thread in both and only adds disk noise here.
BEFORE = RecorderConfig(codec="libx264", fsync_s=None, extra_options={"threads": "auto"})
AFTER = RecorderConfig(fsync_s=None)


def _swscale_yuv420(image: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")


def _encode_and_mux(path: Path, size: tuple[int, int], images: list[np.ndarray], codec: str,
                    config: RecorderConfig) -> dict[str, list[float]]:
    """Encode and mux times of `images` through the recorder's container and stream set-up."""
    container, stream = open_output(path, RATE, size, codec, config)
    frames = [to_yuv420(image) for image in images]
    encode, mux = [], []
    for pts, frame in enumerate(frames):
        frame.pts = pts
        started = time.perf_counter()
        packets = stream.encode(frame)
        encoded = time.perf_counter()
        container.mux(packets)
        encode.append((encoded - started) * 1e3)
        mux.append((time.perf_counter() - encoded) * 1e3)
    container.mux(stream.encode(None))
    container.close()
    return {"encode": encode, "mux": mux}


def _sustained_before(path: Path, size: tuple[int, int], sink: _Sink) -> float:
    """Frames per second of the old sink loop, unpaced: compose, then encode a BGR frame and mux on the
    sink's thread, then the sidecar line."""
    container, stream = open_output(path, RATE, size, "libx264", BEFORE)
    started = time.perf_counter()
    for pts in range(len(sink.fused)):
        frame = av.VideoFrame.from_ndarray(sink.compose(pts), format="bgr24")
        frame.pts = pts
        container.mux(stream.encode(frame))
        sink.sidecar.write(sink.record)
    container.mux(stream.encode(None))
    elapsed = time.perf_counter() - started
    container.close()
    return round(len(sink.fused) / elapsed, 1)


def _threaded(path: Path, size: tuple[int, int], sink: _Sink) -> tuple[float, float, str]:
    """(median ms of the hand-off with frames offered at 30 fps, unpaced frames per second of the new sink
    loop until the recorder has muxed every frame, codec)."""
    handoff = []
    with Recorder(path, RATE, size, AFTER) as recorder:
        started = time.perf_counter()
        for slot in range(len(sink.fused)):
            delay = started + slot / float(RATE) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            image = sink.compose(slot)
            t0 = time.perf_counter()
            recorder.write(image, slot)
            handoff.append((time.perf_counter() - t0) * 1e3)
    with Recorder(path, RATE, size, AFTER) as recorder:
        started = time.perf_counter()
        for slot in range(len(sink.fused)):
            recorder.write(sink.compose(slot), slot)
            sink.sidecar.write(sink.record)
    sustained = len(sink.fused) / (time.perf_counter() - started)  # the with block has closed: all muxed
    return _median(handoff), round(sustained, 1), recorder.codec


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes takes WIDTHxHEIGHT,... (e.g. 640x512,1920x1080), got {text!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per size")
    parser.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in SIZES),
                        help="fused frame sizes, WIDTHxHEIGHT,...")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.frames < 2:
        raise SystemExit("--frames must be at least 2")
    sizes = _parse_sizes(args.sizes)
    gflops = sgemm_gflops()
    machine = {"sgemm_gflops": round(gflops, 1), "cpu_count": os.cpu_count(),
               "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count(),
               "opencv_threads": cv2.getNumThreads(),
               "libx264_threads_after": encoder_threads(RecorderConfig())}
    print(f"machine: sgemm {gflops:.1f} GFLOPS (numpy float32 1024^2 matmul on {machine['blas_threads']} "
          f"threads), {machine['cpu_count']} cores, OpenCV {machine['opencv_threads']} threads", flush=True)
    visible = flight_frames(args.frames)
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyfuse-bench-") as tmp:
        for size in sizes:
            rows.append(measure_size(size, visible, Path(tmp)))
            print(f"  {rows[-1]['size']} measured", flush=True)
    header = f"{'fused size':<12}{'part':<12}{'before ms':>10}{'after ms':>10}{'after/before':>13}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for part, values in row["parts"].items():
            before, after = values["before_ms"], values["after_ms"]
            ratio = f"{after / before:13.2f}" if before else f"{'-':>13}"
            shown = f"{before:10.2f}" if before is not None else f"{'-':>10}"
            print(f"{row['size']:<12}{part:<12}{shown}{after:10.2f}{ratio}")
        fps = row["sustained_fps"]
        print(f"{row['size']:<12}{'sustained':<12}{fps['before']:>8.1f}fps{fps['after']:>7.1f}fps"
              f"{fps['after'] / fps['before']:13.2f}   (after: {row['codec_after']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows, "python": sys.version.split()[0]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
