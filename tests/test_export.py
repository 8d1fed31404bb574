"""ONNX export, the TensorRT compatibility check, and the fp16 graph with its parity check, on the CPU."""

from __future__ import annotations

import re

import onnx
import pytest
import torch
from engines_testnet import TinyFusionNet
from onnx import TensorProto, helper
from torch import nn

from core.errors import SkyfuseError
from engines import export
from engines.export import export_network, verify_export
from engines.learned import Geometry
from engines.models import network_geometry, read_metadata
from engines.onnx_check import opset_range, tensorrt_ops, tensorrt_problems
from engines.precision import check_fp16_parity, convert_fp16_file
from engines.quantize import CALIBRATION_SIZE
from training import export as export_command

# Every network with its shipped architecture; the paper networks with narrow channels (same operators and
# graph structure) so the CPU suite stays fast. Full-width exports are exercised by `skyfuse export`.
NETWORKS = {
    "skyfuse-rt": {},
    "umf-cmgr": {"cpstn_width": 8, "cpstn_blocks": 2, "mrrn_width": 8, "difn_width": 8, "difn_growth": 8},
    "misfit-v": {"width": 8, "attention_dim": 16, "attention_heads": 2},
    "dae-fuse": {"dim": 16, "heads": 2, "high_blocks": 1, "vit_depth": 1},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    network = TinyFusionNet().eval()
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_network(network, path, model_name="tiny")
    return network, path


def test_export_matches_pytorch_at_two_sizes_and_batches_with_dynamic_axes(tiny):
    network, path = tiny
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["visible", "thermal"]
    assert [o.name for o in model.graph.output] == ["fused", "registered", "flow"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    assert model.opset_import[0].version >= 17
    assert verify_export(network, path, [(64, 80), (96, 128)], batch=3) <= 1e-4


def test_the_tensorrt_check_accepts_the_exported_graph_and_names_its_source(tiny):
    assert tensorrt_problems(onnx.load(str(tiny[1]))) == []
    ops = tensorrt_ops()
    assert "onnx-tensorrt" in ops["source"] and ops["tensorrt_version"]
    assert "GridSample" in ops["supported"] and "Conv" in ops["supported"]


def _graph(nodes, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name, elem=TensorProto.FLOAT, shape=("n",)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_the_tensorrt_check_rejects_unsupported_float64_value_shaped_and_old_opset_graphs():
    x, y = _tensor("x"), _tensor("y")
    unsupported = _graph([helper.make_node("Det", ["x"], ["y"])], [_tensor("x", shape=(2, 2))], [y])
    assert any("Det is not in TensorRT" in p for p in tensorrt_problems(unsupported))
    custom = _graph([helper.make_node("Warp", ["x"], ["y"], domain="my.ops")], [x], [y])
    assert any("custom operator my.ops::Warp" in p for p in tensorrt_problems(custom))
    double = _graph([helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
                     helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)], [x], [y])
    assert any("float64" in p for p in tensorrt_problems(double))
    double_input = _graph([helper.make_node("Identity", ["x"], ["y"])], [_tensor("x", TensorProto.DOUBLE)],
                          [_tensor("y", TensorProto.DOUBLE)])
    assert any("tensor x is float64" in p for p in tensorrt_problems(double_input))
    nonzero = _graph([helper.make_node("NonZero", ["x"], ["y"])], [x], [_tensor("y", TensorProto.INT64)])
    assert any("data-dependent" in p for p in tensorrt_problems(nonzero))
    reshape_by_value = _graph([helper.make_node("Reshape", ["x", "s"], ["y"])],
                              [x, _tensor("s", TensorProto.INT64, (1,))], [y])
    assert any("Reshape input 1 comes from tensor values" in p for p in tensorrt_problems(reshape_by_value))
    by_shape = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    reshape_by_shape = _graph(by_shape, [x], [y])
    assert tensorrt_problems(reshape_by_shape) == []
    old = _graph([helper.make_node("Identity", ["x"], ["y"])], [x], [y], opset=opset_range()[0] - 1)
    assert any("opset" in p for p in tensorrt_problems(old))
    cubic = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic")],
                   [_tensor("x", shape=(1, 1, 4, 4))], [_tensor("y", shape=(1, 1, 8, 8))],
                   initializers=[helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])])
    assert any("Resize mode 'cubic'" in p for p in tensorrt_problems(cubic))


