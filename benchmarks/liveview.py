"""Does watching the live view slow the recording? `skyfuse run` on the demo configuration with 0, 32 and 200
MJPEG viewers on loopback.

Each row is one `python -m pipeline run --config configs/demo.yaml --live-view PORT --frames 300`. The
viewers are asyncio clients in this process (one thread): each opens `/stream.mjpg` as soon as the port
listens and reads it to the end; one that is refused (503, over the live view's connection cap) waits the
Retry-After it was given and asks again, as a well-behaved client does. Columns: viewers asked for, those
that were sent frames, 503 answers, the median MJPEG frame rate a served viewer got while frames came,
frames recorded, the recorder's fps and the pipeline's drops. The viewers share this machine's cores with
the pipeline.

    python -m benchmarks.liveview [--viewers 0,32,200] [--frames 300] [--json out/bench/liveview.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.machine import machine_line
from pipeline.liveview import BOUNDARY

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
MARK = f"--{BOUNDARY}\r\n".encode()


@dataclass
class Viewer:
    parts: int = 0  # JPEG parts it received
    first: float | None = None  # when its first part came (monotonic s)
    last: float = 0.0  # when its last part came
    refused: int = 0  # 503 answers

    def fps(self) -> float | None:
        """Parts per second while parts came (the stream opens before the pipeline records)."""
        if self.parts < 2 or self.last <= self.first:
            return None
        return (self.parts - 1) / (self.last - self.first)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def watch(port: int, viewer: Viewer) -> None:
    """Read the stream until the run ends, asking again after a refusal or before the port listens."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)  # the sink is not listening yet (or any more)
            continue
        try:
            writer.write(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if head.split(b" ", 2)[1] == b"503":
                viewer.refused += 1
                retry = next(line for line in head.split(b"\r\n") if line.startswith(b"Retry-After:"))
                await asyncio.sleep(int(retry.removeprefix(b"Retry-After:")))
                continue
            tail = b""
            while chunk := await reader.read(65536):
                if marks := (tail + chunk).count(MARK):
                    viewer.parts += marks
                    viewer.last = time.monotonic()
                    viewer.first = viewer.first or viewer.last
                tail = chunk[-(len(MARK) - 1):]  # a mark split across two reads is counted once
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def run(viewers: int, frames: int, workdir: Path) -> dict:
    port = free_port()
    output = workdir / f"{viewers}-viewers" / "fused.mp4"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "run", "--config", str(DEMO), "--live-view", str(port),
        "--frames", str(frames), "--output", str(output), "--stats", str(output.with_name("stats.json")),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    clients = [Viewer() for _ in range(viewers)]
    tasks = [asyncio.create_task(watch(port, client)) for client in clients]
    _, stderr = await proc.communicate()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if proc.returncode != 0:
        return {"viewers": viewers, "error": stderr.decode().strip().splitlines()[-1:]}
    stats = json.loads(output.with_name("stats.json").read_text())
    rates = [c.fps() for c in clients if c.fps() is not None]
    return {"viewers": viewers, "served": sum(c.parts > 0 for c in clients),
            "refused": sum(c.refused for c in clients),
            "viewer_fps": round(statistics.median(rates), 1) if rates else None,
            "frames": stats["frames_recorded"], "fps": stats["stages"]["sink"]["fps"],
            "drops": stats["drops_total"]}


HEADER = f"{'viewers':>8}{'served':>8}{'503s':>7}{'view fps':>10}{'recorded':>10}{'fps':>7}{'drops':>7}"


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['viewers']:>8}  failed: {r['error']}"
    viewer_fps = f"{r['viewer_fps']:>10.1f}" if r["viewer_fps"] is not None else f"{'-':>10}"
    return (f"{r['viewers']:>8}{r['served']:>8}{r['refused']:>7}{viewer_fps}{r['frames']:>10}"
            f"{r['fps']:>7.1f}{r['drops']:>7}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", default="0,32,200", help="viewer counts, one run each")
    parser.add_argument("--frames", type=int, default=300, help="frames per run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyfuse-bench-") as tmp:
        for viewers in (int(v) for v in args.viewers.split(",")):
            rows.append(asyncio.run(run(viewers, args.frames, Path(tmp))))
            print(f"  {viewers} viewers measured", flush=True)
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(_row(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
