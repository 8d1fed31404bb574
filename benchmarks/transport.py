"""ZeroMQ hop cost between two processes, beside the physical limits measured in the same run.

For each frame kind: latency of one hop (send call -> frame decoded in the receiving process, wall
clock, same machine) at 30 fps, and unpaced throughput; the same for an in-process memcpy and for a
shared-memory handoff between two processes (copy into shared memory + wake the reader through a pipe);
and a tcp hop encrypted with link keys (CURVE), to show what encryption costs.

    python -m benchmarks.transport --json out/bench/transport.json [--frames 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from pipeline.frame import Frame
from pipeline.keys import create_keys, link_keys
from pipeline.wire import BLOCK, Receiver, Sender, close_transport

KINDS = {"640x512 bgr8": (512, 640, 3), "640x512 gray16": (512, 640), "1920x1080 bgr8": (1080, 1920, 3)}
DTYPES = {"640x512 gray16": np.uint16}


def _image(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    dtype = DTYPES.get(kind, np.uint8)
    return rng.integers(0, np.iinfo(dtype).max, KINDS[kind], dtype=dtype)


def _stream(kind: str) -> str:
    """The stream that carries frames of `kind` under the frame protocol."""
    return "thermal" if kind.endswith("gray16") else "visible"


def _zmq_receiver(endpoint: str, stream: str, count: int, results, keys: str | None) -> None:
    port = Receiver(endpoint, stream=stream, policy=BLOCK, queue_size=count, keys=link_keys(keys))
    latencies = []
    for _ in range(count):
        frame = port.recv(10_000)
        if frame is None:
            break
        latencies.append((time.time_ns() - frame.stamps["sent"]) / 1e6)
    port.close()
    close_transport()
    results.put(latencies)


def zmq_hop(endpoint: str, kind: str, count: int, fps: float | None, keys: str | None = None) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    receiver = ctx.Process(target=_zmq_receiver, args=(endpoint, _stream(kind), count, results, keys))
    receiver.start()
    time.sleep(0.5)
    sender = Sender(endpoint, policy=BLOCK, high_water_mark=8, keys=link_keys(keys))
    image = _image(kind)
    started = time.perf_counter()
    for seq in range(count):
        if fps:
            _sleep_until(started + seq / fps)
        sender.send(Frame(_stream(kind), seq, seq, image))
    latencies = results.get(timeout=120)
    elapsed = time.perf_counter() - started
    receiver.join()
    sender.close()
    return _summary(latencies, count / elapsed, image.nbytes)


def _shm_reader(name: str, nbytes: int, conn, count: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    latencies = []
    for _ in range(count):
        sent_ns = conn.recv()
        latencies.append((time.time_ns() - sent_ns) / 1e6)
    conn.send(latencies)
    shm.close()


def shm_handoff(kind: str, count: int, fps: float | None) -> dict:
    image = _image(kind)
    shm = shared_memory.SharedMemory(create=True, size=image.nbytes)
    target = np.ndarray(image.shape, image.dtype, buffer=shm.buf)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    reader = ctx.Process(target=_shm_reader, args=(shm.name, image.nbytes, child, count))
    reader.start()
    time.sleep(0.5)
    started = time.perf_counter()
    for seq in range(count):
        if fps:
            _sleep_until(started + seq / fps)
        sent = time.time_ns()
        np.copyto(target, image)
        parent.send(sent)
    latencies = parent.recv()
    elapsed = time.perf_counter() - started
    reader.join()
    del target
    shm.close()
    shm.unlink()
    return _summary(latencies, count / elapsed, image.nbytes)


def memcpy(kind: str, count: int) -> dict:
    image = _image(kind)
    target = np.empty_like(image)
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter_ns()
        np.copyto(target, image)
        latencies.append((time.perf_counter_ns() - t0) / 1e6)
    return _summary(latencies, count / (time.perf_counter() - started), image.nbytes)


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _summary(latencies: list[float], fps: float, nbytes: int) -> dict:
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"frames": len(latencies), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
            "fps": round(fps, 1), "gb_per_s": round(fps * nbytes / 1e9, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per measurement")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyfuse-bench-") as tmp:
        keys = str(create_keys(Path(tmp) / "keys"))
        for kind in KINDS:
            ipc = f"ipc://{tmp}/{kind.replace(' ', '_')}"
            measured = {
                "memcpy (in process)": memcpy(kind, args.frames),
                "shared memory @30fps": shm_handoff(kind, args.frames, 30.0),
                "zmq ipc @30fps": zmq_hop(ipc + "_paced", kind, args.frames, 30.0),
                "zmq tcp @30fps": zmq_hop(f"tcp://127.0.0.1:{_free_port()}", kind, args.frames, 30.0),
                "zmq tcp+CURVE @30fps": zmq_hop(f"tcp://127.0.0.1:{_free_port()}", kind, args.frames, 30.0,
                                                keys),
                "shared memory max": shm_handoff(kind, args.frames, None),
                "zmq ipc max": zmq_hop(ipc + "_max", kind, args.frames, None),
            }
            shm = measured["shared memory @30fps"]
            for method, values in measured.items():
                rows.append({"frame": kind, "method": method, **values,
                             "p50_vs_shm": round(values["p50_ms"] / shm["p50_ms"], 2),
                             "p99_vs_shm": round(values["p99_ms"] / shm["p99_ms"], 2)})
    header = (f"{'frame':<16}{'method':<22}{'p50 ms':>8}{'p99 ms':>8}{'fps':>9}{'GB/s':>7}"
              f"{'p50/shm':>9}{'p99/shm':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['frame']:<16}{r['method']:<22}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}{r['fps']:>9.1f}"
              f"{r['gb_per_s']:>7.2f}{r['p50_vs_shm']:>9.2f}{r['p99_vs_shm']:>9.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "python": sys.version.split()[0]}, indent=2))
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
