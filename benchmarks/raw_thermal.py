"""What keeping the raw thermal frames costs: FFV1 per frame at thermal camera sizes, and the capture loop.

For each size, 16-bit frames of the synthetic flight (centikelvin) go through `RawThermalRecorder` as the
capture stage hands them over: `record` is what the capture's own thread spends per frame (the hand-off),
`encode` the FFV1 encode and mux of one frame on the encoding thread (timed alone, frame by frame),
`sustained fps` the most frames per second the recording keeps up with (unpaced, until `close` has muxed
every frame), `decode` a frame's replay cost, and the file's bytes per frame against the raw 2 bytes a
pixel. The sgemm rate is printed beside the times: shared machines vary 5x day to day.

    python -m benchmarks.raw_thermal --json out/bench/raw_thermal.json [--frames 60] [--sizes 640x512]
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

from benchmarks.machine import sgemm_gflops
from core.sizes import parse_size
from pipeline.synthetic import FlightConfig, SyntheticFlight
from pipeline.thermal_recorder import FFV1_OPTIONS, PIXEL_FORMATS, TIME_BASE, RawThermalRecorder

SIZES = ((320, 256), (640, 512), (1280, 1024))


def thermal_frames(size: tuple[int, int], count: int) -> list[np.ndarray]:
    config = FlightConfig(seed=1, thermal_size=size, thermal_bits=16, visible_size=(320, 180))
    flight = SyntheticFlight(config)
    return [flight.thermal_frame(i) for i in range(count)]


def encode_ms(frames: list[np.ndarray], path: Path) -> list[float]:
    """Each frame's FFV1 encode and mux, alone on this thread, with the recorder's settings."""
    height, width = frames[0].shape
    times = []
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=30, options=FFV1_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = width, height, PIXEL_FORMATS[frames[0].dtype]
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        for i, image in enumerate(frames):
            started = time.perf_counter()
            frame = av.VideoFrame.from_ndarray(image, format=stream.pix_fmt)
            frame.pts = i * 33
            container.mux(stream.encode(frame))
            times.append((time.perf_counter() - started) * 1e3)
        container.mux(stream.encode(None))
    return times


def measure(size: tuple[int, int], count: int, workdir: Path) -> dict:
    frames = thermal_frames(size, count)
    encode = encode_ms(frames, workdir / "alone.mkv")
    path = workdir / "raw.mkv"
    record = []
    started = time.perf_counter()
    with RawThermalRecorder(path, 30, frames[0]) as recorder:
        for i, image in enumerate(frames):
            t0 = time.perf_counter()
            recorder.record(image, i, i * 33_333_333)
            record.append((time.perf_counter() - t0) * 1e3)
    sustained = count / (time.perf_counter() - started)
    decode = []
    with av.open(str(path)) as container:
        iterator = container.decode(container.streams.video[0])
        while True:
            t0 = time.perf_counter()
            frame = next(iterator, None)
            if frame is None:
                break
            frame.to_ndarray()
            decode.append((time.perf_counter() - t0) * 1e3)
    bytes_per_frame = path.stat().st_size / count
    return {"size": f"{size[0]}x{size[1]}", "frames": count,
            "record_ms_p50": round(statistics.median(record), 3),
            "encode_ms_p50": round(statistics.median(encode), 2),
            "encode_ms_p95": round(float(np.percentile(encode, 95)), 2),
            "sustained_fps": round(sustained, 1), "decode_ms_p50": round(statistics.median(decode), 2),
            "kib_per_frame": round(bytes_per_frame / 1024, 1),
            "ratio": round(size[0] * size[1] * 2 / bytes_per_frame, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", help="WxH,... (default 320x256,640x512,1280x1024)")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else SIZES
    gflops = sgemm_gflops()
    print(f"machine: {os.cpu_count()} cores, sgemm {gflops:.0f} GFLOP/s (NumPy float32, 1024^3); "
          "16-bit frames of the synthetic flight")
    header = ("size", "record ms", "encode p50/p95 ms", "sustained fps", "decode ms", "KiB/frame", "ratio")
    print(" | ".join(header))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            row = measure(size, args.frames, Path(workdir))
            rows.append(row)
            print(" | ".join(str(v) for v in (
                row["size"], row["record_ms_p50"], f"{row['encode_ms_p50']} / {row['encode_ms_p95']}",
                row["sustained_fps"], row["decode_ms_p50"], row["kib_per_frame"], row["ratio"])))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"sgemm_gflops": round(gflops, 1), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
