"""Fuzz and fault benchmark: hostile traffic against real stage processes, and stages killed mid-run.

1. Fuzz: `--messages` messages (default 100,000) into a sink and into a fuse stage, each started alone on
   ipc endpoints the way a remote peer would reach it. One message in `--good-every` is a valid frame (for
   the fuse stage: a valid visible and thermal pair); the rest are random mutations of valid messages:
   random bytes for the header or a buffer, one header field replaced by a random JSON value (wrong types,
   huge, negative, non-finite, deeply nested, 5,000-digit numbers), random metadata, images of another
   size or format, truncated or extended buffers, extra parts, and now and then one part of 4 MB (over
   the per-part limit the announced frame size sets). Reported: whether the stage survived, how many
   messages it counted as dropped (every hostile one must be), how many valid frames it recorded or
   fused (all must be), whether the recording plays, and the stage's peak RSS (VmHWM).
2. Kill -9: a lossless `skyfuse run` on the synthetic flight; once frames are recorded, one stage gets
   SIGKILL. Reported: the launcher's exit code and how long it took to stop everything, whether the
   recording plays and how many frames it holds, and that no stage process was left behind.

    python -m benchmarks.faults --json out/bench/faults.json [--messages 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from benchmarks.machine import machine_line
from pipeline.frame import EndOfStream, Frame
from pipeline.recorder import read_video
from pipeline.sidecar import read_sidecar
from pipeline.wire import BLOCK, Receiver, encode

PERIOD_NS = 33_333_333
SIZES = {"visible": (120, 96), "thermal": (80, 64), "fused": (80, 64)}  # (W, H) each stream announces
SMALL = "visible_size=480x270,thermal_size=320x256,people=10,vehicles=4"
OVERSIZED = 4_000_000  # bytes of one part: over the per-part limit of a stage that knows its frame size


def image_of(stream: str, rng: np.random.Generator) -> np.ndarray:
    width, height = SIZES[stream]
    shape = (height, width) if stream == "thermal" else (height, width, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def valid(stream: str, seq: int, rng: np.random.Generator) -> list[bytes]:
    frame = Frame(stream, seq, 10**10 + seq * PERIOD_NS, image_of(stream, rng),
                  stamps={"capture": time.time_ns()}, meta={"fps": 30.0})
    return [bytes(part) for part in encode(frame)]


def random_json(rng: np.random.Generator, depth: int = 0):
    kind = int(rng.integers(0, 9 if depth < 3 else 6))
    items = range(int(rng.integers(0, 4)))
    return [lambda: int(rng.integers(-2**62, 2**62)),
            lambda: float(rng.normal() * 10.0 ** rng.integers(-30, 300)),
            lambda: "x" * int(rng.integers(0, 3000)), lambda: None, lambda: bool(rng.integers(0, 2)),
            lambda: -1, lambda: [random_json(rng, depth + 1) for _ in items],
            lambda: {str(rng.integers(0, 9)): random_json(rng, depth + 1) for _ in items},
            lambda: "x"][kind]()


def mutated(message: list[bytes], rng: np.random.Generator) -> list[bytes]:
    """A hostile variant of a valid message: one of the mutation kinds in the module docstring."""
    header, buffers = json.loads(message[0]), message[1:]
    kind = int(rng.integers(0, 10))
    if kind == 0:
        return [rng.bytes(int(rng.integers(0, 400))), *buffers]
    if kind == 1:
        return [message[0], *(rng.bytes(len(b) + int(rng.integers(-8, 8))) for b in buffers)]
    if kind == 2:
        header[str(rng.choice(list(header)))] = random_json(rng)
    elif kind == 3:
        header["meta"] = {str(rng.choice(["fps", "drops", "thermal", "engine", "link", "stalled_s", "x"])):
                          random_json(rng)}
    elif kind == 4:
        return [b"[" * int(rng.integers(1000, 80_000)), *buffers]
    elif kind == 5:
        return [message[0].replace(b'"seq": ', b'"seq": ' + b"9" * int(rng.integers(20, 6000)), 1), *buffers]
    elif kind == 6:
        for image in header.get("images", []):
            image["shape"] = [int(rng.integers(-5, 5000)) for _ in range(int(rng.integers(0, 4)))]
    elif kind == 7:
        return [message[0], *buffers, rng.bytes(int(rng.integers(0, 4000)))]
    elif kind == 8:
        return [message[0], bytes(OVERSIZED)] if rng.random() < 0.05 else [message[0]]
    else:
        header["capture_ns"] = int(rng.choice([0, 2**62, -5, 10**18])) + int(rng.integers(0, 1000))
    return [json.dumps(header).encode(), *buffers]


def stage(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stderr=subprocess.PIPE, text=True)


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def dealer(endpoint: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.SNDHWM, 1000)
    socket.connect(endpoint)
    return socket


def wait_for(condition, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def fuzz_sink(workdir: Path, messages: int, good_every: int) -> dict:
    rng, endpoint, output = np.random.default_rng(1), f"ipc://{workdir}/sink", workdir / "sink.mp4"
    sink = stage("sink", "--input", endpoint, "--output", str(output), "--stats", str(workdir / "sink.json"),
                 "--mode", "lossless", "--progress", "0")
    sender, good, started = dealer(endpoint), 0, time.monotonic()
    for i in range(messages):
        if i % good_every == 0:
            sender.send_multipart(valid("fused", good, rng))
            good += 1
        else:
            sender.send_multipart(mutated(valid("fused", good, rng), rng))
    sidecar = output.with_name(output.name + ".frames.jsonl")
    wait_for(lambda: len(read_sidecar(sidecar)) >= good)  # all taken: every valid frame is recorded
    peak = peak_rss_mib(sink.pid)  # the high-water mark, read before the process ends
    sender.send_multipart([bytes(p) for p in encode(EndOfStream("fused", {"stats": {}, "complete": True}))])
    code = sink.wait(600)
    stats = json.loads((workdir / "sink.json").read_text())
    frames = read_video(output).frames
    return {"stage": "sink", "messages": messages, "hostile": messages - good, "valid": good,
            "exit_code": code, "traceback": "Traceback" in sink.stderr.read(),
            "counted_drops": sum(stats["drops"].values()), "recorded": stats["frames_recorded"],
            "still_valid_mutations": stats["frames_recorded"] - good, "oversized": None,
            "peers_dropped": stats["stages"]["sink"].get("peers_dropped"),
            "playable_frames": frames,
            "peak_rss_mib": round(peak, 1), "seconds": round(time.monotonic() - started, 1)}


def fuzz_fuse(workdir: Path, messages: int, good_every: int) -> dict:
    rng = np.random.default_rng(2)
    ends = {name: f"ipc://{workdir}/{name}" for name in ("visible", "thermal", "fused")}
    output = Receiver(ends["fused"], stream="fused", policy=BLOCK, queue_size=10_000, high_water_mark=10_000)
    fuse = stage("fuse", "--visible-in", ends["visible"], "--thermal-in", ends["thermal"], "--output",
                 ends["fused"], "--mode", "lossless", "--engine", "blend", "--warm-up", "120x96,80x64")
    senders = {stream: dealer(ends[stream]) for stream in ("visible", "thermal")}
    fused, good, oversized, started, end = 0, 0, 0, time.monotonic(), None
    for i in range(messages):
        stream = ("visible", "thermal")[i % 2]
        if i % good_every < 2:  # a valid pair: one visible and one thermal frame
            senders[stream].send_multipart(valid(stream, good, rng))
            good += stream == "thermal"
        else:
            message = mutated(valid(stream, good, rng), rng)
            oversized += len(message[-1]) == OVERSIZED
            senders[stream].send_multipart(message)
        while (message := output.recv(0)) is not None:
            fused += isinstance(message, Frame)
    deadline = time.monotonic() + 300
    while fused < good and time.monotonic() < deadline:  # all taken: every valid pair is fused
        fused += isinstance(output.recv(200), Frame)
    peak = peak_rss_mib(fuse.pid)
    for stream, sender in senders.items():
        sender.send_multipart([bytes(p) for p in encode(EndOfStream(stream))])
    deadline = time.monotonic() + 120
    while end is None and time.monotonic() < deadline:
        message = output.recv(200)
        fused += isinstance(message, Frame)
        end = message if isinstance(message, EndOfStream) else None
    code = fuse.wait(60)
    summary = end.meta.get("stats", {}).get("fuse", {}) if end else {}
    # A mutation that is still a valid thermal frame is paired or left unused like any other: counted there.
    unused = summary.get("pairing", {}).get("thermal_unused", 0)
    return {"stage": "fuse", "messages": messages, "hostile": messages - 2 * good, "valid": good,
            "exit_code": code, "traceback": "Traceback" in fuse.stderr.read(),
            "counted_drops": sum(summary.get("drops", {}).values()), "recorded": fused,
            "still_valid_mutations": fused - good + unused, "oversized": oversized,
            "peers_dropped": summary.get("peers_dropped"), "playable_frames": None,
            "peak_rss_mib": round(peak, 1), "seconds": round(time.monotonic() - started, 1)}


def kill_each_stage(workdir: Path) -> list[dict]:
    rows = []
    for victim in ("capture.visible", "capture.thermal", "fuse", "sink"):
        output = workdir / f"kill-{victim}" / "fused.mkv"
        run = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--visible", f"synthetic:{SMALL}",
                                "--thermal", f"synthetic:{SMALL}", "--frames", "3000", "--mode", "lossless",
                                "--pace", "native", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sidecar = output.with_name(output.name + ".frames.jsonl")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 30:
            time.sleep(0.1)
        pids = {_stage_of(pid): pid for pid in _children(run.pid)}
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        run.wait(120)
        stopped_s = time.monotonic() - killed
        time.sleep(0.5)
        left = [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists() and _running(pid)]
        try:
            frames = read_video(output).frames
        except Exception as exc:  # an unplayable recording is the finding, reported as such
            frames = f"unplayable: {exc}"
        rows.append({"killed": victim, "exit_code": run.returncode, "stopped_after_s": round(stopped_s, 1),
                     "recording_frames": frames, "stages_left_running": left})
    return rows


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _stage_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    name = argv[argv.index("pipeline") + 1]
    return f"capture.{argv[argv.index('--stream') + 1]}" if name == "capture" else name


def _running(pid: int) -> bool:
    return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="fuzzed messages per stage")
    parser.add_argument("--good-every", type=int, default=10, help="one valid message (pair) in this many")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    machine = machine_line()
    print(machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="skyfuse-faults-") as tmp:
        workdir = Path(tmp)
        fuzz = [fuzz_sink(workdir, args.messages, args.good_every),
                fuzz_fuse(workdir, args.messages, args.good_every)]
        kills = kill_each_stage(workdir)
    print(f"\n{machine}")
    print(f"{'stage':<7}{'messages':>10}{'hostile':>9}{'counted':>9}{'still valid':>12}{'oversized':>10}"
          f"{'peers dropped':>14}{'valid':>7}{'kept':>6}{'plays':>7}{'exit':>6}{'peak RSS MiB':>14}{'s':>7}")
    for r in fuzz:
        plays = "-" if r["playable_frames"] is None else r["playable_frames"]
        oversized = "-" if r["oversized"] is None else r["oversized"]
        print(f"{r['stage']:<7}{r['messages']:>10}{r['hostile']:>9}{r['counted_drops']:>9}"
              f"{r['still_valid_mutations']:>12}{oversized:>10}{r['peers_dropped']!s:>14}{r['valid']:>7}"
              f"{r['recorded']:>6}{plays:>7}{r['exit_code']:>6}{r['peak_rss_mib']:>14.1f}{r['seconds']:>7}")
    print(f"\n{'killed':<18}{'exit':>6}{'stopped after s':>17}{'recording frames':>18}  left running")
    for r in kills:
        print(f"{r['killed']:<18}{r['exit_code']:>6}{r['stopped_after_s']:>17}{str(r['recording_frames']):>18}"
              f"  {r['stages_left_running'] or 'none'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "fuzz": fuzz, "kill": kills}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
