"""Sustained end-to-end runs of the whole multi-process pipeline, per engine and mode.

Each row is one `skyfuse run` on the synthetic flight (visible 1280x720, thermal 640x512, both 30 fps,
sources replayed at their native rate): achieved fps at the recorder, drops, capture-to-record latency
percentiles, and CPU use of all stage processes (in cores). With ../shared/data present, one more row
replays the real WiSARD sequences (visible 1920x1080 JPEG, thermal 640x512) as fast as they are taken.

    python benchmarks/pipeline_sustained.py --json out/bench/pipeline.json [--seconds 10]
                                            [--engines blend,pyramid]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WISARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "wisard" / "pairs.csv"


def run_case(name: str, args: list[str], workdir: Path) -> dict:
    output = workdir / f"{name.replace(' ', '_')}.mp4"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", *args, "--output", str(output)],
                            capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{name}: skyfuse run failed:\n{result.stderr[-2000:]}")
    stats = json.loads(output.with_name("stats.json").read_text())
    sink = stats["stages"]["sink"]
    e2e = sink["latency"].get("end_to_end", {})
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    recorded_s = max(1e-9, wall)
    return {"case": name, "frames": stats["frames_recorded"], "fps": sink["fps"],
            "drops": stats["drops_total"], "p50_ms": e2e.get("p50_ms"), "p95_ms": e2e.get("p95_ms"),
            "p99_ms": e2e.get("p99_ms"), "cpu_cores": round(cpu_s / recorded_s, 2), "wall_s": round(wall, 1),
            "engine_ms": stats["stages"].get("fuse", {}).get("latency", {}).get("engine_per_frame", {})
            .get("p50_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each synthetic run")
    parser.add_argument("--engines", default="blend,pyramid", help="comma-separated engine names")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    frames = str(int(args.seconds * 30))
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyfuse-bench-") as tmp:
        workdir = Path(tmp)
        for engine in args.engines.split(","):
            for mode in ("lossless", "live"):
                rows.append(run_case(f"{engine} {mode}", [
                    "--visible", "synthetic", "--thermal", "synthetic", "--frames", frames,
                    "--engine", engine, "--mode", mode, "--pace", "native"], workdir))
                print(_row(rows[-1]), flush=True)
        if WISARD.exists():
            rows.append(run_case("wisard pyramid max-rate", [
                "--visible", f"{WISARD}#visible", "--thermal", f"{WISARD}#thermal", "--engine", "pyramid",
                "--mode", "lossless", "--pace", "max", "--allow-unequal-length"], workdir))
            print(_row(rows[-1]), flush=True)
    print()
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(_row(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


HEADER = (f"{'case':<26}{'frames':>7}{'fps':>7}{'drops':>7}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
          f"{'engine ms':>10}{'CPU cores':>10}")


def _row(r: dict) -> str:
    def ms(value):
        return f"{value:8.1f}" if value is not None else f"{'-':>8}"
    engine = f"{r['engine_ms']:10.1f}" if r["engine_ms"] is not None else f"{'-':>10}"
    return (f"{r['case']:<26}{r['frames']:>7}{r['fps']:>7.1f}{r['drops']:>7}{ms(r['p50_ms'])}"
            f"{ms(r['p95_ms'])}"
            f"{ms(r['p99_ms'])}{engine}{r['cpu_cores']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
