"""Precision in the graph (strong typing, GPU.md): an fp32 ONNX graph to mixed fp16, checked against fp32.

TensorRT 11 builds every network strongly typed: the tensor types in the ONNX are the precision. So the
conversion is ours and explicit:
- float32 inputs and outputs stay float32 (the pipeline hands over and expects float32);
- convolutions, matrix products, activations, element-wise arithmetic and data movement run in fp16;
- normalisations, reductions, powers/roots/exponentials and GridSample stay float32, and so does the whole
  flow path: the convolution that predicts the flow and every operation from it to a GridSample sampling
  grid or the "flow" output (flow upsampling, pixel-to-grid scaling). In fp16 a normalised coordinate
  near 1 has a spacing of 2^-11, 0.3 px at 1280 px width; pixel flows of 100 px would round to 0.06 px.
Casts are inserted where an fp16 region meets a float32 one; fp32 weights used in fp16 are stored as fp16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .learned import INPUT_NAMES, OUTPUT_NAMES
from .models import META_PRECISION

FP16_MAX = 65504.0
# op -> positions of the inputs that become fp16 (None: all); ops not listed stay float32.
FP16_INPUTS: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(("Conv", "ConvTranspose", "MatMul", "Gemm", "Relu", "LeakyRelu", "PRelu", "Sigmoid",
                     "Tanh", "HardSigmoid", "HardSwish", "Elu", "Add", "Sub", "Mul", "Div", "Max", "Min",
                     "Abs", "Neg", "Concat", "Clip"), None),
    **dict.fromkeys(("MaxPool", "AveragePool", "Resize", "Slice", "Split", "Transpose", "Reshape",
                     "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Tile", "DepthToSpace",
                     "SpaceToDepth"), (0,)),
    "Pad": (0, 2),
    "Where": (1, 2),
}
# The flow path is walked back from its consumers until one of these produces it.
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
FP16_SUFFIX = "__fp16"


def convert_fp16(model: onnx.ModelProto, keep_fp32_outputs: tuple[str, ...] = ("flow",)) -> onnx.ModelProto:
    """Mixed-precision copy of an fp32 graph (see the module docstring for what stays float32)."""
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = _tensor_types(graph)
    producers = {out: node for node in graph.node for out in node.output}
    protected = flow_path_nodes(graph, producers, keep_fp32_outputs)
    initializers = {t.name: t for t in graph.initializer}

    nodes, fp16_made, casts, new_inits = [], set(), set(), []

    def cast(source: str, target: str, to: int) -> None:
        if target not in casts:
            casts.add(target)
            nodes.append(helper.make_node("Cast", [source], [target], to=to, name=f"{target}/cast"))

    def as_fp16(name: str) -> str:
        target = name + FP16_SUFFIX
        if name in fp16_made:
            return target
        if name in initializers and target not in casts:
            casts.add(target)
            values = numpy_helper.to_array(initializers[name])
            new_inits.append(numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16),
                                                     target))
        else:
            cast(name, target, TensorProto.FLOAT16)
        return target

    def as_fp32(name: str) -> str:
        if name in fp16_made:
            cast(name + FP16_SUFFIX, name, TensorProto.FLOAT)
        return name

    for node in graph.node:
        positions = _fp16_positions(node, types) if node.name not in protected else None
        if positions is None:
            node.input[:] = [as_fp32(name) if name else name for name in node.input]
            nodes.append(node)
            continue
        node.input[:] = [as_fp16(name) if i in positions else as_fp32(name) if name else name
                         for i, name in enumerate(node.input)]
        for i, name in enumerate(node.output):
            if types.get(name) == TensorProto.FLOAT:
                fp16_made.add(name)
                node.output[i] = name + FP16_SUFFIX
        nodes.append(node)
    for output in graph.output:
        as_fp32(output.name)

    used = {name for node in nodes for name in node.input}
    kept_inits = [t for t in graph.initializer if t.name in used] + new_inits
    del graph.node[:], graph.initializer[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept_inits)
    for prop in model.metadata_props:
        if prop.key == META_PRECISION:
            prop.value = "fp16"
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def convert_fp16_file(source: str | Path, target: str | Path) -> onnx.ModelProto:
    """convert_fp16 from file to file, with the checks every exported graph passes."""
    from .onnx_check import require_tensorrt_compatible

    model = convert_fp16(onnx.load(str(source)))
    onnx.checker.check_model(model, full_check=True)
    require_tensorrt_compatible(model, f"{target} (fp16)")
    onnx.save(model, str(target))
    return model


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def _fp16_positions(node: onnx.NodeProto, types: dict[str, int]) -> set[int] | None:
    """Input positions to feed in fp16, or None when the node stays float32."""
    if node.op_type not in FP16_INPUTS or node.domain not in ("", "ai.onnx"):
        return None
    listed = FP16_INPUTS[node.op_type]
    positions = {i for i, name in enumerate(node.input)
                 if name and (listed is None or i in listed)}
    if not positions or any(types.get(node.input[i]) != TensorProto.FLOAT for i in positions):
        return None  # shape arithmetic (int64) or unknown types: leave alone
    if any(types.get(out) != TensorProto.FLOAT for out in node.output if out):
        return None
    return positions


def flow_path_nodes(graph: onnx.GraphProto, producers: dict, outputs: tuple[str, ...]) -> set[str]:
    """Names of the nodes from the last compute op (the flow head, included) to a sampling grid or a
    kept-fp32 output."""
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    stack = [o for o in outputs if o in producers]
    stack += [node.input[1] for node in graph.node if node.op_type == "GridSample"]
    protected, seen = set(), set()
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        protected.add(node.name)
        if node.op_type not in COMPUTE_OPS:  # the flow head itself stays float32, its inputs need not
            stack.extend(i for i in node.input if i)
    return protected


@dataclass
class ParityReport:
    max_gray: float  # largest |fused_fp16 - fused_fp32| in gray levels (0..255)
    mean_gray: float
    flow_max_px: float  # largest flow difference in pixels
    max_allowed: float = 2.0
    mean_allowed: float = 0.5

    @property
    def passed(self) -> bool:
        return self.max_gray <= self.max_allowed and self.mean_gray <= self.mean_allowed

    def __str__(self) -> str:
        return (f"fused vs fp32: max {self.max_gray:.3f}, mean {self.mean_gray:.4f} gray levels "
                f"(limits {self.max_allowed}, {self.mean_allowed}); flow max {self.flow_max_px:.4f} px")


def representative_pair(batch: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image-like inputs (B, 1, H, W) in [0, 1]: smooth shading, edges, texture and warm blobs; the thermal
    frame is a shifted, re-shaded copy, so registration has something to do."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for _ in range(batch):
        period_x, period_y, phase = rng.uniform(20, 60), rng.uniform(20, 60), rng.uniform(0, 6)
        shading = 0.5 + 0.3 * np.sin(xs / period_x + phase) * np.cos(ys / period_y)
        blocks = ((xs // rng.integers(8, 24) + ys // rng.integers(8, 24)) % 2) * 0.15
        visible = shading + blocks + rng.normal(0, 0.03, (height, width))
        shift_x, shift_y = rng.uniform(-4, 4, 2)
        thermal = 0.3 + 0.2 * np.roll(blocks, (int(shift_y), int(shift_x)), axis=(0, 1))
        for _ in range(3):
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 12)
            thermal += 0.5 * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r))
        frames.append((np.clip(visible, 0, 1), np.clip(thermal, 0, 1)))
    vis, ir = (np.stack([f[i] for f in frames])[:, None].astype(np.float32) for i in (0, 1))
    return vis, ir


def check_fp16_parity(fp32_path: str | Path, fp16_path: str | Path, sizes: list[tuple[int, int]],
                      batch: int = 2) -> ParityReport:
    """Run both graphs on ONNX Runtime (CPU) on representative frames and compare the outputs.

    ORT's CPU provider has no fp16 kernels for most operators and runs them in float32 between casts, so
    this measures the rounding of weights and of every fp16 tensor between nodes, not fp16 accumulation
    (TensorRT accumulates fp16 convolutions in float32 too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # ORT 1.32's ORT_ENABLE_ALL (layout) optimisations crash on some fp16 Mul/Transpose graphs (segfault
    # while creating the session); the extended level applies every numerics-relevant fusion.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in (fp32_path, fp16_path)]
    diffs, flow_diff = [], 0.0
    for i, (height, width) in enumerate(sizes):
        feeds = dict(zip(INPUT_NAMES, representative_pair(batch, height, width, seed=i)))
        (f32, _, flow32), (f16, _, flow16) = (s.run(list(OUTPUT_NAMES), feeds) for s in sessions)
        diffs.append(np.abs(f16.astype(np.float32) - f32).ravel() * 255.0)
        flow_diff = max(flow_diff, float(np.abs(flow16 - flow32).max()))
    diff = np.concatenate(diffs)
    return ParityReport(float(diff.max()), float(diff.mean()), flow_diff)
