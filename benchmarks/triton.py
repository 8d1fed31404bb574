"""What Triton adds per batch: the `triton` engine's round trip against the same graph on ONNX Runtime here.

skyfuse-rt (shipped weights) is exported, written as a model repository and served by a local Triton
(benchmarks/triton_server.py: pytriton's tritonserver, Python backend running the graph on ONNX Runtime,
needs .venv-triton from `make test-triton`). Per batch size, medians over the timed calls of:
- onnxruntime: the backend alone in this process (the `onnxruntime` engine's network call);
- triton, shared memory system / none: the client's round trip (`TritonBackend.run` on the same tensors),
  with the server's own figures for each request from its statistics: queue (the dynamic batcher's
  wait), compute (input, model.py with ONNX Runtime, output); added = round trip - compute, per request.

    python -m benchmarks.triton [--size 640x512] [--batches 1,4] [--repeats 20] [--json out/bench/triton.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_line
from benchmarks.triton_server import LocalTriton
from engines.export import export_network, smooth_random
from engines.models import load_network
from engines.onnxruntime_backend import OnnxRuntimeBackend
from engines.triton_backend import TritonBackend
from engines.triton_repo import write_model_repository

MODEL = "skyfuse-rt"


def _median_ms(call, inputs, repeats: int) -> float:
    call(*inputs)  # warm-up: first-run allocations
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(*inputs)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3


def _triton_ms(remote: TritonBackend, inputs, repeats: int) -> dict[str, float]:
    """Medians per request of the round trip and of the server's queue and compute times for that same
    request (statistics read before and after each call, outside the timing: the machine is shared, so
    only figures of one request can be subtracted)."""
    remote.run(*inputs)  # warm-up: region growth, first-run allocations
    rows = []
    for _ in range(repeats):
        before = _statistics(remote)
        started = time.perf_counter()
        remote.run(*inputs)
        trip = time.perf_counter() - started
        after = _statistics(remote)
        queue, compute = (sum(getattr(after, f).ns - getattr(before, f).ns for f in fields) / 1e9
                          for fields in (("queue",), ("compute_input", "compute_infer", "compute_output")))
        rows.append((trip, queue, compute, trip - compute))
    return dict(zip(("ms", "queue_ms", "compute_ms", "added_ms"),
                    (float(v) * 1e3 for v in np.median(rows, axis=0))))


def _statistics(remote: TritonBackend):
    return remote.client.get_inference_statistics(MODEL).model_stats[0].inference_stats


def run(size: tuple[int, int], batches: list[int], repeats: int) -> list[dict]:
    width, height = size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / f"{MODEL}.onnx"
        export_network(load_network(MODEL), graph, model_name=MODEL)
        write_model_repository(graph, Path(tmp) / "repo")
        local = OnnxRuntimeBackend(graph)
        rng = np.random.default_rng(0)
        with LocalTriton(Path(tmp) / "repo") as server:
            remotes = {memory: TritonBackend(server.url, MODEL, shared_memory=memory)
                       for memory in ("system", "none")}
            for batch in batches:
                inputs = tuple(smooth_random(rng, batch, height, width) for _ in range(2))
                row = {"batch": batch, "size": f"{width}x{height}",
                       "onnxruntime_ms": _median_ms(local.run, inputs, repeats)}
                for memory, remote in remotes.items():
                    row.update({f"{memory}_{k}": v for k, v in _triton_ms(remote, inputs, repeats).items()})
                rows.append(row)
            for remote in remotes.values():
                remote.close()
        local.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x512", help="WxH of the network input")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    machine = machine_line()
    print(machine)
    rows = run(size, [int(b) for b in args.batches.split(",")], args.repeats)
    print("| batch | size | onnxruntime here | triton shm: round trip | queue | compute | added "
          "| triton gRPC: round trip | queue | compute | added |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["batch"], r["size"], f"{r['onnxruntime_ms']:.1f}"]
        for memory in ("system", "none"):
            cells += [f"{r[f'{memory}_{k}']:.1f}" for k in ("ms", "queue_ms", "compute_ms", "added_ms")]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
