"""`skyfuse build-engine`: a strongly typed TensorRT engine from an exported ONNX graph, cached per GPU.

One code path for TensorRT 10.x (JetPack 6: 10.3) and 11.x. The precision is in the ONNX tensor types
(engines/precision.py), never in builder flags: the network is created with the STRONGLY_TYPED flag (opt-in
on 10.x; deprecated and ignored on 11.x, where every network is strongly typed), and none of the APIs that
11.x removed is used (BuilderFlag.FP16/INT8/BF16, precision constraints, int8_calibrator, calibration
profiles, quantization flags, device_memory_size).
Calls used, as NVIDIA's Python API reference and 10.x->11.x migration guide name them: Builder,
create_network, NetworkDefinitionCreationFlag.STRONGLY_TYPED, OnnxParser.parse_from_file/num_errors/
get_error, create_builder_config, set_memory_pool_limit(MemoryPoolType.WORKSPACE),
create_optimization_profile, IOptimizationProfile.set_shape, add_optimization_profile,
create_timing_cache/set_timing_cache/get_timing_cache, IProgressMonitor (progress_monitor),
build_serialized_network.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from core.errors import SkyfuseError

from .learned import Geometry
from .models import load_graph, read_metadata, require_model_for
from .onnx_check import require_tensorrt_compatible
from .tensorrt_cache import CacheKey, EngineCache, Profile, file_sha256, gpu_identity, tensorrt_major_minor


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise SkyfuseError(
            f"TensorRT is not installed ({exc}); TensorRT 10.x or 11.x must be installed on the "
            "machine that runs the engine (JetPack ships it on Jetson)"
        ) from None
    return tensorrt


def progress_monitor(trt, log: Callable[[str], None]):
    """An IProgressMonitor that prints top-level phases (builds take minutes on a Jetson)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.monotonic()
            if parent_phase is None:
                log(f"build-engine: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            elapsed = time.monotonic() - self.started.pop(phase_name, time.monotonic())
            if elapsed >= 1.0:
                log(f"build-engine: {phase_name} done in {elapsed:.0f} s")

    return Monitor()


def build_serialized(
    onnx_path: Path, profile: Profile, timing_cache: Path, workspace_mb: int, log: Callable[[str], None]
) -> bytes:
    """Parse, configure and build; returns the serialized engine. Saves the updated timing cache."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkyfuseError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    optimisation = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.input_shapes().items():
        optimisation.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimisation)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = progress_monitor(trt, log)  # kept referenced for the whole build
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SkyfuseError("TensorRT could not build the engine (see its messages above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def engine_key(onnx_path: Path, profile: Profile, model: str, precision: str) -> CacheKey:
    trt = import_tensorrt()
    gpu = gpu_identity()
    return CacheKey(
        model=model or Path(onnx_path).stem,
        gpu=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt=tensorrt_major_minor(trt.__version__),
        onnx_sha256=file_sha256(onnx_path),
        precision=precision,
        profile=profile.tag(),
    )


def ensure_engine(
    onnx_path: str | Path,
    profile: Profile,
    cache_root: str | Path,
    *,
    force: bool = False,
    workspace_mb: int = 2048,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached engine for this graph, GPU, TensorRT version and profile; built (and cached) when
    missing or stale, with progress and elapsed time printed."""
    onnx_path = Path(onnx_path)
    graph = load_graph(onnx_path)
    require_tensorrt_compatible(graph, str(onnx_path))
    model, precision, _ = read_metadata(graph)
    key = engine_key(onnx_path, profile, model, precision)
    cache = EngineCache(cache_root)
    path, message = cache.lookup(key)
    if path is not None and not force:
        log(f"build-engine: {message}")
        return path
    log(f"build-engine: {message}" if path is None else "build-engine: --force: rebuilding")
    log(
        f"build-engine: building {key.model} {precision} for {key.gpu} "
        f"(sm {key.compute_capability}, TensorRT "
        f"{key.tensorrt}), profile {profile}; this can take minutes"
    )
    started = time.monotonic()
    engine = build_serialized(onnx_path, profile, cache.timing_cache(key), workspace_mb, log)
    elapsed = time.monotonic() - started
    path = cache.store(key, engine, elapsed)
    log(f"build-engine: built in {elapsed:.1f} s -> {path} ({len(engine) / 1e6:.1f} MB)")
    return path


def resolve_onnx(
    model: str, onnx_path: str | None, weights: str | None, precision: str, registration: bool = True
) -> tuple[Path, Geometry]:
    """The ONNX to build from (exported and cached when only a model name is given; `registration=False`:
    with the network's registration off) and its geometry."""
    require_model_for(registration, onnx_path)
    if onnx_path is None:
        from .export import cached_export

        onnx_path = cached_export(model, weights, precision, registration=registration)
    _, _, geometry = read_metadata(load_graph(onnx_path, load_weights=False))
    return Path(onnx_path), geometry


def main(argv: list[str]) -> int:
    from .export import cache_dir

    parser = argparse.ArgumentParser(prog="skyfuse build-engine", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="network name (exported to ONNX first), e.g. skyfuse-rt")
    source.add_argument("--onnx", help="an ONNX file from `skyfuse export`")
    parser.add_argument("--weights", help="trained weights for --model")
    parser.add_argument("--no-registration", action="store_true",
                        help="--model with its registration off (frames that arrive registered)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp16",
        help="graph precision for --model (an --onnx file carries its own)",
    )
    parser.add_argument("--batch", default="1,4,16", help="batch MIN,OPT,MAX or N (default 1,4,16)")
    parser.add_argument("--size", default="640x512", help="frame size the engine is tuned for, WxH")
    parser.add_argument("--min-size", help="smallest frame size, WxH (default size / 2)")
    parser.add_argument("--max-size", help="largest frame size, WxH (default size x 2)")
    parser.add_argument(
        "--cache-dir", default=None, help="engine cache (default $SKYFUSE_CACHE or ~/.cache/skyfuse)"
    )
    parser.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit in MiB")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached engine matches")
    args = parser.parse_args(argv)

    import_tensorrt()  # fail before a possibly long export when TensorRT is missing
    onnx_path, geometry = resolve_onnx(args.model, args.onnx, args.weights, args.precision,
                                       not args.no_registration)
    profile = Profile.from_options(geometry, args.batch, args.size, args.min_size, args.max_size)
    path = ensure_engine(
        onnx_path, profile, args.cache_dir or cache_dir(), force=args.force, workspace_mb=args.workspace_mb
    )
    print(path)
    return 0
