"""`tensorrt` engine: a cached serialized engine run through pycuda, double-buffered.

Tensor-name API shared by TensorRT 10.x and 11.x (num_io_tensors, get_tensor_name, get_tensor_mode,
get_tensor_dtype, get_tensor_shape, set_input_shape, set_tensor_address, execute_async_v3). Two buffer
slots (page-locked host + device memory for every I/O tensor) and three CUDA streams: uploads, compute,
downloads. While batch n computes, batch n+1 uploads into the other slot; events order each slot's reuse
(its upload waits until the compute that read it finished; its compute waits until the previous download
of its outputs finished). `LearnedEngine.fuse_stream` keeps two batches in flight to use this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES, LearnedEngine, Outputs
from .tensorrt_cache import Profile


@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    dtype: np.dtype
    channels: int


def plan_buffers(
    specs: list[TensorSpec], batch: int, height: int, width: int
) -> dict[str, tuple[tuple, int]]:
    """{tensor name: ((B, C, H, W), bytes)} for one call."""
    plan = {}
    for spec in specs:
        shape = (batch, spec.channels, height, width)
        plan[spec.name] = (shape, int(np.prod(shape)) * np.dtype(spec.dtype).itemsize)
    return plan


def check_io(specs: list[TensorSpec]) -> None:
    """The engine must have the network convention's I/O names (float32: the ONNX keeps float32 I/O)."""
    inputs = tuple(s.name for s in specs if s.is_input)
    outputs = tuple(s.name for s in specs if not s.is_input)
    if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise SkyfuseError(f"engine I/O {inputs} -> {outputs} does not match {INPUT_NAMES} -> {OUTPUT_NAMES}")
    wrong = [s.name for s in specs if np.dtype(s.dtype) != np.float32]
    if wrong:
        raise SkyfuseError(f"engine tensors {wrong} are not float32")


@dataclass
class _Slot:
    host: dict = field(default_factory=dict)  # name -> page-locked flat array
    device: dict = field(default_factory=dict)  # name -> DeviceAllocation
    capacity: dict = field(default_factory=dict)  # name -> bytes allocated
    events: dict = field(default_factory=dict)  # "uploaded", "computed", "downloaded" -> cuda.Event
    used: bool = False
    pending: object = None


class _Pending:
    def __init__(self, slot: _Slot, plan: dict):
        self.slot, self.plan, self.outputs = slot, plan, None

    def wait(self) -> Outputs:
        if self.outputs is None:
            self.slot.events["downloaded"].synchronize()
            self.outputs = tuple(
                self.slot.host[name][: int(np.prod(self.plan[name][0]))].reshape(self.plan[name][0]).copy()
                for name in OUTPUT_NAMES
            )
            self.slot.pending = None
        return self.outputs


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_path: str | Path, profile: Profile):
        import pycuda.autoinit  # noqa: F401 - creates the CUDA context TensorRT runs in
        import pycuda.driver as cuda
        import tensorrt as trt

        self.cuda, self.profile, self.path = cuda, profile, Path(engine_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise SkyfuseError(f"TensorRT cannot load {engine_path} (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.specs = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            self.specs.append(
                TensorSpec(
                    name,
                    self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
                    int(self.engine.get_tensor_shape(name)[1]),
                )
            )
        check_io(self.specs)
        self.streams = {k: cuda.Stream() for k in ("upload", "compute", "download")}
        self.slots = [
            _Slot(events={k: cuda.Event() for k in ("uploaded", "computed", "downloaded")}) for _ in range(2)
        ]
        self.turn = 0

    def _reserve(self, slot: _Slot, plan: dict) -> None:
        for spec in self.specs:
            nbytes = plan[spec.name][1]
            if slot.capacity.get(spec.name, 0) < nbytes:  # grow only; frames rarely change size
                slot.host[spec.name] = self.cuda.pagelocked_empty(nbytes // spec.dtype.itemsize, spec.dtype)
                slot.device[spec.name] = self.cuda.mem_alloc(nbytes)
                slot.capacity[spec.name] = nbytes

    def submit(self, visible: np.ndarray, thermal: np.ndarray) -> _Pending:
        batch, _, height, width = visible.shape
        self.profile.require(batch, height, width)
        slot = self.slots[self.turn]
        self.turn ^= 1
        if slot.pending is not None:  # the caller did not collect this slot's last result yet
            slot.pending.wait()
        plan = plan_buffers(self.specs, batch, height, width)
        cuda, streams, events = self.cuda, self.streams, slot.events
        if slot.used:
            streams["upload"].wait_for_event(events["computed"])  # its inputs were read
            streams["compute"].wait_for_event(events["downloaded"])  # its outputs were copied out
        self._reserve(slot, plan)
        for name, array in zip(INPUT_NAMES, (visible, thermal)):
            host = slot.host[name][: array.size]
            host[:] = array.ravel()
            cuda.memcpy_htod_async(slot.device[name], host, streams["upload"])
        events["uploaded"].record(streams["upload"])
        streams["compute"].wait_for_event(events["uploaded"])
        for spec in self.specs:
            if spec.is_input:
                self.context.set_input_shape(spec.name, plan[spec.name][0])
            self.context.set_tensor_address(spec.name, int(slot.device[spec.name]))
        if not self.context.execute_async_v3(stream_handle=streams["compute"].handle):
            raise SkyfuseError("TensorRT execution failed (see its messages above)")
        events["computed"].record(streams["compute"])
        streams["download"].wait_for_event(events["computed"])
        for name in OUTPUT_NAMES:
            count = int(np.prod(plan[name][0]))
            cuda.memcpy_dtoh_async(slot.host[name][:count], slot.device[name], streams["download"])
        events["downloaded"].record(streams["download"])
        slot.used = True
        slot.pending = _Pending(slot, plan)
        return slot.pending

    def run(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs:
        return self.submit(visible, thermal).wait()

    def describe(self) -> str:
        return f"tensorrt ({self.path.name}, profile {self.profile})"

    def close(self) -> None:
        for stream in self.streams.values():
            stream.synchronize()
        self.context = self.engine = self.runtime = None
        self.slots = []


def create_tensorrt_engine(
    model: str = "skyfuse-rt",
    onnx_path: str | None = None,
    weights: str | None = None,
    precision: str = "fp16",
    batch: str | int = "1,4,16",
    size: str = "640x512",
    min_size: str | None = None,
    max_size: str | None = None,
    cache_dir: str | None = None,
    force_build: bool = False,
    registration: bool = True,
) -> LearnedEngine:
    """Engine for `model` (exported, then built and cached on first use) or an exported `onnx_path`;
    `registration=False` turns the network's registration off."""
    from .export import cache_dir as default_cache_dir
    from .models import load_graph, read_metadata
    from .tensorrt_build import ensure_engine, import_tensorrt, resolve_onnx

    import_tensorrt()
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as exc:
        raise SkyfuseError(f"pycuda is not installed ({exc}); the tensorrt engine needs it") from None
    path, geometry = resolve_onnx(model, onnx_path, weights, precision, registration)
    profile = Profile.from_options(geometry, batch, size, min_size, max_size)
    engine_path = ensure_engine(path, profile, cache_dir or default_cache_dir(), force=force_build)
    name, graph_precision, _ = read_metadata(load_graph(path, load_weights=False))
    return LearnedEngine(
        TensorRTBackend(engine_path, profile), geometry, model=name or model, precision=graph_precision
    )
