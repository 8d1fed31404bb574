"""`skyfuse export`: a network to one ONNX file that ONNX Runtime and TensorRT (10.x and 11.x) both take,
checked against PyTorch, in fp32, fp16 or int8 (engines/export.py, engines/precision.py,
engines/quantize.py).

The command lives with training because it composes engines with what sits above them: the int8 graph is
judged by the fusion metrics (training/metrics.py: Qabf and SSIM within 2 % of fp32) and may calibrate on a
data folder read by training/data.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from core.errors import SkyfuseError
from engines.export import (
    EXPORTERS,
    PRECISIONS,
    export_network,
    peak_rss_mib,
    verify_export,
    verify_sizes,
)
from engines.models import load_network, model_label, network_geometry, without_registration

from .data import find_pairs, load_pair
from .metrics import qabf, ssim


def fusion_score(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """What an int8 graph must keep within 2 % of fp32: Qabf (edges carried over) and SSIM."""
    return {"Qabf": qabf(visible, thermal, fused), "SSIM": ssim(visible, thermal, fused)}


def data_pairs(root: str, count: int, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `count` pairs under `root`, resized to H×W, as (1, 1, H, W) float32 luminance in [0, 1]."""
    pairs = [load_pair(paths) for paths in find_pairs(root)[:count]]
    if not pairs:
        raise SkyfuseError(f"--int8-data {root} holds no visible/thermal pairs")
    return [tuple(cv2.resize(x, (width, height))[None, None] for x in (pair.visible, pair.thermal))
            for pair in pairs]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="skyfuse export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="network name, e.g. skyfuse-rt")
    parser.add_argument("--weights", help="trained weights (.pt) for the network")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="tensor types in the graph (fp16: mixed precision, float32 I/O)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: 17 torchscript, 18 dynamo)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="auto",
                        help="torchscript (fast), dynamo (torch.export), auto: dynamo for attention networks")
    parser.add_argument("--no-registration", action="store_true",
                        help="export with the network's registration off (frames that arrive registered)")
    parser.add_argument("--output", required=True, help="ONNX file to write")
    parser.add_argument("--int8-data", metavar="DIR",
                        help="int8: also calibrate on these visible/thermal pairs (any layout skyfuse train "
                             "reads, e.g. ../shared/data/roadscene; 8 of them), beside the synthetic flight")
    parser.add_argument("--triton-repo", metavar="DIR",
                        help="also write a Triton model repository: DIR/<model>/1/model.onnx + config.pbtxt")
    parser.add_argument("--triton-max-batch", type=int, default=8,
                        help="the repository's max_batch_size (dynamic batching up to it)")
    args = parser.parse_args(argv)

    network = load_network(args.model, args.weights)
    if args.no_registration:
        network = without_registration(network)
    label = model_label(args.model, not args.no_registration)
    fp32_path = Path(args.output) if args.precision == "fp32" else Path(args.output).with_suffix(".fp32.onnx")
    export_network(network, fp32_path, model_name=label, opset=args.opset, exporter=args.exporter)
    geometry = network_geometry(network)
    error = verify_export(network, fp32_path, verify_sizes(geometry))
    print(f"export: {label} fp32 -> {fp32_path} (ONNX Runtime vs PyTorch max |error| {error:.2e})")
    if error > 1e-4:
        raise SkyfuseError(f"exported graph differs from PyTorch by {error:.2e} (> 1e-4)")
    # Precision is checked on frames of a realistic size: on the tiny export sizes a network that fits a
    # global model (skyfuse-rt's affine map) has only a few regions, and rounding moves it more.
    from engines.quantize import CALIBRATION_SIZE

    size = geometry.fixed_size or geometry.padded(*CALIBRATION_SIZE)
    if args.precision == "fp16":
        from engines.precision import check_fp16_parity, convert_fp16_file

        convert_fp16_file(fp32_path, args.output)
        report = check_fp16_parity(fp32_path, args.output, [size])
    elif args.precision == "int8":
        from engines.quantize import check_int8_metrics, quantize_int8, synthetic_pairs

        extra = data_pairs(args.int8_data, 8, *size) if args.int8_data else []
        quantize_int8(fp32_path, args.output, synthetic_pairs(16, *size) + extra)
        report = check_int8_metrics(fp32_path, args.output, synthetic_pairs(6, *size, seed=1), fusion_score)
    if args.precision != "fp32":
        print(f"export: {args.precision} -> {args.output} ({report})")
        if not report.passed:
            raise SkyfuseError(f"{args.precision} graph is too far from fp32: {report}")
    if args.triton_repo:
        from engines.triton_repo import write_model_repository

        model = write_model_repository(args.output, args.triton_repo, max_batch_size=args.triton_max_batch)
        print(f"export: Triton model repository -> {model} (config.pbtxt, 1/model.onnx)")
    print(f"export: {label} {args.precision} done, peak RSS {peak_rss_mib():.0f} MiB")
    return 0
