"""Engine benchmark (issue 8): latency p50/p99 and throughput per backend, network, frame size and batch.

Two timings per configuration:
- network: the backend alone on float32 (B, 1, H, W) tensors (ONNX Runtime / PyTorch / TensorRT calls;
  for torch-cuda on tensors uploaded to the device before timing, synchronised);
- engine: host frames in -> fused frames out (engine.fuse on uint8 BGR + thermal: colour split, padding,
  copies, network, colour merge), per frame.
And the data path of the fuse stage, from a raw visible frame (`--visible-size`, default 1280x720) and a
thermal frame of the benchmarked size to the fused frame (networks other than the reference):
- host pre-warp: Rig.warp_visible per frame on the CPU, then engine.fuse (every result downloaded);
- fuse_unwarped: engine.fuse_unwarped(raw visible, thermal, homographies, extras=False): on torch-cuda the
  pre-warp runs on the device, so one upload per input frame and one download per fused frame; other
  backends pre-warp on the host as above (their figure shows the cost of the interface, nothing more).
Also GMAC per frame (torch.utils.flop_counter on the meta device) and, on GPUs, the fraction of the
device's peak fp16 tensor FLOP rate and memory bandwidth (activation traffic estimated as every layer
output written once and read once, plus the weights). UMF-CMGR's MRRN + DIFN (the paper's registration and
fusion networks, without the CPSTN pseudo-infrared generator) is timed with the same backend at batch 1 as
the reference for the speed ratio. Weights are untrained: timings do not depend on them. Each row names the
precision the backend really computes in: the graph's for onnxruntime and tensorrt, fp32 for torch, and for
torch-cuda fp16 autocast on a GPU (fp32 with --device cpu), with its CUDA graphs.

    .venv/bin/python -m benchmarks.engines --json out/bench/engines.json
    .venv/bin/python -m benchmarks.engines --backends torch-cuda --sizes 320x256,640x512,1280x1024 \\
        --batches 1,4,16 --json out/bench/engines-gpu.json
    .venv/bin/python -m benchmarks.engines --backends torch-cuda --device cpu --sizes 320x256 --batches 1 \\
        --no-reference   # the torch-cuda data path on the CPU: checks the benchmark, not the GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from core.rig import Rig
from core.sizes import parse_size
from engines.learned import LearnedEngine
from engines.models import load_network, network_geometry

REFERENCE = "umf-cmgr (MRRN+DIFN)"
# Dense fp16 tensor-core peak (FLOP/s) and memory bandwidth (B/s), from NVIDIA's data sheets (SXM parts).
GPU_PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12),
             "L4": (121e12, 0.3e12), "Orin": (85e12, 0.2e12)}


class MrrnDifn(torch.nn.Module):
    """UMF-CMGR without its CPSTN: MRRN registers the thermal frame to the visible luminance, DIFN fuses."""

    def __init__(self):
        super().__init__()
        full = load_network("umf-cmgr")
        self.mrrn, self.difn = full.mrrn, full.difn
        self.size_multiple = network_geometry(full).size_multiple

    def forward(self, visible, thermal):
        from engines.networks.warp import warp

        flow = self.mrrn(thermal, visible)
        registered = warp(thermal, flow)
        return self.difn(registered, visible), registered, flow


def build_network(name: str):
    return MrrnDifn().eval() if name == REFERENCE else load_network(name)


def cost_per_frame(network, height: int, width: int) -> tuple[float, float]:
    """(GMAC, estimated memory traffic in MB) of one frame, counted on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta")
    traffic = [sum(p.numel() * p.element_size() for p in meta.parameters())]

    def count(_module, _inputs, output):
        for o in output if isinstance(output, tuple) else (output,):
            if isinstance(o, torch.Tensor):
                traffic.append(2 * o.numel() * o.element_size())

    hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    inputs = [torch.rand(1, 1, height, width, device="meta") for _ in range(2)]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            meta(*inputs)
        flops = counter.get_total_flops()
    except Exception as exc:  # an operator without a meta kernel: no cost figure rather than no benchmark
        print(f"  (GMAC not counted: {type(exc).__name__}: {exc})", file=sys.stderr)
        return float("nan"), float("nan")
    finally:
        for hook in hooks:
            hook.remove()
    return flops / 2e9, sum(traffic) / 1e6


