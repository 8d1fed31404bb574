"""The plain-Python half of the TensorRT backend: optimisation profiles, engine cache keys and the engine
cache. None of it needs TensorRT, so all of it is tested on the CPU.

A serialized engine is only valid for the GPU model and TensorRT version that built it (GPU.md), so the cache
key holds the GPU name, its compute capability, TensorRT major.minor, the ONNX file's hash, the precision
and the profile; a cached engine whose key differs is rebuilt, and the message says which parts differ.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import SkyfuseError
from core.sizes import parse_size

from .learned import INPUT_NAMES, Geometry

Shape3 = tuple[int, int, int]  # (batch, height, width)


def parse_batches(text: str | int) -> tuple[int, int, int]:
    """ "1,4,16" -> (min, opt, max); a single number is used for all three."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise SkyfuseError(f"batch must be N or MIN,OPT,MAX, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise SkyfuseError(f"batch must be N or MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: the same (batch, height, width) range for both inputs."""

    min: Shape3
    opt: Shape3
    max: Shape3

    @classmethod
    def from_options(
        cls,
        geometry: Geometry,
        batch: str | int = "1,4,16",
        size: str = "640x512",
        min_size: str | None = None,
        max_size: str | None = None,
    ) -> Profile:
        """Profile from user options. Sizes are rounded up to the network's size multiple (the engine sees
        padded frames); a fixed-size network gets exactly its size; min/max size default to opt / 2 and
        opt x 2."""
        batches = parse_batches(batch)
        if geometry.fixed_size:
            sizes = [geometry.fixed_size] * 3
        else:
            opt = parse_size(size)[::-1]  # (H, W), as tensor shapes are indexed
            low = parse_size(min_size)[::-1] if min_size else (opt[0] // 2, opt[1] // 2)
            high = parse_size(max_size)[::-1] if max_size else (opt[0] * 2, opt[1] * 2)
            sizes = [geometry.padded(*low), geometry.padded(*opt), geometry.padded(*high)]
        for axis in (0, 1):
            if not sizes[0][axis] <= sizes[1][axis] <= sizes[2][axis]:
                raise SkyfuseError(f"profile sizes must grow from min to opt to max, got {sizes}")
        shapes = [(b, h, w) for b, (h, w) in zip(batches, sizes)]
        return cls(*shapes)

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input name: ((B,1,H,W) min, opt, max)} for IOptimizationProfile.set_shape."""
        four = tuple((b, 1, h, w) for b, h, w in (self.min, self.opt, self.max))
        return {name: four for name in INPUT_NAMES}

    def contains(self, batch: int, height: int, width: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (batch, height, width), self.max))

    def require(self, batch: int, height: int, width: int) -> None:
        if not self.contains(batch, height, width):
            raise SkyfuseError(
                f"batch {batch} of {width}x{height} is outside the engine's profile "
                f"({self}); rebuild it with skyfuse build-engine --batch/--min-size/--max-size"
            )

    def __str__(self) -> str:
        return " .. ".join(f"b{b} {w}x{h}" for b, h, w in (self.min, self.opt, self.max))

    def tag(self) -> str:
        return "_".join("x".join(map(str, s)) for s in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100/H200)


def gpu_identity() -> GpuIdentity:
    """The first CUDA device, through pycuda (the runtime's own binding), else PyTorch."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        major, minor = device.compute_capability()
        return GpuIdentity(device.name(), f"{major}.{minor}")
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return GpuIdentity(torch.cuda.get_device_name(0), f"{major}.{minor}")
    except ImportError:
        pass
    raise SkyfuseError("no CUDA device found (neither pycuda nor PyTorch sees one)")


def tensorrt_major_minor(version: str) -> str:
    """ "10.3.0.26" -> "10.3": engines are rebuilt across minor versions, not across patch releases."""
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise SkyfuseError(f"unexpected TensorRT version {version!r}")
    return f"{parts[0]}.{parts[1]}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    model: str
    gpu: str
    compute_capability: str
    tensorrt: str  # major.minor
    onnx_sha256: str
    precision: str
    profile: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: CacheKey) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{field} {theirs[field]!r} -> {mine[field]!r}" for field in mine if mine[field] != theirs[field]
        ]


class EngineCache:
    """Serialized engines in `root`/tensorrt, each with a JSON sidecar holding its key."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / "tensorrt"

    def path(self, key: CacheKey) -> Path:
        return self.dir / f"{key.model}-{key.precision}-{key.digest()}.engine"

    def lookup(self, key: CacheKey) -> tuple[Path | None, str]:
        """(engine path, message) on a hit; (None, why it must be built) on a miss."""
        path = self.path(key)
        if path.is_file() and path.with_suffix(".json").is_file():
            return path, f"using cached TensorRT engine {path}"
        stale = []
        for sidecar in sorted(self.dir.glob(f"{key.model}-{key.precision}-*.json")):
            try:
                old = CacheKey(**json.loads(sidecar.read_text())["key"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            stale.append("; ".join(key.differences(old)))
        if stale:
            return None, (
                f"cached {key.model} {key.precision} engine does not match this machine or model "
                f"({stale[-1]}); rebuilding"
            )
        return None, f"no cached {key.model} {key.precision} engine for {key.gpu} / TensorRT {key.tensorrt}"

    def store(self, key: CacheKey, engine: bytes, build_seconds: float) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(engine)
        tmp.replace(path)  # atomic, so a crashed build never leaves half an engine under the real name
        sidecar = {
            "key": asdict(key),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(build_seconds, 1),
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
        return path

    def timing_cache(self, key: CacheKey) -> Path:
        """Tactic timings, shared by all builds on one GPU model and TensorRT version (faster rebuilds)."""
        slug = "".join(c if c.isalnum() else "-" for c in key.gpu)
        return self.dir / f"timing-{slug}-sm{key.compute_capability}-trt{key.tensorrt}.cache"
