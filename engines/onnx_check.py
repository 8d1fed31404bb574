"""Will TensorRT take this ONNX graph? Checked on every export and in CPU tests, without TensorRT.

Rules (GPU.md): only operators in TensorRT's supported ONNX operator list (carried as data in
engines/data/tensorrt_onnx_ops.json, from onnx-tensorrt's docs/operators.md, which names its TensorRT
version); an opset that both the oldest (10.x on JetPack 6) and the newest TensorRT parse; no float64
tensors; no output shape that depends on tensor values (shape arithmetic on `Shape` outputs is fine: the
optimisation profiles resolve it).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import onnx
from onnx import TensorProto

from core.errors import SkyfuseError

OPS_FILE = Path(__file__).parent / "data" / "tensorrt_onnx_ops.json"
MIN_OPSET = 17  # GridSample (16) and LayerNormalization (17) as single nodes

# Nodes whose output shape (or existence) depends on tensor values, not only on input shapes.
VALUE_SHAPED_OPS = {"NonZero", "NonMaxSuppression", "Unique", "Compress", "Loop", "Scan", "If"}
# op -> input positions that set an output shape; fed by tensor values, the shape is data-dependent.
SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2), "Tile": (1,),
    "Resize": (2, 3), "Upsample": (1,), "Slice": (1, 2, 3, 4), "Pad": (1,), "TopK": (1,), "OneHot": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
}
# op -> input positions TensorRT needs as build-time constants (initializers or Constant nodes).
REDUCTIONS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
CONSTANT_INPUTS = {"TopK": (1,), "CumSum": (1,), "OneHot": (1,), **dict.fromkeys(REDUCTIONS, (1,))}
# Operators whose outputs carry shape information only, never the values of their inputs.
SHAPE_OPS = {"Shape", "Size"}


@cache
def tensorrt_ops() -> dict:
    """The carried operator list: {"supported": {op: [types]}, "tensorrt_version", "source", ...}."""
    return json.loads(OPS_FILE.read_text())


def opset_range() -> tuple[int, int]:
    """Opsets every supported TensorRT parses: at least MIN_OPSET, at most the oldest target's maximum."""
    return MIN_OPSET, tensorrt_ops()["oldest_target"]["opset_range"][1]


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Every reason TensorRT would reject or mis-build `model`; empty when it is fine."""
    ops = tensorrt_ops()
    problems = []
    low, high = opset_range()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not low <= opset <= high:
        oldest = ops["oldest_target"]["tensorrt_version"]
        problems.append(f"opset {opset} is outside {low}..{high} (TensorRT {oldest} parses up to {high}; "
                        f"the project needs at least {low})")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except onnx.shape_inference.InferenceError as exc:
        problems.append(f"shape inference failed: {exc}")
        inferred = model
    graph = inferred.graph
    nodes = list(_walk(graph))
    for node in nodes:
        label = node.name or node.op_type
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"node {label}: custom operator {node.domain}::{node.op_type}")
        elif node.op_type not in ops["supported"]:
            problems.append(f"node {label}: {node.op_type} is not in TensorRT "
                            f"{ops['tensorrt_version']}'s supported ONNX operators")
        if node.op_type in VALUE_SHAPED_OPS:
            problems.append(f"node {label}: {node.op_type} has data-dependent output shapes")
        problems += _restriction_problems(node, graph)
    problems += _constant_input_problems(graph)
    problems += _float64_problems(graph, nodes)
    problems += _value_shape_problems(graph)
    return problems


def require_tensorrt_compatible(model: onnx.ModelProto, what: str) -> None:
    """SkyfuseError listing every problem unless TensorRT can build `model`."""
    problems = tensorrt_problems(model)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise SkyfuseError(f"{what} is not TensorRT-compatible: {shown}")


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _walk(sub)


def _float64_problems(graph: onnx.GraphProto, nodes: list) -> list[str]:
    problems = []
    typed = list(graph.input) + list(graph.output) + list(graph.value_info)
    for value in typed:
        if value.type.tensor_type.elem_type == TensorProto.DOUBLE:
            problems.append(f"tensor {value.name} is float64")
    problems += [f"initializer {t.name} is float64" for t in graph.initializer
                 if t.data_type == TensorProto.DOUBLE]
    for node in nodes:
        for attr in node.attribute:
            if node.op_type in ("Cast", "CastLike") and attr.name == "to" and attr.i == TensorProto.DOUBLE:
                problems.append(f"node {node.name or node.op_type}: casts to float64")
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.DOUBLE:
                problems.append(f"node {node.name or node.op_type}: float64 constant")
    return problems


def _constant_input_problems(graph: onnx.GraphProto) -> list[str]:
    constants = {t.name for t in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    problems = []
    for node in graph.node:
        for position in CONSTANT_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] and node.input[position] not in constants:
                problems.append(f"node {node.name or node.op_type}: {node.op_type} input {position} "
                                "must be a constant for TensorRT")
    return problems


def _restriction_problems(node: onnx.NodeProto, graph: onnx.GraphProto) -> list[str]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    label = node.name or node.op_type
    if node.op_type == "Resize":
        mode = attrs.get("mode", b"nearest").decode()
        if mode not in ("nearest", "linear") or attrs.get("antialias", 0):
            return [f"node {label}: Resize mode {mode!r} (antialias {attrs.get('antialias', 0)}) is not "
                    "supported by TensorRT (nearest or linear, no antialias)"]
    if node.op_type == "GridSample":
        rank = _rank(graph, node.input[0])
        if rank not in (None, 4):
            return [f"node {label}: GridSample input must be 4D, got rank {rank}"]
    return []


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _value_shape_problems(graph: onnx.GraphProto) -> list[str]:
    """Shapes set by tensors that carry input values (not just input shapes) are data-dependent."""
    valued = {value.name for value in graph.input}
    problems = []
    for node in graph.node:
        for position in SHAPE_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in valued:
                problems.append(f"node {node.name or node.op_type}: {node.op_type} input {position} "
                                "comes from tensor values, so its output shape is data-dependent")
        if node.op_type not in SHAPE_OPS and any(name in valued for name in node.input):
            valued.update(node.output)
    return problems