def test_fp16_graph_keeps_float32_io_and_flow_path_and_passes_parity(tiny, tmp_path):
    _, path = tiny
    fp16 = convert_fp16_file(path, tmp_path / "tiny16.onnx")
    io_values = list(fp16.graph.input) + list(fp16.graph.output)
    assert {v.type.tensor_type.elem_type for v in io_values} == {TensorProto.FLOAT}
    inits = {t.name: t.data_type for t in fp16.graph.initializer}
    conv_weights = [inits[n.input[1]] for n in fp16.graph.node if n.op_type == "Conv"]
    # feature convolutions in fp16; the head that predicts the flow stays float32 (flow path)
    assert conv_weights == [TensorProto.FLOAT16, TensorProto.FLOAT16, TensorProto.FLOAT]
    types = {v.name: v.type.tensor_type.elem_type for v in fp16.graph.value_info}
    for node in fp16.graph.node:
        if node.op_type == "GridSample":  # image and sampling grid both float32
            assert {types.get(name, TensorProto.FLOAT) for name in node.input} == {TensorProto.FLOAT}
        if node.op_type == "Resize":  # the flow upsampling (flow path)
            assert types[node.output[0]] == TensorProto.FLOAT
    assert {p.key: p.value for p in fp16.metadata_props}["skyfuse.precision"] == "fp16"
    report = check_fp16_parity(path, tmp_path / "tiny16.onnx", [(64, 80), (128, 96)])
    assert report.passed, str(report)
    assert 0 < report.max_gray <= 2.0


def test_fp16_parity_catches_a_graph_that_overflows_fp16(tmp_path):
    network = TinyFusionNet(scale=1e5).eval()  # activations x 1e5 overflow fp16 (max 65504)
    export_network(network, tmp_path / "big.onnx", model_name="big")
    convert_fp16_file(tmp_path / "big.onnx", tmp_path / "big16.onnx")
    report = check_fp16_parity(tmp_path / "big.onnx", tmp_path / "big16.onnx", [(32, 32)])
    assert not report.passed


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_check_sizes_change_height_width_and_pixels_and_never_grow_past_the_traced_size(name):
    from engines.networks import NETWORKS as specs

    m = specs[name].size_multiple
    (height, width), (h, w) = export.verify_sizes(Geometry(m))
    assert (height, width) == export.sample_size(Geometry(m))
    assert h != height and w != width and h * w != height * width
    assert h % m == 0 and w % m == 0 and h >= m
    # ONNX Runtime materialises attention scores (tokens²): a larger size, (2H, H+W), took misfit-v past 24 GB
    assert h * w <= height * width


class BakedSizeNet(nn.Module):
    """Scales the visible frame by a ramp as long as one axis, read as a Python int: the tracer bakes the
    traced length into the graph, which then fails at any other length of that axis."""

    size_multiple = 4

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        length = int(visible.shape[self.axis])
        shape = [1, 1, 1, 1]
        shape[self.axis] = length
        fused = visible * torch.linspace(0.0, 1.0, length).view(shape)
        return fused, thermal, torch.cat((thermal, thermal), 1) * 0.0


@pytest.mark.parametrize("axis", [2, 3], ids=["height", "width"])
def test_the_check_sizes_catch_a_graph_baked_to_the_traced_height_or_width(axis, tmp_path):
    network = BakedSizeNet(axis).eval()
    export_network(network, tmp_path / "baked.onnx", model_name="baked", exporter="torchscript")
    sizes = export.verify_sizes(network_geometry(network))
    assert verify_export(network, tmp_path / "baked.onnx", sizes[:1]) <= 1e-6
    with pytest.raises(SkyfuseError, match="not dynamic"):
        verify_export(network, tmp_path / "baked.onnx", sizes)


def test_export_command_writes_verified_fp32_and_fp16_graphs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_command, "load_network", lambda name, weights=None: TinyFusionNet().eval())
    assert export_command.main(["--model", "tiny", "--output", str(tmp_path / "m.onnx")]) == 0
    fp16_args = ["--model", "tiny", "--precision", "fp16", "--output", str(tmp_path / "m16.onnx")]
    assert export_command.main(fp16_args) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime vs PyTorch" in out and "fused vs fp32" in out
    assert re.search(r"export: tiny fp16 done, peak RSS \d+ MiB\n$", out)
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m16.onnx").is_file()