def make_engine(backend: str, name: str, network, sizes, batches, threads: int, precision: str,
                device: str = "cuda"):
    """(engine, run(visible, thermal) for the network alone, synchronise(), to_inputs(host arrays) -> what
    run takes: device tensors for torch-cuda, the arrays themselves for the others)."""
    geometry = network_geometry(network)
    if backend == "onnxruntime":
        import tempfile

        from engines.export import export_network
        from engines.onnxruntime_backend import OnnxRuntimeBackend

        path = Path(tempfile.mkdtemp()) / "model.onnx"
        export_network(network, path, model_name=name, precision=precision)
        runner = OnnxRuntimeBackend(path, threads=threads)
        return (LearnedEngine(runner, geometry, model=name, precision=precision), runner.run, lambda: None,
                list)
    if backend == "torch":
        from engines.torch_backend import TorchBackend

        runner = TorchBackend(network, threads)
        return LearnedEngine(runner, geometry, model=name), runner.run, lambda: None, list
    if backend == "torch-cuda":
        import torch

        from engines.torch_cuda import TorchCudaEngine

        engine = TorchCudaEngine(network, geometry, model=name, device=device)

        def to_inputs(arrays):
            return [torch.from_numpy(a).to(engine.device) for a in arrays]

        synchronise = torch.cuda.synchronize if engine.device.type == "cuda" else lambda: None
        return engine, engine.run_device, synchronise, to_inputs
    if backend == "tensorrt":
        from engines.tensorrt_runtime import create_tensorrt_engine

        (h_min, w_min), (h_max, w_max) = min(sizes), max(sizes)
        batch = f"{min(batches)},{max(batches)},{max(batches)}"
        engine = create_tensorrt_engine(name, precision=precision, batch=batch, size=f"{w_max}x{h_max}",
                                        min_size=f"{w_min}x{h_min}", max_size=f"{w_max}x{h_max}")
        return engine, engine.backend.run, lambda: None, list
    raise SystemExit(f"unknown backend {backend!r}")


def time_calls(call, synchronise, warmup: int, repeats: int, seconds: float) -> list[float]:
    for _ in range(warmup):
        call()
    synchronise()
    times, started = [], time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - started < seconds):
        t0 = time.perf_counter()
        call()
        synchronise()
        times.append(time.perf_counter() - t0)
    return times


def frames(rng, batch: int, height: int, width: int):
    visible = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return visible, rng.integers(0, 256, (batch, height, width), dtype=np.uint8)


def bench_rig(visible_size: tuple[int, int], size: tuple[int, int]) -> Rig:
    """A rig with a typical residual between the cameras: 2 degrees of roll, a shift, some perspective."""
    angle = np.deg2rad(2.0)
    roll = np.array([[np.cos(angle), -np.sin(angle), 8.0], [np.sin(angle), np.cos(angle), -5.0],
                     [2e-6, 1e-6, 1.0]])
    return Rig(visible_size, size, roll @ Rig.identity(visible_size, size).visible_to_thermal, method="bench")


def data_path_times(engine, rig: Rig, raw, thermal, args) -> tuple[list[float], list[float]]:
    """Seconds per call, raw visible + thermal in -> fused out: (host pre-warp + fuse, fuse_unwarped)."""
    size = (thermal.shape[2], thermal.shape[1])
    homographies = np.stack([rig.homography_for(frame.shape, size) for frame in raw])

    def host_prewarp():
        return engine.fuse(np.stack([rig.warp_visible(frame, size) for frame in raw]), thermal)

    def unwarped():
        return engine.fuse_unwarped(raw, thermal, homographies, extras=False)

    return tuple(time_calls(call, lambda: None, 1, args.repeats, args.seconds)
                 for call in (host_prewarp, unwarped))


