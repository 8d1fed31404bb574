"""`skyfuse export`: a network to one ONNX file that ONNX Runtime and TensorRT (10.x and 11.x) both take.

Inputs "visible", "thermal" and outputs "fused", "registered", "flow", all (B, C, H, W) float32 with dynamic
batch and, where the network allows it, dynamic height and width. The precision is decided here, in the
graph (strong typing, GPU.md): fp32, or fp16 made by engines/precision.py and checked against fp32 on
ONNX Runtime. Every export passes the TensorRT compatibility check (engines/onnx_check.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnx

from pipeline.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES, Geometry
from .models import load_network, network_geometry, write_metadata
from .onnx_check import MIN_OPSET, opset_range, require_tensorrt_compatible

PRECISIONS = ("fp32", "fp16", "int8")


def sample_size(geometry: Geometry) -> tuple[int, int]:
    """The H×W traced at export: the fixed size, else a small non-square size on the network's grid."""
    if geometry.fixed_size:
        return geometry.fixed_size
    m = geometry.size_multiple
    height = -(-64 // m) * m
    return height, height + m


def export_network(network, path: str | Path, *, model_name: str, precision: str = "fp32",
                   opset: int = MIN_OPSET) -> onnx.ModelProto:
    """Export `network` (eval mode) to `path` and return the saved graph; SkyfuseError when it cannot."""
    import torch

    if precision not in PRECISIONS:
        raise SkyfuseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    _require_implemented(precision)
    low, high = opset_range()
    if not low <= opset <= high:
        raise SkyfuseError(f"opset must be in {low}..{high} for TensorRT, got {opset}")
    geometry = network_geometry(network)
    height, width = sample_size(geometry)
    generator = torch.Generator().manual_seed(0)
    sample = tuple(torch.rand(1, 1, height, width, generator=generator) for _ in INPUT_NAMES)
    spatial = {} if geometry.fixed_size else {2: "height", 3: "width"}
    axes = {name: {0: "batch", **spatial} for name in INPUT_NAMES + OUTPUT_NAMES}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript-based exporter: no extra dependency (onnxscript) and exact dynamic axes for the
        # plain conv/grid_sample graphs these networks are.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network.eval(), sample, buffer, dynamo=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=axes, do_constant_folding=True)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as exc:
            raise SkyfuseError(f"{model_name}: ONNX export failed: {exc}") from None
    model = onnx.load_from_string(buffer.getvalue())
    write_metadata(model, model_name, "fp32", geometry)
    if precision == "fp16":
        from .precision import convert_fp16

        model = convert_fp16(model)
    onnx.checker.check_model(model, full_check=True)
    require_tensorrt_compatible(model, f"{model_name} ({precision})")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))  # weights inside the one file (these networks are far below 2 GB)
    return model


def _require_implemented(precision: str) -> None:
    if precision == "int8":
        raise SkyfuseError("int8 export (Q/DQ nodes from calibration frames) is not implemented yet; "
                           "use fp16 or fp32")


def cache_dir() -> Path:
    """Where exported graphs and TensorRT engines are cached: $SKYFUSE_CACHE, else ~/.cache/skyfuse."""
    return Path(os.environ.get("SKYFUSE_CACHE") or Path.home() / ".cache" / "skyfuse")


def cached_export(model: str, weights: str | None = None, precision: str = "fp32",
                  overrides: dict | None = None) -> Path:
    """The ONNX file of `model` for the engines, exported once per (model, weights, options, versions)."""
    import torch

    weights_id = _file_digest(weights) if weights else "untrained"
    key = json.dumps([model, weights_id, precision, overrides or {}, torch.__version__, onnx.__version__],
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "onnx" / f"{model}-{precision}-{digest}.onnx"
    if not path.exists():
        network = load_network(model, weights, overrides)
        tmp = path.with_suffix(".tmp")
        export_network(network, tmp, model_name=model, precision=precision)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise SkyfuseError(f"cannot read weights {path}: {exc.strerror}") from None


def verify_export(network, path: str | Path, sizes: list[tuple[int, int]], batch: int = 2) -> float:
    """Largest |ONNX Runtime - PyTorch| over all outputs on random inputs at `sizes` (fp32 graphs)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    for height, width in sizes:
        inputs = [rng.random((batch, 1, height, width), dtype=np.float32) for _ in INPUT_NAMES]
        with torch.inference_mode():
            expected = network(*(torch.from_numpy(x) for x in inputs))
        got = session.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, inputs)))
        worst = max(worst, *(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
    return worst


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyfuse export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="network name, e.g. skyfuse-rt")
    parser.add_argument("--weights", help="trained weights (.pt) for the network")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="tensor types in the graph (fp16: mixed precision, float32 I/O)")
    parser.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET})")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    args = parser.parse_args(argv)
    _require_implemented(args.precision)

    network = load_network(args.model, args.weights)
    fp32_path = Path(args.output) if args.precision == "fp32" else Path(args.output).with_suffix(".fp32.onnx")
    export_network(network, fp32_path, model_name=args.model, opset=args.opset)
    geometry = network_geometry(network)
    height, width = sample_size(geometry)
    sizes = [(height, width)] if geometry.fixed_size else [(height, width), (2 * height, height + width)]
    error = verify_export(network, fp32_path, sizes)
    print(f"export: {args.model} fp32 -> {fp32_path} (ONNX Runtime vs PyTorch max |error| {error:.2e})")
    if error > 1e-4:
        raise SkyfuseError(f"exported graph differs from PyTorch by {error:.2e} (> 1e-4)")
    if args.precision == "fp16":
        from .precision import check_fp16_parity, convert_fp16_file

        convert_fp16_file(fp32_path, args.output)
        report = check_fp16_parity(fp32_path, args.output, sizes)
        print(f"export: fp16 -> {args.output} ({report})")
        if not report.passed:
            raise SkyfuseError(f"fp16 graph is too far from fp32: {report}")
    return 0
