"""Learned engines on the CPU: the wrapper (luma, padding, chroma), the onnxruntime and torch backends,
`auto` selection, and the ONNX cache behind `create_engine("onnxruntime", model=...)`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from engines_testnet import PassThroughNet, TinyFusionNet

from core.errors import SkyfuseError
from engines import auto
from engines.export import export_network
from engines.learned import Geometry, LearnedEngine
from engines.models import read_metadata
from engines.registry import ENGINES, create_engine


def frames(batch: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    visible = cv2.GaussianBlur(rng.integers(0, 256, (batch * height, width, 3), dtype=np.uint8), (5, 5), 0)
    thermal = cv2.GaussianBlur(rng.integers(0, 256, (batch * height, width), dtype=np.uint8), (5, 5), 0)
    return visible.reshape(batch, height, width, 3), thermal.reshape(batch, height, width)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    network = TinyFusionNet().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_network(network, path, model_name="tiny")
    return network, path


def test_wrapper_pads_to_the_size_multiple_crops_back_and_keeps_the_visible_colour():
    network = PassThroughNet(size_multiple=8, flow=(1.5, -2.0))
    engine = create_engine("torch", network=network)
    visible, thermal = frames(2, 30, 45)
    result = engine.fuse(visible, thermal)
    assert network.seen == [(2, 1, 32, 48)]
    assert result.fused.shape == visible.shape and result.fused.dtype == np.uint8
    # fused luminance = visible luminance, chroma re-attached: the colour image comes back (YCrCb rounding)
    assert np.abs(result.fused.astype(int) - visible).max() <= 3
    assert np.array_equal(result.registered, thermal)
    assert result.flow.shape == (2, 30, 45, 2) and result.flow.dtype == np.float32
    assert np.allclose(result.flow[..., 0], 1.5) and np.allclose(result.flow[..., 1], -2.0)


def test_fixed_size_network_gets_resized_frames_and_its_flow_is_rescaled_to_frame_pixels():
    network = PassThroughNet(fixed_size=(32, 32), flow=(1.0, 1.0))
    engine = create_engine("torch", network=network)
    result = engine.fuse(*frames(1, 64, 96))
    assert network.seen == [(1, 1, 32, 32)]
    assert result.fused.shape == (1, 64, 96, 3)
    assert np.allclose(result.flow[..., 0], 3.0) and np.allclose(result.flow[..., 1], 2.0)


def test_bad_batches_are_rejected_with_the_engine_interface_message():
    engine = create_engine("torch", network=PassThroughNet())
    visible, thermal = frames(2, 16, 16)
    with pytest.raises(ValueError, match="differ"):
        engine.fuse(visible, thermal[:1])


def test_onnxruntime_engine_matches_the_torch_engine_and_reads_the_graph_metadata(tiny_onnx):
    network, path = tiny_onnx
    assert read_metadata(__import__("onnx").load(str(path)))[0] == "tiny"
    ort_engine = create_engine("onnxruntime", onnx_path=str(path), threads=1)
    torch_engine = create_engine("torch", network=network)
    visible, thermal = frames(3, 37, 50, seed=3)  # not a multiple of 4: padded and cropped
    got, expected = ort_engine.fuse(visible, thermal), torch_engine.fuse(visible, thermal)
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 1
    assert np.abs(got.flow - expected.flow).max() < 1e-4
    assert np.abs(got.flow).max() > 0.01  # the tiny network really moves the thermal frame
    assert "onnxruntime" in ort_engine.describe() and "model=tiny" in ort_engine.describe()


def test_onnxruntime_engine_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(SkyfuseError, match="not found"):
        create_engine("onnxruntime", onnx_path=str(tmp_path / "missing.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(SkyfuseError):
        create_engine("onnxruntime", onnx_path=str(tmp_path / "junk.onnx"))
    with pytest.raises(SkyfuseError, match="onnxruntime"):
        create_engine("onnxruntime", onnx_path=str(tmp_path / "junk.onnx"), colour="purple")


def test_model_names_are_exported_once_into_the_cache(tmp_path, monkeypatch):
    import engines.export as export

    built = []
    monkeypatch.setenv("SKYFUSE_CACHE", str(tmp_path))
    monkeypatch.setattr(export, "load_network", lambda name, *a: built.append(name) or TinyFusionNet().eval())
    first = create_engine("onnxruntime", model="tiny")
    second = create_engine("onnxruntime", model="tiny")
    assert built == ["tiny"]
    assert len(list((tmp_path / "onnx").glob("tiny-fp32-*.onnx"))) == 1
    visible, thermal = frames(1, 24, 32)
    assert np.array_equal(first.fuse(visible, thermal).fused, second.fuse(visible, thermal).fused)


def test_registration_can_be_turned_off_for_frames_that_arrive_registered(tmp_path, monkeypatch):
    monkeypatch.setenv("SKYFUSE_CACHE", str(tmp_path))
    visible = frames(1, 96, 128, seed=2)[0]
    thermal = np.roll(cv2.cvtColor(visible[0], cv2.COLOR_BGR2GRAY), 4, axis=1)[None]  # 4 px to the right
    registering = create_engine("onnxruntime", model="skyfuse-rt", threads=1)
    fusing = create_engine("onnxruntime", model="skyfuse-rt", registration=False, threads=1)
    assert registering.fuse(visible, thermal).flow[..., 0].mean() > 2.0
    result = fusing.fuse(visible, thermal)
    assert not result.flow.any() and np.abs(result.registered.astype(int) - thermal).max() <= 1
    assert "model=skyfuse-rt-fusion-only" in fusing.describe()
    reference = create_engine("torch", model="skyfuse-rt", registration=False).fuse(visible, thermal)
    assert np.abs(reference.fused.astype(int) - result.fused).max() <= 1


def test_registration_off_is_refused_where_it_cannot_apply(tiny_onnx):
    with pytest.raises(SkyfuseError, match="registration=false needs `model`"):
        create_engine("onnxruntime", onnx_path=str(tiny_onnx[1]), registration=False)
    with pytest.raises(SkyfuseError, match="does not register"):
        create_engine("torch", network=TinyFusionNet(), registration=False)


class _AsyncBackend:
    """Records the order of submissions and completions, as a pipelined GPU backend would see them."""

    name = "fake-async"

    def __init__(self):
        self.events = []

    def submit(self, visible, thermal):
        index = len([e for e in self.events if e[0] == "submit"])
        self.events.append(("submit", index))
        backend = self

        class Pending:
            def wait(self):
                backend.events.append(("wait", index))
                return visible, thermal, np.zeros((visible.shape[0], 2, *visible.shape[2:]), np.float32)

        return Pending()

    def describe(self):
        return self.name

    def close(self):
        pass


def test_fuse_stream_keeps_two_batches_in_flight_and_returns_them_in_order():
    backend = _AsyncBackend()
    engine = LearnedEngine(backend, Geometry(1))
    batches = [frames(1, 8, 8, seed=i) for i in range(4)]
    results = list(engine.fuse_stream(batches, depth=2))
    assert backend.events[:3] == [("submit", 0), ("submit", 1), ("wait", 0)]
    assert [e[1] for e in backend.events if e[0] == "wait"] == [0, 1, 2, 3]
    for (_, thermal), result in zip(batches, results):
        assert np.array_equal(result.registered, thermal)


def test_auto_picks_the_first_usable_backend_and_says_why(tiny_onnx, monkeypatch):
    _, path = tiny_onnx
    monkeypatch.setitem(auto.PROBES, "tensorrt", lambda: "TensorRT is not installed (test)")
    monkeypatch.setitem(auto.PROBES, "torch-cuda", lambda: "PyTorch sees no CUDA device")
    engine = create_engine("auto", onnx_path=str(path), threads=1)
    text = engine.describe()
    assert engine.name == "onnxruntime"
    assert "auto picked onnxruntime" in text
    assert "TensorRT is not installed" in text and "no CUDA device" in text


def test_auto_falls_back_when_a_probed_backend_fails_to_start(tiny_onnx, monkeypatch):
    _, path = tiny_onnx
    # TensorRT "installed" but unable to build, whether or not this machine has it
    monkeypatch.setitem(auto.PROBES, "tensorrt", lambda: None)
    monkeypatch.setitem(ENGINES, "tensorrt", "engines_for_tests:UnbuildableEngine")
    monkeypatch.setitem(auto.PROBES, "torch-cuda", lambda: "PyTorch sees no CUDA device")
    engine = create_engine("auto", onnx_path=str(path))
    assert engine.name == "onnxruntime"
    assert "tensorrt: failed to start (cannot build an engine here (test))" in engine.describe()


def test_auto_without_any_backend_is_a_user_error(monkeypatch):
    for name in auto.CANDIDATES:
        monkeypatch.setitem(auto.PROBES, name, lambda: "missing (test)")
    with pytest.raises(SkyfuseError, match="no engine backend is usable"):
        create_engine("auto")