def gpu_peaks() -> tuple[str, tuple[float, float] | None]:
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            return name, next((v for k, v in GPU_PEAKS.items() if k in name), None)
    except ImportError:
        pass
    return "", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="onnxruntime",
                        help="comma list: onnxruntime,torch,torch-cuda,tensorrt")
    parser.add_argument("--networks", default="skyfuse-rt", help="comma list of network names")
    parser.add_argument("--sizes", default="320x256,640x512", help="comma list of WxH")
    parser.add_argument("--batches", default="1,4", help="comma list of batch sizes")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per configuration (at most)")
    parser.add_argument("--seconds", type=float, default=8.0, help="time budget per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for onnxruntime/torch")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="graph precision for onnxruntime and tensorrt (default fp32)")
    parser.add_argument("--no-reference", action="store_true", help=f"skip the {REFERENCE} reference")
    parser.add_argument("--visible-size", default="1280x720",
                        help="raw visible WxH for the data-path timings (default 1280x720)")
    parser.add_argument("--device", default="cuda", help="torch device of the torch-cuda backend (default "
                        "cuda; cpu runs its data path on the CPU)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sizes = [parse_size(s)[::-1] for s in args.sizes.split(",")]  # (H, W), as the frames are indexed
    visible_w, visible_h = parse_size(args.visible_size)
    batches = [int(b) for b in args.batches.split(",")]
    networks = args.networks.split(",") + ([] if args.no_reference else [REFERENCE])
    device_name, peaks = gpu_peaks()
    rng = np.random.default_rng(0)
    rows = []
    for backend in args.backends.split(","):
        for name in networks:
            network = build_network(name)
            try:
                engine, run, synchronise, to_inputs = make_engine(backend, name, network, sizes, batches,
                                                                  args.threads, args.precision, args.device)
            except Exception as exc:  # a backend missing here: say so, go on with the others
                print(f"{backend} {name}: not available ({exc})", file=sys.stderr)
                continue
            geometry = network_geometry(network)
            for height, width in sizes:
                gmac, traffic_mb = cost_per_frame(network, *geometry.padded(height, width))
                for batch in batches if name != REFERENCE else [1]:
                    ph, pw = geometry.padded(height, width)
                    tensors = to_inputs([rng.random((batch, 1, ph, pw), dtype=np.float32) for _ in range(2)])
                    net_times = time_calls(lambda t=tensors, f=run: f(*t), synchronise, args.warmup,
                                           args.repeats, args.seconds)
                    pair = frames(rng, batch, height, width)
                    eng_times = time_calls(lambda p=pair, e=engine: e.fuse(*p), lambda: None, 1, args.repeats,
                                           args.seconds)
                    p50, p99 = np.percentile(net_times, 50), np.percentile(net_times, 99)
                    row = {"backend": backend, "network": name, "width": width, "height": height,
                           "batch": batch, "precision": engine.precision,
                           "network_p50_ms": 1e3 * p50, "network_p99_ms": 1e3 * p99,
                           "frames_per_s": batch / p50, "network_ms_per_frame": 1e3 * p50 / batch,
                           "engine_ms_per_frame": 1e3 * np.percentile(eng_times, 50) / batch,
                           "engine_frames_per_s": batch / np.percentile(eng_times, 50),
                           "gmac_per_frame": gmac, "repeats": len(net_times)}
                    if name != REFERENCE:
                        raw = rng.integers(0, 256, (batch, visible_h, visible_w, 3), dtype=np.uint8)
                        rig = bench_rig((visible_w, visible_h), (width, height))
                        host, unwarped = data_path_times(engine, rig, raw, pair[1], args)
                        row.update({"visible_size": f"{visible_w}x{visible_h}",
                                    "host_prewarp_ms_per_frame": 1e3 * np.percentile(host, 50) / batch,
                                    "unwarped_ms_per_frame": 1e3 * np.percentile(unwarped, 50) / batch,
                                    "unwarped_frames_per_s": batch / np.percentile(unwarped, 50)})
                    if backend == "torch-cuda":
                        row.update({"device": str(engine.device), "cuda_graphs": engine.cuda_graphs})
                    if backend in ("torch-cuda", "tensorrt") and peaks:
                        row["peak_flop_fraction"] = 2e9 * gmac * row["frames_per_s"] / peaks[0]
                        row["peak_bandwidth_fraction"] = 1e6 * traffic_mb * row["frames_per_s"] / peaks[1]
                    rows.append(row)
                    write_json(args.json, rows, device_name, args.threads)  # kept should a later one fail
                    print(f"{backend:11s} {name:20s} {width}x{height} b{batch:<3d} network p50 "
                          f"{row['network_p50_ms']:9.2f} ms ({row['network_ms_per_frame']:8.2f} ms/frame), "
                          f"engine {row['engine_ms_per_frame']:8.2f} ms/frame, {gmac:.2f} GMAC"
                          + (f", raw {row['visible_size']} in: host pre-warp "
                             f"{row['host_prewarp_ms_per_frame']:.2f} / fuse_unwarped "
                             f"{row['unwarped_ms_per_frame']:.2f} ms/frame" if "visible_size" in row else ""),
                          flush=True)
            engine.close()
    for row in rows:  # speed ratio against the reference, same backend and size, batch 1 per frame
        ref = next((r for r in rows if r["network"] == REFERENCE and r["backend"] == row["backend"]
                    and (r["width"], r["height"]) == (row["width"], row["height"])), None)
        if ref:
            row["speedup_vs_reference"] = ref["network_ms_per_frame"] / row["network_ms_per_frame"]
    print_table(rows)
    write_json(args.json, rows, device_name, args.threads)
    return 0


def write_json(path: str | None, rows: list[dict], device_name: str, threads: int) -> None:
    """The rows so far and the machine's versions to `path` (nothing without one)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "gpu": device_name, "threads": threads, "cpu_count": os.cpu_count()}
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    Path(path).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def print_table(rows: list[dict]) -> None:
    print("\n| backend | network | size | batch | network p50 / p99 ms | frames/s | ms/frame (network) "
          "| ms/frame (host in->out) | ms/frame raw visible in: host pre-warp + fuse / fuse_unwarped "
          "| frames/s (fuse_unwarped) | GMAC/frame | x faster than UMF-CMGR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['speedup_vs_reference']:.1f}" if "speedup_vs_reference" in r else ""
        ratio = "" if r["network"] == REFERENCE else ratio
        path = (f"{r['host_prewarp_ms_per_frame']:.2f} / {r['unwarped_ms_per_frame']:.2f} "
                f"({r['visible_size']}) | {r['unwarped_frames_per_s']:.1f}") if "visible_size" in r else " | "
        device = f" ({r['device']})" if "device" in r else ""
        graphs = ", CUDA graphs" if r.get("cuda_graphs") else ""
        print(f"| {r['backend']}{device} {r['precision']}{graphs} | {r['network']} | "
              f"{r['width']}x{r['height']} | {r['batch']} | "
              f"{r['network_p50_ms']:.1f} / {r['network_p99_ms']:.1f} | {r['frames_per_s']:.1f} | "
              f"{r['network_ms_per_frame']:.1f} | {r['engine_ms_per_frame']:.1f} | {path} | "
              f"{r['gmac_per_frame']:.2f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
