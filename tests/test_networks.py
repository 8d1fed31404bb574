"""The fusion networks: I/O convention, flow sign, size constraints, paper parameter counts, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SkyfuseError
from engines.networks import NETWORKS, build_network, pad_to_multiple, registers, save_weights, spec
from engines.networks.dae_fuse import Discriminator
from engines.networks.misfit_v import PatchDiscriminator
from engines.networks.warp import warp
from training import synth

# Tiny networks run fastest single-threaded; the CI machine's 2 cores are shared with other tests.
torch.set_num_threads(1)

# Reduced widths that run forward and backward in well under a second.
TINY = {
    "skyfuse-rt": {"width": 8, "decoder_width": 8, "match_channels": 4},
    "umf-cmgr": {
        "cpstn_width": 4,
        "cpstn_blocks": 1,
        "mrrn_width": 4,
        "difn_width": 4,
        "difn_growth": 4,
        "difn_blocks": 1,
        "difn_layers": 2,
    },
    "misfit-v": {"width": 2, "attention_dim": 8, "attention_heads": 2, "attention_out": 1},
    "dae-fuse": {"dim": 8, "heads": 2, "high_blocks": 1, "vit_depth": 1},
}


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(name, TINY[name], pretrained=False)


def valid_size(name: str) -> tuple[int, int]:
    m = spec(name).size_multiple
    return (m, m) if m >= 64 else (4 * m if m < 16 else 48, 5 * m if m < 16 else 64)


def test_warp_moves_content_by_the_flow_with_the_documented_sign():
    image = torch.zeros(1, 1, 32, 40)
    image[0, 0, 12, 10] = 1.0
    flow = torch.zeros(1, 2, 32, 40)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # registered(p) = image(p + (3, -2))
    registered = warp(image, flow)[0, 0]
    y, x = np.unravel_index(int(registered.argmax()), registered.shape)
    assert (x, y) == (7, 14)
    assert registered.max() == pytest.approx(1.0)
    # The numpy twin used to make training data agrees.
    np.testing.assert_allclose(
        synth.warp(image[0, 0].numpy(), flow[0].permute(1, 2, 0).numpy()), registered.numpy(), atol=1e-5
    )


def test_warp_leaves_no_content_where_the_sample_leaves_the_image():
    image = torch.ones(1, 1, 16, 16)
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 5.0
    registered = warp(image, flow)[0, 0]
    assert registered[:, :10].min() == 1.0 and registered[:, 11:].max() == 0.0


@pytest.mark.parametrize("name", list(NETWORKS))
def test_io_convention_and_gradients(name):
    net = tiny(name).train()
    h, w = valid_size(name)
    visible, thermal = torch.rand(2, 1, h, w), torch.rand(2, 1, h, w)
    fused, registered, flow = net(visible, thermal)
    assert fused.shape == registered.shape == (2, 1, h, w) and flow.shape == (2, 2, h, w)
    assert fused.dtype == flow.dtype == torch.float32
    assert 0.0 <= float(fused.min()) and float(fused.max()) <= 1.0
    fused.mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name in ("misfit-v", "dae-fuse"):  # fusers without registration
        assert torch.equal(registered, thermal) and not flow.any() and not registers(net)


@pytest.mark.parametrize("name", ["skyfuse-rt", "umf-cmgr"])
def test_a_registering_network_fuses_an_already_registered_pair_without_moving_it(name):
    net = tiny(name)
    assert registers(net)
    h, w = valid_size(name)
    visible, thermal = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    with torch.no_grad():
        fused, registered, flow = net.fuse_registered(visible, thermal)
        moved = net(visible, thermal)[2]
    assert moved.abs().max() > 0  # registering, the same network moves this pair
    assert flow.shape == (1, 2, h, w) and not flow.any()
    torch.testing.assert_close(registered, thermal, atol=1e-5, rtol=0)  # resampled where it stood
    assert fused.shape == (1, 1, h, w) and 0.0 <= float(fused.min()) and float(fused.max()) <= 1.0


@pytest.mark.parametrize("name", list(NETWORKS))
def test_odd_sizes_are_refused_clearly_and_work_padded(name):
    net = tiny(name)
    multiple = spec(name).size_multiple
    h, w = (250, 330) if multiple < 256 else (250, 260)
    visible, thermal = torch.rand(1, 1, h, w), torch.rand(1, 1, h, w)
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        net(visible, thermal)
    with torch.no_grad():
        fused, _, flow = net(pad_to_multiple(visible, multiple), pad_to_multiple(thermal, multiple))
    assert fused.shape[-2] % multiple == 0 and fused.shape[-2] >= h and flow.shape[-1] >= w


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_paper_configs_have_the_papers_parameter_counts():
    umf = build_network("umf-cmgr", pretrained=False)
    assert count(umf.cpstn) == pytest.approx(11.4, rel=0.03)  # ResNet-9-block generator
    assert count(umf.mrrn) == pytest.approx(0.171, rel=0.1)
    assert count(umf.mrrn) + count(umf.difn) == pytest.approx(0.80, rel=0.1)  # paper: MRRN + DIFN
    misfit = build_network("misfit-v", pretrained=False)
    assert count(misfit.generator) == pytest.approx(54.4, rel=0.02)
    assert count(PatchDiscriminator(2, 64)) == pytest.approx(3.0, rel=0.1)
    dae = build_network("dae-fuse", pretrained=False)
    assert 0.5 < count(dae) < 5.0 and count(Discriminator()) < 1.0


def test_skyfuse_rt_stays_a_small_network():
    net = build_network("skyfuse-rt", pretrained=False)
    assert count(net) < 0.5  # a few MB of weights at most


def test_build_network_reports_bad_names_fields_and_files(tmp_path):
    with pytest.raises(SkyfuseError, match="unknown network"):
        build_network("nope")
    with pytest.raises(SkyfuseError, match="unknown config field"):
        build_network("skyfuse-rt", {"depth": 3}, pretrained=False)
    with pytest.raises(SkyfuseError, match="not found"):
        build_network("skyfuse-rt", weights=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SkyfuseError, match="cannot read weights"):
        build_network("skyfuse-rt", weights=tmp_path / "junk.pt")


def test_weights_round_trip_rebuilds_the_saved_architecture(tmp_path):
    net = tiny("skyfuse-rt")
    save_weights(net, tmp_path / "w.pt")
    loaded = build_network("skyfuse-rt", weights=tmp_path / "w.pt")
    assert loaded.config == net.config and not loaded.training
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        for a, b in zip(net.eval()(x, x), loaded(x, x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(SkyfuseError, match="cannot override"):
        build_network("skyfuse-rt", {"width": 99}, weights=tmp_path / "w.pt")


def test_weights_of_another_architecture_version_get_a_clear_error(tmp_path):
    net = tiny("skyfuse-rt")
    save_weights(net, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    del state["state_dict"]["confidence4.weight"]  # as a file saved before the refined affine stage
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(SkyfuseError, match=r"old.pt does not fit this version of skyfuse-rt .*--init"):
        build_network("skyfuse-rt", weights=tmp_path / "old.pt")


def test_skyfuse_rt_exports_to_onnx_with_dynamic_size(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from engines.export import verify_export

    net = tiny("skyfuse-rt")
    x = torch.rand(1, 1, 48, 64)
    path = tmp_path / "rt.onnx"
    names = ["visible", "thermal", "fused", "registered", "flow"]
    torch.onnx.export(
        net,
        (x, x),
        str(path),
        opset_version=17,
        input_names=names[:2],
        output_names=names[2:],
        dynamic_axes={n: {2: "h", 3: "w"} for n in names},
        dynamo=False,
    )
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert "GridSample" in ops
    double = onnx.TensorProto.DOUBLE
    doubles = [t.name for t in model.graph.initializer if t.data_type == double]
    nodes = model.graph.node
    doubles += [n.name for n in nodes if n.op_type == "Constant" and n.attribute[0].t.data_type == double]
    doubles += [n.name for n in nodes if n.op_type == "Cast" and n.attribute[0].i == double]
    assert not doubles and model.opset_import[0].version == 17
    # Random smooth images at two sizes, the flow relative to its size (engines.export.verify_export).
    assert verify_export(net, path, [(48, 64), (80, 96)], batch=1) <= 1e-4


def test_correlation_finds_a_known_shift_with_the_flow_sign():
    from engines.networks.skyfuse_rt import Correlation, normalise

    corr = Correlation(channels=8, radius=3)
    a = normalise(torch.randn(1, 8, 20, 24))
    b = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # b(p + (2, 1)) = a(p): the flow is (dx, dy) = (2, 1)
    with torch.no_grad():
        cost = corr(a, b)[..., 4:-4, 4:-4].mean(dim=(2, 3), keepdim=True)
        shift = torch.nn.functional.conv2d(torch.softmax(cost * 50, dim=1), corr.displacement)
    torch.testing.assert_close(shift.flatten(), torch.tensor([2.0, 1.0]), atol=1e-3, rtol=0)


def test_skyfuse_rt_affine_fit_recovers_an_affine_flow_and_ignores_untrusted_matches():
    from engines.networks.skyfuse_rt import AffineField
    from engines.networks.warp import cell_centres

    def affine_flow(like):
        x, y = cell_centres(like)
        return torch.cat((0.5 + 0.3 * x - 0.2 * y + 0 * like, -1.0 + 0.1 * x + 0.4 * y + 0 * like), dim=1)

    coarse = torch.zeros(1, 1, 16, 20)
    truth = affine_flow(coarse)
    corrupted = truth.clone()
    corrupted[..., 3:6, 4:9] += 7.0  # wrong matches...
    weight = torch.ones(1, 1, 16, 20)
    weight[..., 3:6, 4:9] = 0.0  # ...that the confidence does not trust
    x, y = cell_centres(coarse)
    field = AffineField(corrupted, weight, x, y, ridge=0.0)
    torch.testing.assert_close(field.at(coarse), truth, atol=1e-4, rtol=0)
    finer = torch.zeros(1, 1, 32, 40)  # one map in normalised coordinates: evaluable at any resolution
    torch.testing.assert_close(field.at(finer), affine_flow(finer), atol=1e-4, rtol=0)
    trusting = AffineField(corrupted, torch.ones(1, 1, 16, 20), x, y, ridge=0.0)
    assert (trusting.at(coarse) - truth).abs().max() > 0.5


def test_correlation_soft_argmax_is_the_softmax_expectation():
    from engines.networks.skyfuse_rt import Correlation

    corr = Correlation(channels=4, radius=2)
    cost = torch.rand(2, corr.taps, 6, 7) * 2 - 1
    expected = torch.nn.functional.conv2d(torch.softmax(cost * 20, dim=1), corr.displacement)
    torch.testing.assert_close(corr.soft_argmax(cost, 20.0), expected, atol=1e-5, rtol=0)


def test_skyfuse_rt_refuses_frames_smaller_than_its_affine_regions():
    net = tiny("skyfuse-rt")
    tiny_frame = torch.rand(1, 1, 16, 64)
    with pytest.raises(ValueError, match="at least 32, got 16x64"):
        net(tiny_frame, tiny_frame)
