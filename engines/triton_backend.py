"""`triton` engine: the network on an NVIDIA Triton Inference Server, reached over gRPC (`tritonclient.grpc`).

Past one machine: several ground stations send their batches to one server, whose dynamic batcher merges
them and spreads them over its GPUs and model instances. The fuse stage keeps everything else (pairing,
AGC, calibration, colour): this backend only moves the (B, 1, H, W) float32 luminance tensors there and the
outputs back. When the server runs on the same machine, the tensors travel through one system shared
memory region instead of the gRPC message (measured on the 2-core machine: a batch-1 640×512 request took
38 ms median through gRPC, 10.5 ms through shared memory; README, Triton). The repository it serves is
what `skyfuse export --triton-repo` writes (engines/triton_repo.py); its parameters carry the geometry.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from core.errors import SkyfuseError

from .learned import INPUT_NAMES, OUTPUT_NAMES, Geometry, LearnedEngine, Outputs
from .models import META_FIXED_SIZE, META_MODEL, META_PRECISION, META_SIZE_MULTIPLE
from .triton_repo import CHANNELS

SHARED_MEMORY = ("auto", "system", "none")
ALIGNMENT = 64  # bytes: every tensor starts on a cache line


@dataclass(frozen=True)
class Placement:
    """Where one tensor of a request lies in the shared memory region."""

    shape: tuple[int, int, int, int]
    offset: int
    nbytes: int


def region_plan(batch: int, height: int, width: int) -> tuple[dict[str, Placement], int]:
    """({tensor: placement}, bytes needed) for one request: inputs, then outputs, each aligned."""
    plan, offset = {}, 0
    for name in INPUT_NAMES + OUTPUT_NAMES:
        shape = (batch, CHANNELS[name], height, width)
        nbytes = int(np.prod(shape)) * 4
        plan[name] = Placement(shape, offset, nbytes)
        offset += -(-nbytes // ALIGNMENT) * ALIGNMENT
    return plan, offset


def batch_chunks(batch: int, max_batch_size: int) -> list[slice]:
    """Slices of a batch that each fit the server model's `max_batch_size`."""
    return [slice(start, min(start + max_batch_size, batch)) for start in range(0, batch, max_batch_size)]


def config_geometry(config) -> tuple[str, str, Geometry]:
    """(model name, precision, geometry) from a served ModelConfig: its skyfuse parameters, else (a model
    from elsewhere) a fixed size where the input dims are static and any size where they are -1."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    fixed = params.get(META_FIXED_SIZE)
    if fixed is None:  # a model from elsewhere: static input dims are its fixed size
        dims = tuple(config.input[0].dims)[-2:]
        size = dims if min(dims) > 0 else None
    else:
        size = tuple(int(v) for v in fixed.split("x")) if fixed else None
    geometry = Geometry(int(params.get(META_SIZE_MULTIPLE, 1)), size)
    return params.get(META_MODEL, config.name), params.get(META_PRECISION, "fp32"), geometry


def check_config(config) -> None:
    """The served model must follow the engines' convention with batching on; SkyfuseError otherwise."""
    from tritonclient.grpc import model_config_pb2

    inputs = tuple(t.name for t in config.input)
    outputs = tuple(t.name for t in config.output)
    if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise SkyfuseError(f"Triton model {config.name!r} has I/O {inputs} -> {outputs}, not "
                           f"{INPUT_NAMES} -> {OUTPUT_NAMES}")
    wrong = [t.name for t in (*config.input, *config.output) if t.data_type != model_config_pb2.TYPE_FP32]
    if wrong:
        raise SkyfuseError(f"Triton model {config.name!r}: tensors {wrong} are not TYPE_FP32")
    if config.max_batch_size < 1:
        raise SkyfuseError(f"Triton model {config.name!r} has max_batch_size 0: the engine sends batches "
                           "(export the repository with `skyfuse export --triton-repo`)")


class SharedRegion:
    """One system shared memory region registered with the server, grown (re-created and re-registered)
    when a request needs more room than it has."""

    def __init__(self, client):
        self.client = client
        self.name = f"skyfuse-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.key = "/" + self.name
        self.capacity = 0
        self.handle = None

    def reserve(self, nbytes: int) -> None:
        """Make the region hold at least `nbytes`; the server maps it at registration, so a key it cannot
        open (a server on another machine, or in a container without the host's /dev/shm) raises here."""
        import tritonclient.utils.shared_memory as shm

        if nbytes <= self.capacity:
            return
        self.release()
        handle = shm.create_shared_memory_region(self.name, self.key, nbytes, create_only=True)
        try:
            self.client.register_system_shared_memory(self.name, self.key, nbytes)
        except Exception:
            shm.destroy_shared_memory_region(handle)
            raise
        self.handle, self.capacity = handle, nbytes

    def write(self, placement: Placement, array: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [np.ascontiguousarray(array, dtype=np.float32)],
                                     offset=placement.offset)

    def read(self, placement: Placement) -> np.ndarray:
        """A copy: the next request overwrites the region."""
        import tritonclient.utils.shared_memory as shm

        return shm.get_contents_as_numpy(self.handle, np.float32, placement.shape, placement.offset).copy()

    def release(self) -> None:
        import tritonclient.utils.shared_memory as shm

        if self.handle is None:
            return
        try:
            self.client.unregister_system_shared_memory(self.name)
        finally:
            shm.destroy_shared_memory_region(self.handle)
            self.handle, self.capacity = None, 0


