"""The TensorRT backend's logic on the CPU: profiles, cache keys and the engine cache, buffer plans, and
the builder driven through a stand-in for the TensorRT 11 Python API (TensorRT itself cannot be installed
here; tests/test_tensorrt_gpu.py runs the real thing where it exists)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from engines_testnet import TinyFusionNet

import engines.tensorrt_build as build
from core.errors import SkyfuseError
from engines.export import export_network
from engines.learned import Geometry
from engines.registry import create_engine
from engines.tensorrt_cache import CacheKey, EngineCache, GpuIdentity, Profile, tensorrt_major_minor
from engines.tensorrt_runtime import TensorSpec, check_io, plan_buffers

REMOVED_IN_11 = {
    "FP16",
    "INT8",
    "BF16",
    "FP8",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "set_calibration_profile",
    "set_quantization_flag",
    "device_memory_size",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "execute_async_v2",
    "get_binding_shape",
    "EXPLICIT_BATCH",
}


def test_profiles_round_sizes_up_to_the_network_multiple_and_default_min_max():
    profile = Profile.from_options(Geometry(16), batch="1,4,16", size="630x500")
    assert profile.opt == (4, 512, 640)
    assert profile.min == (1, 256, 320) and profile.max == (16, 1008, 1264)
    assert profile.input_shapes()["visible"][1] == (4, 1, 512, 640)
    assert profile.contains(2, 512, 640) and not profile.contains(32, 512, 640)
    with pytest.raises(SkyfuseError, match="outside the engine's profile"):
        profile.require(1, 2048, 2048)
    fixed = Profile.from_options(Geometry(1, (256, 512)), batch=2, size="640x512")
    assert fixed.min == fixed.opt == fixed.max == (2, 256, 512)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"size": "640"}, "WIDTHxHEIGHT"),
        ({"size": "0x512"}, "at least 16x16"),
        ({"batch": "4,2,8"}, "MIN <= OPT"),
        ({"batch": "a"}, "batch"),
        ({"size": "640x512", "min_size": "1280x1024"}, "grow"),
    ],
)
def test_bad_profile_options_are_user_errors(options, message):
    with pytest.raises(SkyfuseError, match=message):
        Profile.from_options(Geometry(16), **options)


def _key(**changes) -> CacheKey:
    fields = dict(
        model="skyfuse-rt",
        gpu="Orin",
        compute_capability="8.7",
        tensorrt="10.3",
        onnx_sha256="ab" * 32,
        precision="fp16",
        profile="1x256x320_4x512x640_16x1024x1280",
    )
    return CacheKey(**{**fields, **changes})


def test_cache_key_covers_gpu_tensorrt_graph_precision_and_profile():
    base = _key()
    assert base.digest() == _key().digest()
    for field, value in [
        ("gpu", "NVIDIA H100"),
        ("compute_capability", "9.0"),
        ("tensorrt", "11.4"),
        ("onnx_sha256", "cd" * 32),
        ("precision", "fp32"),
        ("profile", "x"),
    ]:
        assert _key(**{field: value}).digest() != base.digest(), field
    assert tensorrt_major_minor("10.3.0.26") == "10.3"
    with pytest.raises(SkyfuseError):
        tensorrt_major_minor("ten")


def test_engine_cache_hits_and_explains_why_a_stale_engine_is_rebuilt(tmp_path):
    cache = EngineCache(tmp_path)
    old = _key()
    assert cache.lookup(old)[0] is None
    stored = cache.store(old, b"engine", 12.0)
    assert cache.lookup(old) == (stored, f"using cached TensorRT engine {stored}")
    path, message = cache.lookup(_key(tensorrt="11.4", gpu="NVIDIA H100"))
    assert path is None
    assert "rebuilding" in message and "tensorrt '10.3' -> '11.4'" in message and "NVIDIA H100" in message


def test_buffer_plan_and_io_check():
    specs = [
        TensorSpec("visible", True, np.dtype(np.float32), 1),
        TensorSpec("thermal", True, np.dtype(np.float32), 1),
        TensorSpec("fused", False, np.dtype(np.float32), 1),
        TensorSpec("registered", False, np.dtype(np.float32), 1),
        TensorSpec("flow", False, np.dtype(np.float32), 2),
    ]
    check_io(specs)
    plan = plan_buffers(specs, 4, 512, 640)
    assert plan["flow"] == ((4, 2, 512, 640), 4 * 2 * 512 * 640 * 4)
    assert plan["visible"][0] == (4, 1, 512, 640)
    with pytest.raises(SkyfuseError, match="float32"):
        check_io(specs[:4] + [TensorSpec("flow", False, np.dtype(np.float16), 2)])
    with pytest.raises(SkyfuseError, match="does not match"):
        check_io(specs[:4])


class FakeTensorRT(types.ModuleType):
    """The TensorRT 11 Python API surface the builder may use, and nothing that 11 removed."""

    def __init__(self, version: str):
        super().__init__("tensorrt")
        self.__version__, self.calls = version, []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class Shapes:
            def set_shape(self, name, low, opt, high):
                fake.calls.append(("set_shape", name, low, opt, high))

        class TimingCache:
            def serialize(self):
                return b"timings"

        class Config:
            progress_monitor = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return TimingCache()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Shapes()

            def build_serialized_network(self, network, config):
                config.progress_monitor.phase_start("Building engine", None, 3)
                config.progress_monitor.phase_finish("Building engine")
                fake.calls.append(("build_serialized_network",))
                return b"serialized-engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", Path(path).name))
                return True

        self.Logger, self.IProgressMonitor, self.Builder, self.OnnxParser = (
            Logger,
            IProgressMonitor,
            Builder,
            OnnxParser,
        )
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")


@pytest.fixture
def tiny_onnx(tmp_path):
    path = tmp_path / "tiny16.onnx"
    export_network(TinyFusionNet().eval(), path, model_name="tiny", precision="fp16")
    return path


def test_builder_builds_strongly_typed_caches_and_rebuilds_on_a_new_tensorrt(
    tiny_onnx, tmp_path, monkeypatch
):
    monkeypatch.setattr(build, "gpu_identity", lambda: GpuIdentity("Orin", "8.7"))
    fake = FakeTensorRT("10.3.0.26")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    profile = Profile.from_options(Geometry(4), batch="1,2,4", size="64x48")
    messages = []
    first = build.ensure_engine(tiny_onnx, profile, tmp_path / "cache", log=messages.append)
    assert first.read_bytes() == b"serialized-engine"
    assert ("create_network", 1 << 0) in fake.calls  # STRONGLY_TYPED
    assert ("set_shape", "visible", (1, 1, 24, 32), (2, 1, 48, 64), (4, 1, 96, 128)) in fake.calls
    assert ("set_timing_cache", False) in fake.calls
    assert any("Building engine" in m for m in messages) and any("built in" in m for m in messages)
    assert (tmp_path / "cache" / "tensorrt" / "timing-Orin-sm8.7-trt10.3.cache").read_bytes() == b"timings"

    fake.calls.clear()
    assert build.ensure_engine(tiny_onnx, profile, tmp_path / "cache", log=messages.append) == first
    assert ("build_serialized_network",) not in fake.calls  # cache hit

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("11.4.1.2"))
    messages.clear()
    rebuilt = build.ensure_engine(tiny_onnx, profile, tmp_path / "cache", log=messages.append)
    assert rebuilt != first
    assert any("tensorrt '10.3' -> '11.4'" in m and "rebuilding" in m for m in messages)


def test_tensorrt_code_uses_no_api_removed_in_tensorrt_11():
    root = Path(build.__file__).parent
    for path in sorted(root.glob("tensorrt_*.py")):
        used = {
            node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
        }
        assert not used & REMOVED_IN_11, (path.name, used & REMOVED_IN_11)


def test_without_tensorrt_the_command_and_the_engine_say_so(tmp_path):
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("TensorRT is installed here")
    with pytest.raises(SkyfuseError, match="TensorRT is not installed"):
        build.main(["--onnx", str(tmp_path / "x.onnx")])
    with pytest.raises(SkyfuseError, match="TensorRT is not installed"):
        create_engine("tensorrt", onnx_path=str(tmp_path / "x.onnx"))


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
