"""A network to one ONNX file that ONNX Runtime and TensorRT (10.x and 11.x) both take.

Inputs "visible", "thermal" and outputs "fused", "registered", "flow", all (B, C, H, W) float32 with dynamic
batch and, where the network allows it, dynamic height and width. The precision is decided here, in the
graph (strong typing, GPU.md): fp32; fp16 (engines/precision.py, fused image checked against fp32 on ONNX
Runtime); int8 Q/DQ (engines/quantize.py, fusion metrics checked against fp32). Every export passes the
TensorRT compatibility check (engines/onnx_check.py). The `skyfuse export` command is training/export.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from core.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES, Geometry
from .models import load_network, model_label, network_geometry, without_registration, write_metadata
from .onnx_check import opset_range, require_tensorrt_compatible

PRECISIONS = ("fp32", "fp16", "int8")


EXPORTERS = ("auto", "torchscript", "dynamo")
MAX_SIDE = 4096  # largest frame side a dynamic graph is exported for
SAMPLE_BATCH = 2  # torch.export specialises sizes of 0 and 1: trace with 2 so the batch stays dynamic


def sample_size(geometry: Geometry) -> tuple[int, int]:
    """The H×W traced at export: the fixed size, else a small size on the network's grid whose sides are
    different multiples (>= 2) of the size multiple, so neither side is specialised to a constant."""
    if geometry.fixed_size:
        return geometry.fixed_size
    m = geometry.size_multiple
    height = max(2, -(-64 // m)) * m
    return height, height + m


def verify_sizes(geometry: Geometry) -> list[tuple[int, int]]:
    """The H×W at which `skyfuse export` checks the graph against PyTorch: the traced size and, for a
    dynamic graph, one that differs from it in height, width and pixel count, so a size baked into the
    graph shows. It is one multiple lower and one wider, so it has fewer pixels: ONNX Runtime holds an
    attention layer's scores whole (batch × heads × tokens², misfit-v: a token per 8×8 pixels), and a larger
    size grows the check quadratically: (2H, H+W) needed over 24 GB for misfit-v."""
    height, width = sample_size(geometry)
    if geometry.fixed_size:
        return [(height, width)]
    m = geometry.size_multiple
    return [(height, width), (height - m, width + m)]


def needs_symbolic_shapes(network) -> bool:
    """Attention layers compute reshape sizes with Python arithmetic on tensor sizes, which the TorchScript
    tracer bakes into constants (the graph then only runs at the traced size); torch.export keeps them."""
    from torch import nn

    attention = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return any(isinstance(module, attention) or getattr(module, "symbolic_shapes", False)
               for module in network.modules())


def export_network(network, path: str | Path, *, model_name: str, precision: str = "fp32",
                   opset: int | None = None, exporter: str = "auto") -> onnx.ModelProto:
    """Export `network` (eval mode) to `path` and return the saved graph; SkyfuseError when it cannot.

    `exporter`: "torchscript" (fast: about a second), "dynamo" (torch.export: sizes stay symbolic, but
    10-30 s on these machines), or "auto": dynamo only for networks that need it (needs_symbolic_shapes)."""
    import torch

    if precision not in PRECISIONS:
        raise SkyfuseError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if exporter not in EXPORTERS:
        raise SkyfuseError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    dynamo = exporter == "dynamo" or (exporter == "auto" and needs_symbolic_shapes(network))
    opset = opset or (18 if dynamo else 17)  # each exporter's native opset; TensorRT 10.0+ parses up to 20
    low, high = opset_range()
    if not low <= opset <= high:
        raise SkyfuseError(f"opset must be in {low}..{high} for TensorRT, got {opset}")
    geometry = network_geometry(network)
    height, width = sample_size(geometry)
    generator = torch.Generator().manual_seed(0)
    sample = tuple(torch.rand(SAMPLE_BATCH, 1, height, width, generator=generator) for _ in INPUT_NAMES)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The fused attention fast path has no ONNX form: trace the plain operations.
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            export = _export_dynamo if dynamo else _export_torchscript
            model = export(network.eval(), sample, opset, geometry)
        except Exception as exc:  # the exporters raise many types (UserError, constraint violations...)
            text = str(exc).strip()
            raise SkyfuseError(f"{model_name}: ONNX export failed: "
                               f"{text.splitlines()[0][:400] if text else type(exc).__name__}") from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    write_metadata(model, model_name, "fp32", geometry)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if precision == "int8":
        from .quantize import CALIBRATION_SIZE, quantize_int8, synthetic_pairs

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(fp32))
            return quantize_int8(fp32, path, synthetic_pairs(16, *geometry.padded(*CALIBRATION_SIZE)))
    if precision == "fp16":
        from .precision import convert_fp16

        model = convert_fp16(model)
    onnx.checker.check_model(model, full_check=True)
    require_tensorrt_compatible(model, f"{model_name} ({precision})")
    onnx.save(model, str(path))  # weights inside the one file (these networks are far below 2 GB)
    return model


def _export_torchscript(network, sample, opset: int, geometry: Geometry) -> onnx.ModelProto:
    import torch

    spatial = {} if geometry.fixed_size else {2: "height", 3: "width"}
    axes = {name: {0: "batch", **spatial} for name in INPUT_NAMES + OUTPUT_NAMES}
    buffer = io.BytesIO()
    torch.onnx.export(network, sample, buffer, dynamo=False, opset_version=opset,
                      input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                      do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(network, sample, opset: int, geometry: Geometry) -> onnx.ModelProto:
    import torch

    dims = {0: torch.export.Dim("batch", min=1, max=256)}
    if not geometry.fixed_size:
        m, most = geometry.size_multiple, MAX_SIDE // geometry.size_multiple
        # H and W are multiples of the network's size multiple: say so, or the exporter specialises them
        dims[2] = m * torch.export.Dim("height_blocks", min=1, max=most)
        dims[3] = m * torch.export.Dim("width_blocks", min=1, max=most)
    program = torch.onnx.export(network, sample, dynamo=True, opset_version=opset,
                                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                dynamic_shapes={name: dims for name in INPUT_NAMES}, verbose=False)
    model = program.model_proto
    for value in list(model.graph.input) + list(model.graph.output):  # "16*height_blocks" -> "height"
        for dim in value.type.tensor_type.shape.dim:
            for name in ("batch", "height", "width"):
                if dim.dim_param == name or dim.dim_param.endswith(f"*{name}_blocks"):
                    dim.dim_param = name
    return model


def cache_dir() -> Path:
    """Where exported graphs and TensorRT engines are cached: $SKYFUSE_CACHE, else ~/.cache/skyfuse."""
    return Path(os.environ.get("SKYFUSE_CACHE") or Path.home() / ".cache" / "skyfuse")


def export_cache_path(model: str, weights: str | None = None, precision: str = "fp32",
                      overrides: dict | None = None, registration: bool = True) -> Path:
    """Where cached_export keeps the ONNX file of these arguments (it may not exist yet)."""
    import torch

    weights_file = weights or _shipped_weights(model)
    weights_id = _file_digest(weights_file) if weights_file else "untrained"
    label = model_label(model, registration)
    key = json.dumps([label, weights_id, precision, overrides or {}, torch.__version__, onnx.__version__,
                      _code_digest()], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{label}-{precision}-{digest}.onnx"


def cached_export(model: str, weights: str | None = None, precision: str = "fp32",
                  overrides: dict | None = None, registration: bool = True) -> Path:
    """The ONNX file of `model` for the engines (`registration=False`: with its registration off), exported
    once per (model, weights, options, library versions, network and exporter source)."""
    path = export_cache_path(model, weights, precision, overrides, registration)
    label = model_label(model, registration)
    if not path.exists():
        network = load_network(model, weights, overrides)
        if not registration:
            network = without_registration(network)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # stages exporting at once never share a file
        export_network(network, tmp, model_name=label, precision=precision)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def _shipped_weights(model: str) -> str | None:
    """engines/weights/<model>.pt, which build_network loads when no weights are given."""
    try:
        from engines.networks import default_weights
    except ImportError:
        return None
    path = default_weights(model)
    return str(path) if path.is_file() else None


def _code_digest() -> str:
    """The networks' and the exporter's source: a cached graph is stale when either changed."""
    here = Path(__file__).parent
    files = sorted((here / "networks").glob("*.py")) + [here / "export.py", here / "precision.py"]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise SkyfuseError(f"cannot read weights {path}: {exc.strerror}") from None


def verify_export(network, path: str | Path, sizes: list[tuple[int, int]], batch: int = 2) -> float:
    """Largest |ONNX Runtime - PyTorch| over all outputs on random inputs at `sizes` (fp32 graphs).

    The inputs are smooth random images (uniform noise at 1/8 resolution, bicubically upsampled, fading to 0
    at the borders): a warp turns float32 rounding of the flow into an intensity error of that rounding
    times the image gradient, which per-pixel noise or the zero padding at a border make as large as 1.
    The flow (in pixels) is compared relative to its largest magnitude when that exceeds 1 pixel."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    # ONNX Runtime's arena keeps a run's buffers and grows again for the next size's shapes (misfit-v's
    # export peaks at 5.2 GB with it, 3.6 GB without); a check of a few runs loses little speed without.
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    for height, width in sizes:
        inputs = [smooth_random(rng, batch, height, width) for _ in INPUT_NAMES]
        with torch.inference_mode():
            expected = network(*(torch.from_numpy(x) for x in inputs))
        try:
            got = session.run(list(OUTPUT_NAMES), dict(zip(INPUT_NAMES, inputs)))
        except Exception as exc:  # onnxruntime's own error types
            first_line = str(exc).splitlines()[0][:300]
            raise SkyfuseError(f"{path} fails on ONNX Runtime at batch {batch}, {width}x{height}: the graph "
                               f"is not dynamic in batch/H×W ({first_line})") from None
        for g, e in zip(got, expected):
            e = e.numpy()
            worst = max(worst, float(np.abs(g - e).max()) / max(1.0, float(np.abs(e).max())))
    return worst


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux): what an export needs of a machine."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def smooth_random(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """(B, 1, H, W) float32 random images in [0, 1] with image-like (not per-pixel) variation that fade to 0
    at the borders, so the zero padding of a warp adds no intensity step there."""
    import cv2

    coarse = rng.random((batch, height // 8 + 2, width // 8 + 2), dtype=np.float32)
    frames = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])
    window = np.outer(np.sin(np.linspace(0, np.pi, height)), np.sin(np.linspace(0, np.pi, width)))
    return (np.clip(frames, 0.0, 1.0) * window.astype(np.float32))[:, None]
