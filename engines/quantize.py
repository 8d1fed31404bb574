"""int8 in the graph (strong typing, GPU.md): explicit Q/DQ nodes, calibrated on representative frames.

TensorRT 11 has no INT8 builder flag and no calibrator: the quantization scales live in the ONNX as
QuantizeLinear/DequantizeLinear pairs. ONNX Runtime's static quantizer writes them (QDQ format) with what
TensorRT requires: symmetric int8 (zero point 0) for activations and weights, per-channel weight scales.
Only convolutions and matrix products are quantized; the flow path (the flow head and everything after
it, engines/precision.py) stays float32. Calibration frames come from the synthetic flight (the visible
frame pre-warped into the thermal frame by the flight's true rig, as the fuse stage does), plus any pairs
the caller adds (`skyfuse export --int8-data DIR`). The result is checked on ONNX Runtime against the fp32
graph with fusion metrics the caller gives (`skyfuse export`: Qabf and SSIM, within 2 %): engines sit
below training (README, "Layers") and import none of its metrics.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from core.errors import SkyfuseError
from core.warp import warp

from .learned import INPUT_NAMES, OUTPUT_NAMES
from .models import META_PRECISION
from .precision import flow_path_nodes

Pair = tuple[np.ndarray, np.ndarray]  # visible, thermal: (1, 1, H, W) float32 in [0, 1]
CALIBRATION_SIZE = (256, 320)  # H, W of the calibration frames (rounded up to the network's multiple)
# (visible, thermal, fused) (H, W) uint8 -> {metric name: value}, higher is better
Score = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


def synthetic_pairs(count: int, height: int, width: int, seed: int = 0) -> list[Pair]:
    """`count` pre-warped (visible luminance, thermal) pairs of the synthetic flight at H×W."""
    from pipeline.synthetic import FlightConfig, SyntheticFlight

    flight = SyntheticFlight(FlightConfig(seed=seed, visible_size=(2 * width, 2 * height),
                                          thermal_size=(width, height)))
    homography = flight.rig().visible_to_thermal
    pairs = []
    for i in range(count):
        index = i * 15  # half a second apart: different ground, movers and noise
        visible = warp(flight.visible_frame(index), homography, (width, height))
        luma = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY)
        pairs.append((luma[None, None].astype(np.float32) / 255.0,
                      flight.thermal_frame(index)[None, None].astype(np.float32) / 255.0))
    return pairs


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, pairs: list[Pair]) -> onnx.ModelProto:
    """Q/DQ int8 copy of an fp32 graph, calibrated on `pairs`; checked for TensorRT like every export."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .onnx_check import require_tensorrt_compatible

    if not pairs:
        raise SkyfuseError("int8 calibration needs at least one frame pair")

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.items = iter(pairs)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else dict(zip(INPUT_NAMES, item))

    model = onnx.load(str(fp32_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    keep_fp32 = sorted(flow_path_nodes(model.graph, producers, ("flow",)))  # also names unnamed nodes
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        quantize_static(str(named), str(int8_path), Frames(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv", "ConvTranspose", "MatMul", "Gemm"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_fp32, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    quantized = onnx.load(str(int8_path))
    for prop in quantized.metadata_props:
        if prop.key == META_PRECISION:
            prop.value = "int8"
    require_tensorrt_compatible(quantized, f"{int8_path} (int8)")
    onnx.save(quantized, str(int8_path))
    return quantized


@dataclass
class MetricReport:
    scores: dict[str, tuple[float, float]]  # metric -> (fp32, int8) means
    allowed: float = 0.02  # relative

    @staticmethod
    def _change(pair: tuple[float, float]) -> float:
        return abs(pair[1] - pair[0]) / max(abs(pair[0]), 1e-9)

    @property
    def passed(self) -> bool:
        return all(self._change(pair) <= self.allowed for pair in self.scores.values())

    def __str__(self) -> str:
        changes = [f"{name} {a:.4f} -> {b:.4f} ({100 * self._change((a, b)):.2f} %)"
                   for name, (a, b) in self.scores.items()]
        return f"{', '.join(changes)}; limit {100 * self.allowed:.0f} %"


def check_int8_metrics(fp32_path: str | Path, int8_path: str | Path, pairs: list[Pair], score: Score
                       ) -> MetricReport:
    """Mean `score` of the fused frames of both graphs on ONNX Runtime (CPU) over `pairs`."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (fp32_path, int8_path)]
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for visible, thermal in pairs:
        v8, t8 = ((x[0, 0] * 255.0 + 0.5).astype(np.uint8) for x in (visible, thermal))
        for i, session in enumerate(sessions):
            fused = session.run([OUTPUT_NAMES[0]], dict(zip(INPUT_NAMES, (visible, thermal))))[0]
            f8 = np.clip(fused[0, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            for name, value in score(v8, t8, f8).items():
                scores.setdefault(name, ([], []))[i].append(value)
    return MetricReport({name: (float(np.mean(a)), float(np.mean(b))) for name, (a, b) in scores.items()})
