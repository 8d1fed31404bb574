"""torch-cuda engine. Its device data path (colour split/merge, padding, network on device tensors) is
checked on the CPU; the CUDA parts (fp16 autocast, CUDA graphs) run only where PyTorch sees a GPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from engines_testnet import PassThroughNet, TinyFusionNet

from engines.models import network_geometry
from engines.networks import NETWORKS, build_network
from engines.registry import create_engine
from engines.torch_cuda import bgr_to_ycrcb, ycrcb_to_bgr

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")


def frames(batch, height, width, seed=0):
    rng = np.random.default_rng(seed)
    visible = cv2.GaussianBlur(rng.integers(0, 256, (batch * height, width, 3), dtype=np.uint8), (7, 7), 0)
    thermal = cv2.GaussianBlur(rng.integers(0, 256, (batch * height, width), dtype=np.uint8), (7, 7), 0)
    return visible.reshape(batch, height, width, 3), thermal.reshape(batch, height, width)


def test_device_colour_conversion_matches_opencv_within_a_gray_level():
    visible, _ = frames(2, 20, 30)
    y, cr, cb = bgr_to_ycrcb(torch.from_numpy(visible).float())
    expected = np.stack([cv2.cvtColor(v, cv2.COLOR_BGR2YCrCb) for v in visible]).astype(np.float32)
    got = torch.stack((y, cr, cb), -1).numpy()
    assert np.abs(got - expected).max() <= 1.0
    back = ycrcb_to_bgr(torch.from_numpy(expected[..., 0]), torch.from_numpy(expected[..., 1]),
                        torch.from_numpy(expected[..., 2])).numpy()
    reference = np.stack([cv2.cvtColor(e.astype(np.uint8), cv2.COLOR_YCrCb2BGR) for e in expected])
    assert np.abs(back.astype(int) - reference).max() <= 1


def test_device_data_path_on_cpu_matches_the_torch_engine():
    network = TinyFusionNet().eval()
    device_engine = create_engine("torch-cuda", network=network, device="cpu")
    reference = create_engine("torch", network=network)
    visible, thermal = frames(2, 30, 45, seed=4)
    got, expected = device_engine.fuse(visible, thermal), reference.fuse(visible, thermal)
    assert got.fused.shape == visible.shape and got.fused.dtype == np.uint8
    assert np.abs(got.fused.astype(int) - expected.fused).max() <= 2
    assert np.abs(got.registered.astype(int) - expected.registered).max() <= 1
    # the device path keeps Y unrounded (cv2 rounds it to 8 bits): inputs differ by < 0.5 gray level
    assert np.abs(got.flow - expected.flow).max() < 2e-3
    assert device_engine.precision == "fp32"
    assert "fp32" in device_engine.describe() and "graphs off" in device_engine.describe()


@pytest.mark.parametrize("name", ["TinyFusionNet", "PassThroughNet", *NETWORKS])
def test_networks_make_their_tensors_on_the_inputs_device(name):
    """Every tensor a network makes follows its inputs' device, so what passes on the CPU also runs on
    cuda:0 (issue 20: a sampling grid built on the CPU failed only on a GPU). Checked on the meta device:
    a tensor made on the CPU meets the meta inputs and raises, with no data and no GPU needed."""
    test_networks = {"TinyFusionNet": TinyFusionNet, "PassThroughNet": PassThroughNet}
    network = test_networks[name]() if name in test_networks else build_network(name, pretrained=False)
    height, width = network_geometry(network).padded(64, 80)
    inputs = [torch.rand(2, 1, height, width, device="meta") for _ in range(2)]
    with torch.no_grad():
        outputs = network.eval().to("meta")(*inputs)
    assert [(o.device.type, o.shape[0], o.shape[-2:]) for o in outputs] == [("meta", 2, (height, width))] * 3


@needs_cuda
def test_cuda_fp16_with_graphs_matches_the_cpu_reference():
    network = TinyFusionNet().eval()
    reference = create_engine("torch", network=network)
    engine = create_engine("torch-cuda", network=TinyFusionNet().eval(), half=True, cuda_graphs=True)
    for seed, size in enumerate([(64, 80), (64, 80), (96, 128)]):  # replay, then a second captured shape
        visible, thermal = frames(4, *size, seed=seed)
        got, expected = engine.fuse(visible, thermal), reference.fuse(visible, thermal)
        error = np.linalg.norm(got.fused.astype(float) - expected.fused) / np.linalg.norm(expected.fused)
        assert error <= 1e-2
        assert np.abs(got.flow - expected.flow).max() <= 1e-2 * max(1.0, np.abs(expected.flow).max())
    assert len(engine.graphs) == 2
    assert engine.precision == "fp16 autocast" and "CUDA graphs on" in engine.describe()
