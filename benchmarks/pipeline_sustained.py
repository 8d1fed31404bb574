"""Sustained end-to-end runs of the whole multi-process pipeline, as users run it.

Each row is one `skyfuse run` on the synthetic flight (sources replayed at their native 30 fps): frames
recorded out of those the visible camera produced, achieved fps at the recorder, steady-state drops and
drops before the run was ready (live sources only), capture-to-record latency percentiles, start-up time
(every stage ready) and time to the first recorded frame from the command's start, the engine's time per
frame inside the pipeline beside the same engine's time alone in this process (same frame sizes, same
options: the ratio is what sharing the cores with capture, colour conversion and encoding costs it), and
the CPU use of all stage processes (in cores).

Suites:
- `cpu` (default): the demo configuration from an empty model cache (cold: the first-use ONNX export
  happens inside the run) and again warm; per `--engines` engine, lossless and live at 1280x720 + 640x512.
- `gpu`: `engine auto` on whatever the machine has: the demo configuration cold and warm, 640x512 live,
  and the HD cases 1920x1080 + 640x512 and 1920x1080 + 1280x1024, lossless.
With ../shared/data present, one more row replays the real WiSARD sequences (visible 1920x1080 JPEG,
thermal 640x512) as fast as they are taken.

    python -m benchmarks.pipeline_sustained --json out/bench/pipeline.json [--seconds 10]
                                           [--suite cpu|gpu|all] [--engines blend,pyramid]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
WISARD = ROOT.parent / "shared" / "data" / "wisard" / "pairs.csv"
DEMO = ROOT / "configs" / "demo.yaml"
FPS = 30


@dataclass
class Case:
    name: str
    args: list[str]
    seconds: float  # of video the visible camera produces (None: a file's length)
    cold: bool = False  # from an empty model cache
    engine: str | None = None  # engine name, for the stand-alone timing
    engine_options: dict = field(default_factory=dict)
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None  # visible, thermal (W, H)


def synthetic(visible: str, thermal: str) -> list[str]:
    return ["--visible", f"synthetic:visible_size={visible},thermal_size={thermal}",
            "--thermal", f"synthetic:visible_size={visible},thermal_size={thermal}"]


def size(text: str) -> tuple[int, int]:
    width, height = text.split("x")
    return int(width), int(height)


def demo_cases(seconds: float) -> list[Case]:
    frames = ["--frames", str(int(seconds * FPS))]
    demo = {"engine": "auto", "sizes": ((1280, 720), (320, 256))}
    return [Case("demo cold cache", ["--config", str(DEMO), *frames], seconds, cold=True, **demo),
            Case("demo warm cache", ["--config", str(DEMO), *frames], seconds, **demo)]


def cpu_cases(seconds: float, engines: list[str]) -> list[Case]:
    frames = ["--frames", str(int(seconds * FPS))]
    cases = demo_cases(seconds)
    for engine in engines:
        for mode in ("lossless", "live"):
            cases.append(Case(f"{engine} {mode}", [*synthetic("1280x720", "640x512"), *frames, "--engine",
                                                   engine, "--mode", mode, "--pace", "native"], seconds,
                              engine=engine, sizes=((1280, 720), (640, 512))))
    return cases


def gpu_cases(seconds: float) -> list[Case]:
    frames = ["--frames", str(int(seconds * FPS))]
    cases = demo_cases(seconds)
    cases.append(Case("auto 640x512 live", [*synthetic("1280x720", "640x512"), *frames, "--engine", "auto",
                                            "--mode", "live"], seconds, engine="auto",
                      sizes=((1280, 720), (640, 512))))
    for visible, thermal in (("1920x1080", "640x512"), ("1920x1080", "1280x1024")):
        cases.append(Case(f"auto {visible}+{thermal} lossless",
                          [*synthetic(visible, thermal), *frames, "--engine", "auto", "--mode", "lossless",
                           "--pace", "native"], seconds, engine="auto", sizes=(size(visible), size(thermal))))
    return cases


def run_case(case: Case, workdir: Path) -> dict:
    output = workdir / f"{case.name.replace(' ', '_').replace('+', '_')}" / "fused.mp4"
    env = dict(os.environ)
    if case.cold:
        env["SKYFUSE_CACHE"] = tempfile.mkdtemp(prefix="cold-cache-", dir=workdir)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, started_wall = time.monotonic(), time.time_ns()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", *case.args, "--output", str(output),
                             "--stats", str(output.with_name("stats.json"))],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        print(f"{case.name}: skyfuse run failed (exit {result.returncode}):\n{result.stderr[-2000:]}",
              file=sys.stderr)
        return {"case": case.name, "error": result.stderr.strip().splitlines()[-1:]}
    stats = json.loads(output.with_name("stats.json").read_text())
    sink = stats["stages"]["sink"]
    e2e = sink["latency"].get("end_to_end", {})
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    produced = stats["stages"].get("capture.visible", {}).get("frames")
    produced = round(case.seconds * FPS) if case.seconds else produced
    engine_ms = stats["stages"].get("fuse", {}).get("latency", {}).get("engine_per_frame", {}).get("p50_ms")
    return {"case": case.name, "frames": stats["frames_recorded"], "of": produced,
            "recorded_pct": round(100 * stats["frames_recorded"] / produced, 1) if produced else None,
            "fps": sink["fps"], "drops": stats["drops_total"], "warmup_drops": stats.get("drops_warmup", 0),
            "p50_ms": e2e.get("p50_ms"), "p95_ms": e2e.get("p95_ms"), "p99_ms": e2e.get("p99_ms"),
            "ready_s": (stats.get("startup") or {}).get("ready_s"),
            "first_frame_s": _first_frame_s(output, started_wall),
            "engine": stats["stages"].get("fuse", {}).get("engine"),
            "engine_ms": engine_ms, "engine_alone_ms": _engine_alone_ms(case),
            "cpu_cores": round(cpu_s / max(1e-9, wall), 2), "wall_s": round(wall, 1)}


def _first_frame_s(output: Path, started_wall_ns: int) -> float | None:
    """Seconds from the command's start to the first frame reaching the recorder."""
    from pipeline.sidecar import read_sidecar

    records = read_sidecar(output.with_name(output.name + ".frames.jsonl"))
    if not records or records[0].get("capture_wall_ns") is None:
        return None
    first = records[0]
    recorded_ns = first["capture_wall_ns"] + first["latency_ms"].get("end_to_end", 0) * 1e6
    return round((recorded_ns - started_wall_ns) / 1e9, 2)