class TritonBackend:
    name = "triton"

    def __init__(self, url: str = "localhost:8001", model: str = "skyfuse-rt", shared_memory: str = "auto",
                 timeout_s: float = 60.0):
        if shared_memory not in SHARED_MEMORY:
            raise ValueError(f"shared_memory must be one of {', '.join(SHARED_MEMORY)}, "
                             f"got {shared_memory!r}")
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        self.url, self.model, self.timeout_s = url, model, float(timeout_s)
        self.client = grpcclient.InferenceServerClient(url)
        try:
            if not self.client.is_model_ready(model, client_timeout=self.timeout_s):
                raise SkyfuseError(f"Triton server at {url} has no ready model {model!r}")
            self.config = self.client.get_model_config(model, client_timeout=self.timeout_s).config
        except InferenceServerException as exc:
            raise SkyfuseError(f"Triton server at {url} cannot be used: {exc.message()}") from None
        check_config(self.config)
        self.region: SharedRegion | None = None
        self.shared_memory = "none"
        self.note = ""
        if shared_memory != "none":
            self._open_region(shared_memory)

    def _open_region(self, mode: str) -> None:
        """Register a small region now, so `auto` learns at start whether the server can map it."""
        from tritonclient.utils import InferenceServerException
        from tritonclient.utils.shared_memory import SharedMemoryException

        region = SharedRegion(self.client)
        try:
            region.reserve(region_plan(1, 8, 8)[1])
        except (InferenceServerException, SharedMemoryException) as exc:
            if mode == "system":
                raise SkyfuseError(f"shared_memory=system: the Triton server at {self.url} cannot map this "
                                   f"machine's shared memory ({exc})") from None
            self.note = "the server cannot map this machine's shared memory"
            return
        self.region, self.shared_memory = region, "system"

    def run(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs:
        chunks = [self._infer(visible[part], thermal[part])
                  for part in batch_chunks(len(visible), self.config.max_batch_size)]
        return tuple(np.concatenate(parts) if len(chunks) > 1 else parts[0] for parts in zip(*chunks))

    def _infer(self, visible: np.ndarray, thermal: np.ndarray) -> Outputs:
        import tritonclient.grpc as grpcclient

        batch, _, height, width = visible.shape
        plan, nbytes = region_plan(batch, height, width)
        inputs = [grpcclient.InferInput(name, list(plan[name].shape), "FP32") for name in INPUT_NAMES]
        outputs = [grpcclient.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        if self.region is None:
            for tensor, array in zip(inputs, (visible, thermal)):
                tensor.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        else:
            self.region.reserve(nbytes)
            for tensor, array in zip(inputs, (visible, thermal)):
                place = plan[tensor.name()]
                self.region.write(place, array)
                tensor.set_shared_memory(self.region.name, place.nbytes, place.offset)
            for tensor in outputs:
                place = plan[tensor.name()]
                tensor.set_shared_memory(self.region.name, place.nbytes, place.offset)
        result = self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        if self.region is None:
            return tuple(result.as_numpy(name) for name in OUTPUT_NAMES)
        for name in OUTPUT_NAMES:
            shape = tuple(result.get_output(name).shape)
            if shape != plan[name].shape:
                raise SkyfuseError(f"Triton model {self.model!r} returned {name} of shape {shape}, "
                                   f"expected {plan[name].shape}")
        return tuple(self.region.read(plan[name]) for name in OUTPUT_NAMES)

    def describe(self) -> str:
        memory = f"shared memory {self.shared_memory}" + (f": {self.note}" if self.note else "")
        batch = self.config.max_batch_size
        return f"triton ({self.url}, model {self.model}, gRPC, {memory}, max batch {batch})"

    def close(self) -> None:
        if self.region is not None:
            self.region.release()
            self.region = None
        self.client.close()


def create_triton_engine(url: str = "localhost:8001", model: str = "skyfuse-rt", protocol: str = "grpc",
                         shared_memory: str = "auto", timeout_s: float = 60.0) -> LearnedEngine:
    """Engine on the Triton server at `url` serving `model` (a repository from `skyfuse export
    --triton-repo`); `shared_memory`: system (same machine), none (gRPC messages), auto (system when the
    server can map it). Only gRPC: its binary tensors cost less than HTTP's JSON framing."""
    if protocol != "grpc":
        raise ValueError(f"protocol must be grpc, got {protocol!r}")
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError as exc:
        raise SkyfuseError(f"the triton engine needs tritonclient[grpc] (pip install -e '.[triton]'): "
                           f"{exc}") from None
    backend = TritonBackend(url, model, shared_memory, timeout_s)
    name, precision, geometry = config_geometry(backend.config)
    return LearnedEngine(backend, geometry, model=name, precision=precision)
