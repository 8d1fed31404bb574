"""What keeping the raw thermal frames costs: FFV1 per frame at thermal camera sizes, and the capture loop.

For each size, 16-bit frames of the synthetic flight (centikelvin) go through `RawThermalRecorder` as the
capture stage hands them over: `record` is what the capture's own thread spends per frame (the hand-off),
`encode` the FFV1 encode and mux of one frame on the encoding thread (timed alone, frame by frame),
`sustained fps` the most frames per second the recording keeps up with (unpaced, until `close` has muxed
every frame), `decode` a frame's replay cost, and the file's bytes per frame against the raw 2 bytes a
pixel. The sgemm rate and the load average are printed beside the times: shared machines vary 5x day to
day, and other work on the machine takes the cores FFV1's slice threads would use.

`--variants WxH` then compares FFV1 settings at that size (threads, slices, coder, context, slice CRCs):
each variant's encode wall time, its CPU time (all threads), the sustained rate through the recorder, the
size, and whether every frame decodes bit-exactly. Variants run in interleaved rounds, so a change in the
machine's load meets them all alike.

    python -m benchmarks.raw_thermal --json out/bench/raw_thermal.json [--frames 60] [--sizes 640x512]
        [--variants 1280x1024 --variant-frames 20 --rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from benchmarks.machine import machine_line
from core.sizes import parse_size
from pipeline.recorder import RecorderConfig
from pipeline.sidecar import PIXEL_FORMATS
from pipeline.synthetic import FlightConfig, SyntheticFlight
from pipeline.thermal_recorder import (
    RAW_QUEUE_FRAMES,
    TIME_BASE,
    RawThermalRecorder,
    ffv1_options,
    ffv1_threads,
)

SIZES = ((320, 256), (640, 512), (1280, 1024))
# FFV1 settings compared by --variants: name -> (encoder threads; extra FFV1 options). threads=3 is what
# FFmpeg picks by itself on 2 cores (one more than the cores), the recorder's default before one per core.
# `slices` is the number of slices a frame is cut into (each one coded alone, so threads can share a frame);
# `coder` 0 is Golomb-Rice, 1 the range coder, 2 the range coder with a custom state table; `context` 1
# the large context model; `slicecrc` 0 drops the per-slice CRC that finds damage (shown for its cost).
VARIANTS = {
    "threads=1": (1, {}),
    "threads=2": (2, {}),
    "threads=3": (3, {}),
    "threads=2 slices=4": (2, {"slices": "4"}),
    "threads=2 slices=16": (2, {"slices": "16"}),
    "threads=2 slices=30": (2, {"slices": "30"}),
    "threads=2 coder=0": (2, {"coder": "0"}),
    "threads=2 coder=2": (2, {"coder": "2"}),
    "threads=2 context=1": (2, {"context": "1"}),
    "threads=2 slicecrc=0": (2, {"slicecrc": "0"}),
}


def thermal_frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    config = FlightConfig(seed=1, thermal_size=size, thermal_bits=16, visible_size=(320, 180))
    flight = SyntheticFlight(config)
    return [flight.thermal_frame(i) for i in range(count)]


def encode_ms(frames: list[np.ndarray], path: Path,
              config: RecorderConfig | None = None) -> tuple[list[float], list[float]]:
    """Each frame's FFV1 encode and mux alone on this thread with the recorder's settings (or `config`'s):
    wall ms and CPU ms of the whole process (the encoder's slice threads included)."""
    config = config or RecorderConfig()
    height, width = frames[0].shape
    wall, cpu = [], []
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=30, options=ffv1_options(config))
        stream.width, stream.height, stream.pix_fmt = width, height, PIXEL_FORMATS[frames[0].dtype]
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        stream.codec_context.thread_count = ffv1_threads(config)
        for i, image in enumerate(frames):
            started, cpu_started = time.perf_counter(), time.process_time()
            frame = av.VideoFrame.from_ndarray(image, format=stream.pix_fmt)
            frame.pts = i * 33
            container.mux(stream.encode(frame))
            wall.append((time.perf_counter() - started) * 1e3)
            cpu.append((time.process_time() - cpu_started) * 1e3)
        container.mux(stream.encode(None))
    return wall, cpu


def record(frames: list[np.ndarray], path: Path, config: RecorderConfig | None = None) -> tuple[list, float]:
    """Hand every frame to a RawThermalRecorder unpaced: the hand-off ms per frame and the sustained fps
    (until `close` has muxed every frame)."""
    handoff = []
    started = time.perf_counter()
    with RawThermalRecorder(path, 30, frames[0], config) as recorder:
        for i, image in enumerate(frames):
            t0 = time.perf_counter()
            recorder.record(image, i, i * 33_333_333)
            handoff.append((time.perf_counter() - t0) * 1e3)
    return handoff, len(frames) / (time.perf_counter() - started)


def decode(path: Path) -> tuple[list[float], list[np.ndarray]]:
    """Each frame's replay decode ms, and the frames."""
    times, images = [], []
    with av.open(str(path)) as container:
        iterator = container.decode(container.streams.video[0])
        while True:
            t0 = time.perf_counter()
            frame = next(iterator, None)
            if frame is None:
                break
            images.append(frame.to_ndarray())
            times.append((time.perf_counter() - t0) * 1e3)
    return times, images


def measure(size: tuple[int, int], count: int, workdir: Path) -> dict:
    frames = thermal_frames(size, count)
    encode, _ = encode_ms(frames, workdir / "alone.mkv")
    path = workdir / "raw.mkv"
    handoff, sustained = record(frames, path)
    decode_ms, _ = decode(path)
    bytes_per_frame = path.stat().st_size / count
    return {"size": f"{size[0]}x{size[1]}", "frames": count,
            "record_ms_p50": round(statistics.median(handoff), 3),
            "encode_ms_p50": round(statistics.median(encode), 2),
            "encode_ms_p95": round(float(np.percentile(encode, 95)), 2),
            "sustained_fps": round(sustained, 1), "decode_ms_p50": round(statistics.median(decode_ms), 2),
            "kib_per_frame": round(bytes_per_frame / 1024, 1),
            "ratio": round(size[0] * size[1] * 2 / bytes_per_frame, 2)}


def measure_variants(size: tuple[int, int], count: int, rounds: int, workdir: Path) -> list[dict]:
    """Every variant of VARIANTS at `size`, in `rounds` interleaved rounds of `count` frames each."""
    frames = thermal_frames(size, count)
    results = {name: {"wall": [], "cpu": [], "fps": [], "bytes": 0, "exact": True} for name in VARIANTS}
    for _ in range(rounds):
        for name, (threads, options) in VARIANTS.items():
            config = RecorderConfig(queue_frames=RAW_QUEUE_FRAMES, threads=threads, extra_options=options)
            wall, cpu = encode_ms(frames, workdir / "alone.mkv", config)
            _, sustained = record(frames, workdir / "raw.mkv", config)
            _, decoded = decode(workdir / "raw.mkv")
            result = results[name]
            result["wall"] += wall
            result["cpu"] += cpu
            result["fps"].append(sustained)
            result["bytes"] = (workdir / "raw.mkv").stat().st_size
            result["exact"] &= len(decoded) == count and all(map(np.array_equal, decoded, frames))
    rows = []
    for name, result in results.items():
        rows.append({"variant": name, "size": f"{size[0]}x{size[1]}", "frames": count * rounds,
                     "encode_ms_p50": round(statistics.median(result["wall"]), 2),
                     "encode_ms_p95": round(float(np.percentile(result["wall"], 95)), 2),
                     "cpu_ms_p50": round(statistics.median(result["cpu"]), 2),
                     "sustained_fps": round(statistics.median(result["fps"]), 1),
                     "kib_per_frame": round(result["bytes"] / count / 1024, 1),
                     "bit_exact": result["exact"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", help="WxH,... (default 320x256,640x512,1280x1024; 'none': no size table)")
    parser.add_argument("--variants", metavar="WxH", help="also compare the FFV1 settings at this size")
    parser.add_argument("--variant-frames", type=int, default=20, help="frames per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the variants")
    args = parser.parse_args(argv)
    sizes = [] if args.sizes == "none" else [parse_size(s) for s in args.sizes.split(",")] if args.sizes \
        else SIZES
    load = os.getloadavg()
    machine = f"{machine_line()}, load average {load[0]:.1f} (1 min); 16-bit frames of the synthetic flight"
    print(machine)
    rows, variants = [], []
    with tempfile.TemporaryDirectory() as workdir:
        if sizes:
            print(" | ".join(("size", "record ms", "encode p50/p95 ms", "sustained fps", "decode ms",
                              "KiB/frame", "ratio")))
        for size in sizes:
            row = measure(size, args.frames, Path(workdir))
            rows.append(row)
            print(" | ".join(str(v) for v in (
                row["size"], row["record_ms_p50"], f"{row['encode_ms_p50']} / {row['encode_ms_p95']}",
                row["sustained_fps"], row["decode_ms_p50"], row["kib_per_frame"], row["ratio"])))
        if args.variants:
            print(f"FFV1 settings at {args.variants}, {args.rounds} interleaved rounds of "
                  f"{args.variant_frames} frames (encode: wall ms per frame on its own; cpu: all threads)")
            print(" | ".join(("variant", "encode p50/p95 ms", "cpu ms", "sustained fps", "KiB/frame",
                              "bit-exact")))
            variants = measure_variants(parse_size(args.variants), args.variant_frames, args.rounds,
                                        Path(workdir))
            for row in variants:
                print(" | ".join(str(v) for v in (
                    row["variant"], f"{row['encode_ms_p50']} / {row['encode_ms_p95']}", row["cpu_ms_p50"],
                    row["sustained_fps"], row["kib_per_frame"], row["bit_exact"])))
        print(f"load average after: {os.getloadavg()[0]:.1f} (1 min)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine,
                                               "load_average_1min": [round(load[0], 2),
                                                                     round(os.getloadavg()[0], 2)],
                                               "rows": rows, "variants": variants}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
