"""The `triton` engine's client side and the model repository, on the CPU without a Triton server.

The repository's config.pbtxt is parsed with Triton's own ModelConfig schema (tritonclient ships it). The
engine talks real gRPC (tritonclient.grpc) to an in-process stand-in that implements the few Triton calls
it makes the way the server does: it maps registered shared memory by key (and refuses, as a server on
another machine must), reads inputs from the region or the message, enforces max_batch_size, runs the
graph on ONNX Runtime and writes outputs where the request asks. The real server: tests/test_triton.py.
"""

from __future__ import annotations

import os
from concurrent import futures
from pathlib import Path

import numpy as np
import onnx
import pytest
from engines_testnet import TinyFusionNet
from onnx import TensorProto, helper

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (the `triton` extra)")
import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402

from core.errors import SkyfuseError  # noqa: E402
from engines.export import export_network  # noqa: E402
from engines.learned import Geometry  # noqa: E402
from engines.models import write_metadata  # noqa: E402
from engines.registry import create_engine  # noqa: E402
from engines.triton_backend import ALIGNMENT, batch_chunks, config_geometry, region_plan  # noqa: E402
from engines.triton_repo import write_model_repository  # noqa: E402
from training import export as export_command  # noqa: E402


def _config(model_dir: Path):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


class StandIn(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The Triton calls the engine makes, answered as Triton answers them (one model)."""

    def __init__(self, model_dir: Path, can_map: bool = True):
        import onnxruntime as ort

        self.config = _config(model_dir)
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
        self.can_map = can_map
        self.regions: dict[str, np.ndarray] = {}  # registered name -> the mapped bytes
        self.registered: list[tuple[str, int]] = []
        self.unregistered: list[str] = []
        self.requests: list[dict] = []  # per request: batch size and where each input came from

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == self.config.name)

    def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=self.config)

    def SystemSharedMemoryRegister(self, request, context):
        path = Path("/dev/shm") / request.key.lstrip("/")
        if not self.can_map or not path.exists():
            context.abort(grpc.StatusCode.INTERNAL, f"Unable to open shared memory region: '{request.key}'")
        self.regions[request.name] = np.memmap(path, np.uint8, "r+", request.offset, (request.byte_size,))
        self.registered.append((request.name, request.byte_size))
        return service_pb2.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryUnregister(self, request, context):
        self.regions.pop(request.name, None)
        self.unregistered.append(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    def _region(self, params, nbytes: int) -> np.ndarray:
        offset = params["shared_memory_offset"].int64_param if "shared_memory_offset" in params else 0
        return self.regions[params["shared_memory_region"].string_param][offset:offset + nbytes]

    def ModelInfer(self, request, context):
        feeds, sources, raw = {}, {}, iter(request.raw_input_contents)
        for tensor in request.inputs:
            shape = tuple(tensor.shape)
            nbytes = int(np.prod(shape)) * 4
            if "shared_memory_region" in tensor.parameters:
                data = self._region(tensor.parameters, nbytes).tobytes()
                sources[tensor.name] = tensor.parameters["shared_memory_region"].string_param
            else:
                data = next(raw)
                sources[tensor.name] = "message"
            assert tensor.datatype == "FP32" and len(data) == nbytes
            feeds[tensor.name] = np.frombuffer(data, np.float32).reshape(shape)
        batch = len(feeds["visible"])
        self.requests.append({"batch": batch, **sources})
        if batch > self.config.max_batch_size:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"inference request batch-size must be <= {self.config.max_batch_size}")
        names = [o.name for o in request.outputs]
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        for wanted, result in zip(request.outputs, self.session.run(names, feeds)):
            response.outputs.add(name=wanted.name, datatype="FP32", shape=result.shape)
            if "shared_memory_region" in wanted.parameters:
                self._region(wanted.parameters, result.nbytes)[:] = result.reshape(-1).view(np.uint8)
            else:
                response.raw_output_contents.append(result.tobytes())
        return response


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("triton") / "tiny.onnx"
    export_network(TinyFusionNet().eval(), path, model_name="tiny")
    return path


def _serve(standin: StandIn):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(standin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def standin(tiny_graph, tmp_path, request):
    max_batch, can_map = getattr(request, "param", (8, True))
    model_dir = write_model_repository(tiny_graph, tmp_path / "repo", max_batch_size=max_batch)
    stand_in = StandIn(model_dir, can_map)
    server, url = _serve(stand_in)
    yield stand_in, url
    server.stop(None)


def _pair(batch: int, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8),
            rng.integers(0, 256, (batch, height, width), dtype=np.uint8))


def test_repository_config_is_a_triton_model_config_with_the_graphs_tensors(tiny_graph, tmp_path):
    model_dir = write_model_repository(tiny_graph, tmp_path / "repo")
    assert model_dir == tmp_path / "repo" / "tiny"
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_graph.read_bytes()
    config = _config(model_dir)
    assert (config.name, config.platform, config.max_batch_size) == ("tiny", "onnxruntime_onnx", 8)
    tensors = {t.name: (t.data_type, list(t.dims)) for t in (*config.input, *config.output)}
    fp32 = model_config_pb2.TYPE_FP32
    assert tensors == {"visible": (fp32, [1, -1, -1]), "thermal": (fp32, [1, -1, -1]),
                       "fused": (fp32, [1, -1, -1]), "registered": (fp32, [1, -1, -1]),
                       "flow": (fp32, [2, -1, -1])}
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config_geometry(config) == ("tiny", "fp32", Geometry(4, None))


def test_export_command_writes_the_repository_of_the_graph_it_exported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_command, "load_network", lambda name, weights=None: TinyFusionNet().eval())
    output = tmp_path / "m16.onnx"
    assert export_command.main(["--model", "tiny", "--precision", "fp16", "--output", str(output),
                        "--triton-repo", str(tmp_path / "repo"), "--triton-max-batch", "4"]) == 0
    model_dir = tmp_path / "repo" / "tiny-fp16"
    assert (model_dir / "1" / "model.onnx").read_bytes() == output.read_bytes()
    config = _config(model_dir)
    assert config.max_batch_size == 4 and config.parameters["skyfuse.precision"].string_value == "fp16"
    assert f"Triton model repository -> {model_dir}" in capsys.readouterr().out


def _identity_graph(path: Path, shape, names=("visible", "thermal")) -> None:
    """fused = visible, registered = thermal, flow = both: a graph of the engines' convention."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 1, *shape]) for n in names]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", c, *shape])
               for n, c in (("fused", 1), ("registered", 1), ("flow", 2))]
    nodes = [helper.make_node("Identity", [names[0]], ["fused"]),
             helper.make_node("Identity", [names[1]], ["registered"]),
             helper.make_node("Concat", list(names), ["flow"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    write_metadata(model, "fixed", "fp16", Geometry(8, tuple(shape)))
    onnx.save(model, str(path))


def test_repository_of_a_fixed_size_graph_and_refusal_of_other_graphs(tmp_path):
    _identity_graph(tmp_path / "fixed.onnx", (64, 80))
    model_dir = write_model_repository(tmp_path / "fixed.onnx", tmp_path / "repo", max_batch_size=6)
    config = _config(model_dir)
    assert model_dir.name == config.name == "fixed-fp16"  # precision in the name unless fp32
    assert [list(t.dims) for t in config.input] == [[1, 64, 80]] * 2
    assert list(config.output[2].dims) == [2, 64, 80]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 6]
    assert config_geometry(config) == ("fixed", "fp16", Geometry(8, (64, 80)))
    _identity_graph(tmp_path / "other.onnx", (64, 80), names=("rgb", "ir"))
    with pytest.raises(SkyfuseError, match="not the engines'"):
        write_model_repository(tmp_path / "other.onnx", tmp_path / "repo")


def test_a_model_from_elsewhere_gets_its_geometry_from_the_input_dims():
    config = model_config_pb2.ModelConfig(name="theirs", max_batch_size=4)
    config.input.add(name="visible", data_type=model_config_pb2.TYPE_FP32, dims=[1, 256, 320])
    assert config_geometry(config) == ("theirs", "fp32", Geometry(1, (256, 320)))
    config.input[0].dims[1:] = [-1, -1]
    assert config_geometry(config) == ("theirs", "fp32", Geometry(1, None))


def test_region_plan_places_every_tensor_aligned_and_apart():
    plan, total = region_plan(3, 90, 100)
    frame = 3 * 90 * 100 * 4
    assert [p.nbytes for p in plan.values()] == [frame, frame, frame, frame, 2 * frame]
    assert plan["flow"].shape == (3, 2, 90, 100)
    spans = sorted((p.offset, p.offset + p.nbytes) for p in plan.values())
    assert all(start % ALIGNMENT == 0 for start, _ in spans)
    assert all(end <= following for (_, end), (following, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= total < spans[-1][1] + ALIGNMENT
    assert batch_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


@pytest.mark.parametrize("memory", ["system", "none"])
def test_engine_through_the_standin_fuses_as_onnxruntime_does(standin, tiny_graph, memory):
    stand_in, url = standin
    engine = create_engine("triton", url=url, model="tiny", shared_memory=memory)
    reference = create_engine("onnxruntime", onnx_path=str(tiny_graph))
    visible, thermal = _pair(3, 90, 100)  # 90 is padded to 92 (size multiple 4) and cropped back
    got, expected = engine.fuse(visible, thermal), reference.fuse(visible, thermal)
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 1
    np.testing.assert_allclose(got.flow, expected.flow, atol=1e-5)
    assert np.array_equal(got.registered, expected.registered)
    region = engine.backend.region.name if memory == "system" else "message"
    assert stand_in.requests == [{"batch": 3, "visible": region, "thermal": region}]
    assert f"shared memory {memory}" in engine.describe() and "model=tiny" in engine.describe()
    engine.close()


@pytest.mark.parametrize("standin", [(2, True)], indirect=True)
def test_batches_larger_than_the_models_max_batch_size_are_split(standin, tiny_graph):
    stand_in, url = standin
    engine = create_engine("triton", url=url, model="tiny", shared_memory="system")
    visible, thermal = _pair(5, 64, 80, seed=1)
    got = engine.fuse(visible, thermal)
    expected = create_engine("onnxruntime", onnx_path=str(tiny_graph)).fuse(visible, thermal)
    assert [r["batch"] for r in stand_in.requests] == [2, 2, 1]
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 1
    engine.close()


def test_the_region_grows_for_larger_requests_and_is_removed_on_close(standin):
    stand_in, url = standin
    engine = create_engine("triton", url=url, model="tiny", shared_memory="system")
    name = engine.backend.region.name
    for size in ((64, 80), (32, 40), (128, 160)):
        engine.fuse(*_pair(1, *size))
    sizes = [nbytes for registered, nbytes in stand_in.registered if registered == name]
    assert sizes == [region_plan(1, 8, 8)[1], region_plan(1, 64, 80)[1], region_plan(1, 128, 160)[1]]
    assert stand_in.unregistered == [name, name]  # each growth re-registers
    key = Path("/dev/shm") / engine.backend.region.key.lstrip("/")
    assert key.exists()
    engine.close()
    assert stand_in.unregistered == [name] * 3 and not key.exists()


@pytest.mark.parametrize("standin", [(8, False)], indirect=True)
def test_auto_falls_back_to_grpc_messages_when_the_server_cannot_map_the_region(standin):
    stand_in, url = standin
    ours = f"skyfuse-{os.getpid()}-*"
    before = set(Path("/dev/shm").glob(ours))
    engine = create_engine("triton", url=url, model="tiny", shared_memory="auto")
    assert "shared memory none: the server cannot map" in engine.describe()
    engine.fuse(*_pair(1, 64, 80))
    assert stand_in.requests[-1]["visible"] == "message"
    assert set(Path("/dev/shm").glob(ours)) == before  # the refused region is not left behind
    engine.close()
    with pytest.raises(SkyfuseError, match="shared_memory=system: the Triton server .* cannot map"):
        create_engine("triton", url=url, model="tiny", shared_memory="system")


def test_wrong_model_options_and_unreachable_servers_are_refused(standin):
    _, url = standin
    with pytest.raises(SkyfuseError, match="no ready model 'nope'"):
        create_engine("triton", url=url, model="nope")
    with pytest.raises(SkyfuseError, match="protocol must be grpc"):
        create_engine("triton", url=url, model="tiny", protocol="http")
    with pytest.raises(SkyfuseError, match="shared_memory must be one of"):
        create_engine("triton", url=url, model="tiny", shared_memory="cuda")
    with pytest.raises(SkyfuseError, match="cannot be used"):
        create_engine("triton", url="127.0.0.1:1", model="tiny", timeout_s=2)
