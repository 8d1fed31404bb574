"""Soak: one long `skyfuse run` while the resident memory of every stage process is sampled.

A stage that leaks (a cache without bound, frames kept by a counter, a growing log) shows as RSS that keeps
rising after the first minutes; a healthy one is flat once its pools and arenas have grown. Reported per
stage: RSS after the warm-up minute, at the end, the largest, and the change from the first to the last
sampled quarter (medians, so one sample taken mid-allocation does not decide it). Plus the recording's
frame count and rate, and the run's drops.

    python -m benchmarks.soak --seconds 3600 --json out/bench/soak.json [-- extra skyfuse run flags]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine_line

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
WARM_UP_S = 60.0


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return kib / 1024 if kib is not None else None


def stage_name(pid: int) -> str | None:
    """`capture.visible`, `fuse`, `sink` from a stage process's command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return None
    if "pipeline" not in argv or len(argv) < argv.index("pipeline") + 2:
        return None
    name = argv[argv.index("pipeline") + 1]
    return f"{name}.{argv[argv.index('--stream') + 1]}" if name == "capture" else name


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def summarise(samples: list[tuple[float, float]]) -> dict:
    """RSS figures of one stage from (seconds since start, MiB) samples."""
    settled = [mib for t, mib in samples if t >= WARM_UP_S] or [mib for _, mib in samples]
    quarter = max(1, len(settled) // 4)
    first, last = statistics.median(settled[:quarter]), statistics.median(settled[-quarter:])
    return {"after_warm_up_mib": round(settled[0], 1), "end_mib": round(settled[-1], 1),
            "max_mib": round(max(settled), 1), "first_quarter_mib": round(first, 1),
            "last_quarter_mib": round(last, 1), "change_pct": round(100 * (last - first) / first, 2),
            "samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="length of the run")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("run_args", nargs="*", help="more `skyfuse run` flags (after --)")
    args = parser.parse_args()
    machine = machine_line()
    print(machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="skyfuse-soak-") as tmp:
        output = Path(tmp) / "fused.mp4"
        argv = [sys.executable, "-m", "pipeline", "run", "--config", str(DEMO), "--frames",
                str(int(args.seconds * 30)), "--output", str(output), "--stats",
                str(Path(tmp) / "stats.json"), *args.run_args]
        # The stages log a progress line a second to the run's stderr: a pipe read only at the end would
        # fill after some minutes and block every stage, so the log goes to a file.
        log_path = Path(tmp) / "run.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        started, samples = time.monotonic(), {}
        deadline = args.seconds * 1.2 + 120  # a run that stops recording must not hold the benchmark forever
        while process.poll() is None:
            if time.monotonic() - started > deadline:
                process.terminate()
                process.wait()
                raise SystemExit(f"skyfuse run still going after {deadline:.0f} s:\n"
                                 f"{log_path.read_text()[-2000:]}")
            for pid in children(process.pid):
                name, mib = stage_name(pid), rss_mib(pid)
                if name and mib is not None:
                    samples.setdefault(name, []).append((time.monotonic() - started, mib))
            time.sleep(args.every)
        stderr = log_path.read_text()
        if process.returncode != 0:
            raise SystemExit(f"skyfuse run failed (exit {process.returncode}):\n{stderr[-2000:]}")
        stats = json.loads((Path(tmp) / "stats.json").read_text())
    rows = {name: summarise(values) for name, values in samples.items()}
    print(f"\n{machine}\n{args.seconds:g} s run: recorded {stats['frames_recorded']} frames at "
          f"{stats['stages']['sink']['fps']} fps, drops {stats['drops_total']}")
    header = (f"{'stage':<18}{'after 1 min':>12}{'end':>8}{'max':>8}{'1st quarter':>13}{'last quarter':>14}"
              f"{'change':>9}")
    print(header)
    for name, row in rows.items():
        print(f"{name:<18}{row['after_warm_up_mib']:>12.1f}{row['end_mib']:>8.1f}{row['max_mib']:>8.1f}"
              f"{row['first_quarter_mib']:>13.1f}{row['last_quarter_mib']:>14.1f}{row['change_pct']:>8.2f}%")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine, "seconds": args.seconds, "run_args": args.run_args,
                  "frames_recorded": stats["frames_recorded"], "fps": stats["stages"]["sink"]["fps"],
                  "drops": stats["drops_total"], "stages": rows}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
