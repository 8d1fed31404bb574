"""Several drones into one fuse stage: N camera pairs, one engine, batched calls.

For each N in `--links`: N sinks, one fuse stage serving N links (`--link`, `--batch N`, `--max-wait`),
and 2N captures of the synthetic flight (each drone its own seed), all lossless, the cameras at their
native 30 fps on one epoch once the fuse stage has warmed its engine up. Reported per N: the slowest and
the median link's recorded fps, drops summed over the links, the worst link's p99 capture-to-record
latency, the engine's mean batch, and the engine time per frame. The issue's GPU target: N = 16 at
640x512, every link >= 29.5 fps, 0 drops, p99 <= 100 ms.

    python -m benchmarks.drones --links 1,4,16 --engine auto --json out/bench/drones.json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.machine import machine_line
from pipeline.synthetic import FlightConfig, true_rig

FPS = 30


def stage(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, text: str, timeout_s: float = 300) -> None:
    """Read the stage's log until `text` appears (how a stage started by hand says it is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise SystemExit(f"the stage ended before saying {text!r} (exit {process.wait()})")
        if text in line:
            return
    raise SystemExit(f"the stage did not say {text!r} within {timeout_s:g} s")


def run_links(count: int, args: argparse.Namespace, workdir: Path) -> dict:
    folder = workdir / f"n{count}"
    folder.mkdir()
    flight = f"visible_size={args.visible},thermal_size={args.thermal}"
    rig = folder / "rig.json"
    visible_size, thermal_size = (tuple(int(v) for v in s.split("x")) for s in (args.visible, args.thermal))
    true_rig(FlightConfig(visible_size=visible_size, thermal_size=thermal_size)).save(rig)
    ends = {(i, name): f"ipc://{folder}/{name}{i}" for i in range(count) for name in ("v", "t", "o")}
    sinks = [stage("sink", "--input", ends[i, "o"], "--output", str(folder / f"link{i}.mp4"), "--stats",
                   str(folder / f"link{i}.json"), "--mode", "lossless", "--progress", "0")
             for i in range(count)]
    links = [arg for i in range(count) for arg in ("--link", f"drone{i}", "--visible-in", ends[i, "v"],
                                                    "--thermal-in", ends[i, "t"], "--output", ends[i, "o"])]
    fuse = stage("fuse", *links, "--calibration", str(rig), "--engine", args.engine, "--mode", "lossless",
                 "--batch", str(count), "--max-wait", str(args.max_wait),
                 "--warm-up", f"{args.visible},{args.thermal}")
    wait_for_line(fuse, "ready after")
    frames = ["--frames", str(int(args.seconds * FPS))]
    epoch = time.monotonic_ns() + int((3 + 0.2 * count) * 1e9)  # every capture has built its world by then
    captures = {(i, stream): stage("capture", "--source", f"synthetic:{flight},seed={i}", "--stream", stream,
                                   "--output", ends[i, stream[0]], "--mode", "lossless", "--pace", "native",
                                   "--epoch-ns", str(epoch), *(frames if stream == "visible" else []))
                for i in range(count) for stream in ("visible", "thermal")}
    for process in [*sinks, fuse, *captures.values()]:
        drain_log(process)
    for (_, stream), process in captures.items():
        if stream == "visible":
            process.wait()
    for (_, stream), process in captures.items():
        if stream == "thermal":
            process.send_signal(signal.SIGTERM)
    for process in [*sinks, fuse, *captures.values()]:
        process.wait(120)
    reports = [json.loads((folder / f"link{i}.json").read_text()) for i in range(count)]
    fps = [r["stages"]["sink"]["fps"] for r in reports]
    fuse_stats = [r["stages"].get(f"fuse.drone{i}", {}) for i, r in enumerate(reports)]
    return {"links": count, "frames_per_link": int(args.seconds * FPS),
            "recorded_min": min(r["frames_recorded"] for r in reports),
            "fps_min": min(fps), "fps_median": statistics.median(fps),
            "drops": sum(r["drops_total"] for r in reports),
            "p99_ms_max": max(r["stages"]["sink"]["latency"].get("end_to_end", {}).get("p99_ms", 0)
                              for r in reports),
            "mean_batch": statistics.mean(f.get("batching", {}).get("mean_batch", 0) for f in fuse_stats),
            "engine_ms_per_frame": statistics.median(
                f.get("latency", {}).get("engine_per_frame", {}).get("p50_ms", 0) for f in fuse_stats),
            "engine": fuse_stats[0].get("engine")}


def drain_log(process: subprocess.Popen) -> None:
    """Keep reading a stage's log so that a full pipe never blocks it."""
    threading.Thread(target=process.stderr.read, daemon=True).start()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", default="1,4,16", help="numbers of camera pairs, comma-separated")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--seconds", type=float, default=10.0, help="video per drone")
    parser.add_argument("--visible", default="1280x720", help="visible camera size")
    parser.add_argument("--thermal", default="640x512", help="thermal camera size (the fused size)")
    parser.add_argument("--max-wait", type=float, default=0.01, help="seconds a pair waits for a batch")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    machine = machine_line()
    print(machine, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyfuse-drones-") as tmp:
        for count in (int(n) for n in args.links.split(",")):
            rows.append(run_links(count, args, Path(tmp)))
            print(rows[-1], flush=True)
    print(f"\n{machine}\n{'links':>6}{'min fps':>9}{'median fps':>12}{'min frames':>12}{'drops':>7}"
          f"{'worst p99 ms':>14}{'mean batch':>12}{'engine ms/frame':>17}")
    for r in rows:
        print(f"{r['links']:>6}{r['fps_min']:>9.1f}{r['fps_median']:>12.1f}{r['recorded_min']:>12}{r['drops']:>7}"
              f"{r['p99_ms_max']:>14.1f}{r['mean_batch']:>12.2f}{r['engine_ms_per_frame']:>17.2f}")
    if rows:
        print(f"engine: {rows[0]['engine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