def _engine_alone_ms(case: Case, calls: int = 40) -> float | None:
    """Median engine time per frame in this process, at the case's frame sizes and the fuse stage's data
    path (raw visible frame + homography), with nothing else running."""
    if case.engine is None or case.sizes is None:
        return None
    from engines.registry import create_engine

    (vw, vh), (tw, th) = case.sizes
    engine = create_engine(case.engine, **case.engine_options)
    rng = np.random.default_rng(0)
    visible = rng.integers(0, 256, (1, vh, vw, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (1, th, tw), dtype=np.uint8)
    homography = np.diag([tw / vw, th / vh, 1.0])[None]
    try:
        for _ in range(3):
            engine.fuse_unwarped(visible, thermal, homography, extras=False)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            engine.fuse_unwarped(visible, thermal, homography, extras=False)
            times.append(time.perf_counter() - started)
    finally:
        engine.close()
    return round(1e3 * statistics.median(times), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each synthetic run")
    parser.add_argument("--suite", choices=("cpu", "gpu", "all"), default="cpu")
    parser.add_argument("--engines", default="blend,pyramid",
                        help="comma-separated engine names for the cpu suite's per-engine rows")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    machine = machine_line()
    print(machine, flush=True)
    cases = []
    if args.suite in ("cpu", "all"):
        cases += cpu_cases(args.seconds, args.engines.split(","))
    if args.suite in ("gpu", "all"):
        cases += [c for c in gpu_cases(args.seconds) if c.name not in {case.name for case in cases}]
    if WISARD.exists() and args.suite != "gpu":
        cases.append(Case("wisard pyramid max-rate", [
            "--visible", f"{WISARD}#visible", "--thermal", f"{WISARD}#thermal", "--engine", "pyramid",
            "--mode", "lossless", "--pace", "max", "--allow-unequal-length"], 0))
    rows = []
    print(HEADER)
    with tempfile.TemporaryDirectory(prefix="skyfuse-bench-") as tmp:
        for case in cases:
            rows.append(run_case(case, Path(tmp)))
            print(_row(rows[-1]), flush=True)
    print()
    print(machine)
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(_row(row))
    for row in rows:
        if row.get("engine"):
            print(f"{row['case']}: {row['engine']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


HEADER = (f"{'case':<36}{'frames':>9}{'fps':>6}{'drops':>6}{'warmup':>7}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'ready s':>8}{'1st s':>7}{'eng ms':>8}{'alone':>7}{'ratio':>6}{'cores':>6}")


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['case']:<36}failed: {r['error']}"
    def num(value, width, digits=1):
        return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    ratio = r["engine_ms"] / r["engine_alone_ms"] if r["engine_ms"] and r["engine_alone_ms"] else None
    frames = f"{r['frames']}/{r['of']}" if r["of"] else str(r["frames"])
    return (f"{r['case']:<36}{frames:>9}{r['fps']:>6.1f}{r['drops']:>6}{r['warmup_drops']:>7}"
            f"{num(r['p50_ms'], 8)}{num(r['p99_ms'], 8)}{num(r['ready_s'], 8)}{num(r['first_frame_s'], 7)}"
            f"{num(r['engine_ms'], 8)}{num(r['engine_alone_ms'], 7)}{num(ratio, 6, 2)}{r['cpu_cores']:>6.2f}")


if __name__ == "__main__":
    sys.exit(main())
