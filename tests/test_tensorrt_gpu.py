"""TensorRT and pycuda on a real GPU. Skipped, with the reason, where they are missing (TensorRT cannot be
installed on the project's machines; pycuda builds only where a CUDA driver exists, see GPU.md)."""

from __future__ import annotations

import numpy as np
import pytest
from engines_testnet import TinyFusionNet


def _missing(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or pycuda's own errors without a driver
        return f"{module} is not usable here ({type(exc).__name__}: {exc})"
    return None


def _cuda_device() -> str | None:
    problem = _missing("pycuda.driver")
    if problem:
        return problem
    import pycuda.driver as cuda

    try:
        cuda.init()
        return None if cuda.Device.count() else "no CUDA device"
    except Exception as exc:
        return f"CUDA is not usable ({exc})"


pycuda_reason = _cuda_device()
tensorrt_reason = _missing("tensorrt") or pycuda_reason


@pytest.mark.skipif(pycuda_reason is not None, reason=pycuda_reason or "")
def test_pycuda_async_copy_round_trip_through_page_locked_memory():
    import pycuda.autoinit  # noqa: F401
    import pycuda.driver as cuda

    host = cuda.pagelocked_empty((4, 1, 64, 80), np.float32)
    host[:] = np.random.default_rng(0).random(host.shape, dtype=np.float32)
    back = cuda.pagelocked_empty(host.shape, np.float32)
    device = cuda.mem_alloc(host.nbytes)
    stream = cuda.Stream()
    cuda.memcpy_htod_async(device, host, stream)
    cuda.memcpy_dtoh_async(back, device, stream)
    stream.synchronize()
    assert np.array_equal(back, host)


@pytest.mark.skipif(tensorrt_reason is not None, reason=tensorrt_reason or "")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_tensorrt_engine_matches_onnxruntime_and_double_buffering_keeps_order(precision, tolerance, tmp_path):
    from engines.export import export_network
    from engines.learned import Geometry, LearnedEngine
    from engines.onnxruntime_backend import OnnxRuntimeBackend
    from engines.tensorrt_build import ensure_engine
    from engines.tensorrt_cache import Profile
    from engines.tensorrt_runtime import TensorRTBackend

    path = tmp_path / f"tiny-{precision}.onnx"
    export_network(TinyFusionNet().eval(), path, model_name="tiny", precision=precision)
    profile = Profile.from_options(Geometry(4), batch="1,2,4", size="80x64")
    engine_path = ensure_engine(path, profile, tmp_path / "cache")
    trt_backend, ort_backend = TensorRTBackend(engine_path, profile), OnnxRuntimeBackend(path)
    rng = np.random.default_rng(0)
    batches = [tuple(rng.random((2, 1, 64, 80), dtype=np.float32) for _ in range(2)) for _ in range(4)]
    for visible, thermal in batches:
        for got, expected in zip(trt_backend.run(visible, thermal), ort_backend.run(visible, thermal)):
            assert np.abs(got - expected).max() <= tolerance * max(1.0, np.abs(expected).max())
    engine = LearnedEngine(trt_backend, Geometry(4))
    frames = [((v[:, 0] * 255).astype(np.uint8)[..., None].repeat(3, -1), (t[:, 0] * 255).astype(np.uint8))
              for v, t in batches]
    streamed = list(engine.fuse_stream(frames, depth=2))
    for (visible, thermal), result in zip(frames, streamed):
        assert np.array_equal(result.fused, engine.fuse(visible, thermal).fused)
