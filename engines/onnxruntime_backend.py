"""`onnxruntime` engine: an exported ONNX graph on ONNX Runtime (CPU; the CUDA provider when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES, LearnedEngine, Outputs
from .models import load_graph, read_metadata, require_model_for


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, provider: str = "auto", spinning: bool = False):
        import onnxruntime as ort

        if provider not in ("auto", "cpu", "cuda"):
            raise ValueError(f"provider must be auto, cpu or cuda, got {provider!r}")
        available = ort.get_available_providers()
        if provider == "cuda" and "CUDAExecutionProvider" not in available:
            raise SkyfuseError("provider=cuda: this onnxruntime has no CUDA provider "
                               "(install onnxruntime-gpu)")
        use_cuda = provider != "cpu" and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider"] * use_cuda + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        # Inside the pipeline the engine shares the cores with capture, colour conversion and encoding:
        # one graph at a time (no inter-op pool), and worker threads that sleep between runs instead of
        # spinning for the next one (spinning burns a core the other stages need; see README, "CPU threads").
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid graphs
            raise SkyfuseError(f"ONNX Runtime cannot load {path}: {exc}") from None
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if (inputs, outputs) != (INPUT_NAMES, OUTPUT_NAMES):
            raise SkyfuseError(f"{path}: expected inputs {INPUT_NAMES} and outputs {OUTPUT_NAMES}, "
                               f"got {inputs} and {outputs}")
        self.path, self.threads, self.spinning = Path(path), threads, spinning
        self.provider = "cuda" if use_cuda else "cpu"

    def run(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs:
        feeds = {"visible": visible, "thermal": thermal}
        fused, registered, flow = self.session.run(list(OUTPUT_NAMES), feeds)
        return fused, registered, flow

    def describe(self) -> str:
        spin = ", spinning" if self.spinning else ""
        return f"onnxruntime ({self.provider}, {self.threads or 'default'} threads{spin}, {self.path.name})"

    def close(self) -> None:
        self.session = None


def create_onnxruntime_engine(model: str = "skyfuse-rt", onnx_path: str | None = None,
                              weights: str | None = None, precision: str = "fp32", threads: int = 0,
                              provider: str = "auto", registration: bool = True,
                              spinning: bool = False) -> LearnedEngine:
    """Engine from `onnx_path`, or from `model` (+ `weights`) exported once into the cache;
    `registration=False` turns the network's registration off (frames that arrive registered)."""
    require_model_for(registration, onnx_path)
    exported = False
    if onnx_path is None:
        from .export import cached_export, export_cache_path

        exported = not export_cache_path(model, weights, precision, registration=registration).exists()
        onnx_path = cached_export(model, weights, precision, registration=registration)
    name, graph_precision, geometry = read_metadata(load_graph(onnx_path, load_weights=False))
    backend = OnnxRuntimeBackend(onnx_path, threads=threads, provider=provider, spinning=spinning)
    engine = LearnedEngine(backend, geometry, model=name or model, precision=graph_precision)
    if exported:
        engine.startup_note = f"exported {model} to ONNX (first use; later runs load it from the cache)"
    return engine
