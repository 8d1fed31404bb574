"""A Triton Inference Server model repository for an exported graph (`skyfuse export --triton-repo DIR`).

Layout, as Triton's onnxruntime backend loads it (with TensorRT acceleration where configured):

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx

The configuration names the graph's inputs and outputs (engines/learned.py), all float32 with the batch
dimension left to Triton (`max_batch_size`) and H×W as -1 where the graph is dynamic, turns on dynamic
batching (requests from several ground stations are merged into one network call), and carries the
graph's skyfuse metadata (model, precision, size multiple, fixed size) as model parameters, so the
`triton` engine learns how to pad frames from the server alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from core.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES
from .models import META_FIXED_SIZE, META_MODEL, META_PRECISION, META_SIZE_MULTIPLE, load_graph

PLATFORM = "onnxruntime_onnx"
# A frame period at 30 fps is 33 ms: waiting up to 2 ms for other requests costs little latency and lets
# the batcher merge the requests of ground stations whose frames arrive at about the same time.
MAX_QUEUE_DELAY_US = 2000
MAX_BATCH_SIZE = 8
# Channels of every tensor in the engines' convention (engines/learned.py); exporters often leave the output
# channels symbolic, but Triton needs them to size outputs placed in shared memory.
CHANNELS = {"visible": 1, "thermal": 1, "fused": 1, "registered": 1, "flow": 2}


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dims: tuple[int, ...]  # without the batch dimension; -1 where the graph is dynamic


def graph_tensors(model: onnx.ModelProto) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """(inputs, outputs) of a graph in the engines' convention; SkyfuseError for any other graph."""
    def tensors(values, expected: tuple[str, ...]) -> list[TensorConfig]:
        names = tuple(v.name for v in values)
        if names != expected:
            raise SkyfuseError(f"graph tensors {names} are not the engines' {expected}")
        found = []
        for value in values:
            kind = value.type.tensor_type
            if kind.elem_type != onnx.TensorProto.FLOAT:
                raise SkyfuseError(f"graph tensor {value.name!r} is not float32 (Triton gets float32 I/O)")
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                    for d in kind.shape.dim]
            if len(dims) != 4:
                raise SkyfuseError(f"graph tensor {value.name!r} is not (B, C, H, W)")
            if dims[1] not in (-1, CHANNELS[value.name]):
                raise SkyfuseError(f"graph tensor {value.name!r} has {dims[1]} channels, not "
                                   f"{CHANNELS[value.name]}")
            found.append(TensorConfig(value.name, (CHANNELS[value.name], *dims[2:])))
        return found

    return tensors(model.graph.input, INPUT_NAMES), tensors(model.graph.output, OUTPUT_NAMES)


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 2 up to `max_batch_size`, and `max_batch_size` itself: the sizes the batcher
    waits to fill before the queue delay runs out."""
    sizes = [s for s in (2**k for k in range(1, 16)) if s < max_batch_size]
    return sizes + [max_batch_size] if max_batch_size > 1 else []


def model_config_text(name: str, model: onnx.ModelProto, max_batch_size: int = MAX_BATCH_SIZE,
                      max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> str:
    """config.pbtxt (Triton's ModelConfig in protobuf text format) for serving `model` as `name`."""
    if max_batch_size < 1:
        raise SkyfuseError(f"max batch size must be at least 1, got {max_batch_size}")
    inputs, outputs = graph_tensors(model)

    def block(kind: str, tensors: list[TensorConfig]) -> list[str]:
        rows = [f'  {{ name: "{t.name}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, t.dims))} ] }}'
                for t in tensors]
        return [f"{kind} ["] + [",\n".join(rows)] + ["]"]

    props = {p.key: p.value for p in model.metadata_props}
    keys = (META_MODEL, META_PRECISION, META_SIZE_MULTIPLE, META_FIXED_SIZE)
    preferred = preferred_batch_sizes(max_batch_size)
    lines = [f'name: "{name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {max_batch_size}",
             *block("input", inputs), *block("output", outputs),
             "dynamic_batching {",
             *([f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"] if preferred else []),
             f"  max_queue_delay_microseconds: {max_queue_delay_us}",
             "}",
             *(f'parameters {{ key: "{key}" value: {{ string_value: "{props[key]}" }} }}'
               for key in keys if key in props)]
    return "\n".join(lines) + "\n"


def repository_name(model: onnx.ModelProto) -> str:
    """The model's name in the repository: its skyfuse model name, with the precision unless fp32."""
    props = {p.key: p.value for p in model.metadata_props}
    name = props.get(META_MODEL) or "skyfuse"
    precision = props.get(META_PRECISION, "fp32")
    return name if precision == "fp32" else f"{name}-{precision}"


def write_model_repository(onnx_path: str | Path, repository: str | Path, name: str | None = None,
                           max_batch_size: int = MAX_BATCH_SIZE,
                           max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> Path:
    """Write `onnx_path` into `repository` as <name>/1/model.onnx with its config.pbtxt; the model's
    directory. An existing model of the same name is replaced."""
    model = load_graph(onnx_path, load_weights=False)
    name = name or repository_name(model)
    text = model_config_text(name, model, max_batch_size, max_queue_delay_us)
    directory = Path(repository) / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, directory / "1" / "model.onnx")
    (directory / "config.pbtxt").write_text(text)
    return directory
