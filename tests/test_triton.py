"""The `triton` engine against a real Triton Inference Server (`make test-triton`; skipped without its
environment, .venv-triton, which that target creates).

The server is the `tritonserver` that nvidia-pytriton bundles, which has the Python backend only: it serves
the repository `skyfuse export --triton-repo` wrote with the platform line swapped for the Python backend,
whose model.py runs the same model.onnx on ONNX Runtime (benchmarks/triton_server.py). Triton itself parses
the rest of the config.pbtxt and enforces it (tensor names, types, dims, max_batch_size, dynamic batching).
Loading the repository unchanged needs a server with the onnxruntime backend (Triton's container images),
which cannot be installed on these machines: that step is not tested here.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (the `triton` extra)")
from benchmarks.triton_server import LocalTriton, server_environment  # noqa: E402

_environment = server_environment()
if isinstance(_environment, str):
    pytest.skip(_environment, allow_module_level=True)

from engines.export import export_network  # noqa: E402
from engines.models import load_network  # noqa: E402
from engines.registry import create_engine  # noqa: E402
from engines.triton_repo import write_model_repository  # noqa: E402
from pipeline.synthetic import FlightConfig, SyntheticFlight  # noqa: E402

SIZE = (512, 640)  # H, W of the thermal camera


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, ONNX path) of skyfuse-rt with its shipped weights, served by a local Triton."""
    folder = tmp_path_factory.mktemp("triton")
    graph = folder / "skyfuse-rt.onnx"
    export_network(load_network("skyfuse-rt"), graph, model_name="skyfuse-rt")
    write_model_repository(graph, folder / "repo")
    with LocalTriton(folder / "repo") as server:
        yield server.url, graph


def _pairs(count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic flight frames: the visible frame resized onto the thermal frame's size (the fuse stage
    pre-warps instead), so the network has real parallax to register."""
    flight = SyntheticFlight(FlightConfig(seed=seed))
    visible = [cv2.resize(flight.visible_frame(i * 40), SIZE[::-1], interpolation=cv2.INTER_AREA)
               for i in range(count)]
    return np.stack(visible), np.stack([flight.thermal_frame(i * 40) for i in range(count)])


@pytest.mark.parametrize("memory", ["system", "none"])
def test_fused_through_triton_is_within_one_gray_level_of_onnxruntime(served, memory):
    url, graph = served
    visible, thermal = _pairs(2)
    engine = create_engine("triton", url=url, model="skyfuse-rt", shared_memory=memory)
    try:
        got = engine.fuse(visible, thermal)
    finally:
        engine.close()
    expected = create_engine("onnxruntime", onnx_path=str(graph)).fuse(visible, thermal)
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 1
    assert np.abs(got.registered.astype(int) - expected.registered).max() <= 1
    np.testing.assert_allclose(got.flow, expected.flow, atol=1e-3)
    assert f"shared memory {memory}" in engine.describe() and "model=skyfuse-rt" in engine.describe()


def test_auto_uses_shared_memory_with_a_server_on_this_machine(served):
    engine = create_engine("triton", url=served[0], model="skyfuse-rt")
    assert "shared memory system" in engine.describe()
    engine.close()


def test_several_ground_stations_share_one_server(served):
    """Three clients at once, each with its own region, batches of one frame: each gets its own frames
    fused (the dynamic batcher may merge their requests into one network call)."""
    url, graph = served
    visible, thermal = _pairs(6, seed=5)
    expected = create_engine("onnxruntime", onnx_path=str(graph)).fuse(visible, thermal).fused
    results: dict[int, np.ndarray] = {}

    def station(index: int) -> None:
        engine = create_engine("triton", url=url, model="skyfuse-rt", shared_memory="system")
        try:
            for frame in (index, index + 3):
                results[frame] = engine.fuse(visible[frame:frame + 1], thermal[frame:frame + 1]).fused[0]
        finally:
            engine.close()

    threads = [threading.Thread(target=station, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(6))
    assert max(np.abs(results[i].astype(int) - expected[i]).max() for i in range(6)) <= 1