def test_export_command_exports_a_network_with_its_registration_off(tmp_path):
    import onnxruntime as ort

    path = tmp_path / "fusion.onnx"
    assert export_command.main(["--model", "skyfuse-rt", "--no-registration", "--output", str(path)]) == 0
    assert read_metadata(onnx.load(str(path)))[0] == "skyfuse-rt-fusion-only"
    rng = torch.Generator().manual_seed(0)
    visible, thermal = (torch.rand(1, 1, 64, 96, generator=rng).numpy() for _ in range(2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _, registered, flow = session.run(None, {"visible": visible, "thermal": thermal})
    assert not flow.any() and abs(registered - thermal).max() < 1e-5


def test_export_command_errors_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(export_command, "load_network", lambda name, weights=None: TinyFusionNet().eval())
    with pytest.raises(SkyfuseError, match="opset"):
        export_command.main(["--model", "tiny", "--opset", "13", "--output", str(tmp_path / "m.onnx")])


def test_the_export_list_covers_every_network():
    from engines.networks import NETWORKS as specs

    assert set(NETWORKS) == set(specs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (network, fp32 path, sizes), exported once per test module."""
    from engines.models import load_network

    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)  # untrained weights: the same ones every run
            network = load_network(name, overrides=NETWORKS[name])
            path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
            export_network(network, path, model_name=name)
            cache[name] = network, path, export.verify_sizes(network_geometry(network))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(NETWORKS))  # misfit-v, dae-fuse: torch.export, ~30 s each
def test_every_network_exports_matches_pytorch_and_passes_the_tensorrt_check(name, exported):
    network, path, sizes = exported(name)
    assert tensorrt_problems(onnx.load(str(path))) == []
    assert verify_export(network, path, sizes, batch=2) <= 1e-4


@pytest.mark.parametrize("name", list(NETWORKS))  # misfit-v, dae-fuse: torch.export, ~30 s each
def test_every_network_fp16_graph_is_within_two_gray_levels_of_fp32(name, exported, tmp_path):
    network, path, _ = exported(name)
    fp16 = convert_fp16_file(path, tmp_path / f"{name}16.onnx")
    assert tensorrt_problems(fp16) == []
    assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    geometry = network_geometry(network)
    size = geometry.fixed_size or geometry.padded(*CALIBRATION_SIZE)  # as `skyfuse export` checks it
    report = check_fp16_parity(path, tmp_path / f"{name}16.onnx", [size])
    assert report.passed, str(report)


def test_int8_graph_has_symmetric_qdq_keeps_the_flow_head_float_and_metrics_within_two_percent(tmp_path):
    from engines.quantize import check_int8_metrics, quantize_int8, synthetic_pairs
    from training.export import fusion_score

    torch.manual_seed(0)
    fp32 = tmp_path / "tiny.onnx"
    export_network(TinyFusionNet().eval(), fp32, model_name="tiny")
    model = quantize_int8(fp32, tmp_path / "tiny8.onnx", synthetic_pairs(4, 64, 80))
    assert tensorrt_problems(model) == []
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(not onnx.numpy_helper.to_array(inits[z]).any() for z in zero_points)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert [n.input[0] in quantized_inputs for n in convs] == [True, True, False]  # flow head stays float
    report = check_int8_metrics(fp32, tmp_path / "tiny8.onnx", synthetic_pairs(3, 64, 80, seed=1),
                                fusion_score)
    assert set(report.scores) == {"Qabf", "SSIM"}
    assert report.passed, str(report)


def test_the_tensorrt_check_wants_reduction_axes_as_constants():
    x = _tensor("x", shape=(2, 3))
    axes_input = _graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"])],
                        [x, _tensor("axes", TensorProto.INT64, (1,))], [_tensor("y", shape=(2, 1))])
    assert any("ReduceSum input 1 must be a constant" in p for p in tensorrt_problems(axes_input))
    axes_constant = _graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], [x],
                           [_tensor("y", shape=(2, 1))],
                           initializers=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    assert tensorrt_problems(axes_constant) == []
