"""The pre-warp inside engines (`Engine.fuse_unwarped`): the device warp (grid_sample, run here on the CPU)
against the pipeline's host pre-warp (Rig.warp_visible), the torch-cuda engine's device data path against
pre-warp + fuse, and the default host path of every other engine. CUDA runs only where PyTorch sees a GPU."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from engines_testnet import TinyFusionNet

from core.rig import Rig
from engines.device_warp import DeviceWarp
from engines.registry import create_engine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (PyTorch sees none)")

RAW, OUT = (1280, 720), (640, 512)  # (W, H): a visible camera and a thermal camera


def smooth(shape, seed=0):
    """Camera-like test image: blurred noise (a few gray levels per pixel), never constant."""
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return cv2.GaussianBlur(image, (7, 7), 0)


def homographies(raw=RAW, out=OUT) -> dict[str, np.ndarray]:
    """Visible pixel -> output pixel: the identity rig's scaling, a rotation about the centre (with the
    scaling), and a projective view."""
    scale = Rig.identity(raw, out).homography_for((raw[1], raw[0]), out)
    angle = np.deg2rad(17.0)
    rotate = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    centre = np.array([[1, 0, -raw[0] / 2], [0, 1, -raw[1] / 2], [0, 0, 1]])
    zoom = 1.2 * out[0] / raw[0]
    back = np.array([[zoom, 0, out[0] / 2], [0, zoom, out[1] / 2], [0, 0, 1]])
    projective = np.array([[0.45, 0.05, 20], [-0.03, 0.6, 15], [2e-4, 1e-4, 1]])
    return {"scale": scale, "rotation": back @ rotate @ centre, "projective": projective}


def rig_warp(visible: np.ndarray, visible_to_output: np.ndarray, out=OUT) -> np.ndarray:
    """The fuse stage's pre-warp today: Rig.warp_visible of a rig with this homography."""
    height, width = visible.shape[:2]
    return Rig((width, height), out, visible_to_output).warp_visible(visible, out)


@pytest.mark.parametrize("name", ["scale", "rotation", "projective"])
def test_device_warp_matches_the_rig_prewarp(name):
    visible = smooth((RAW[1], RAW[0], 3), seed=1)
    matrix = homographies()[name]
    expected = rig_warp(visible, matrix).astype(np.float32)
    got = DeviceWarp("cpu")(torch.from_numpy(visible[None]), matrix[None], OUT)[0].permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    error = np.abs(got - expected)
    # cv2 rounds the sampling position to 1/32 pixel: a gray level or two, more only where a sample
    # straddles the frame's edge (a jump to the zeros outside); well inside the frame, about one level
    white = rig_warp(np.full_like(visible, 255), matrix)
    inside, outside = (_eroded(mask) for mask in ((white == 255).all(-1), (white == 0).all(-1)))
    assert inside.mean() > 0.3
    assert error[inside].max() <= 1.5
    assert error.max() <= 4.0 and error.mean() <= 0.3
    if name != "scale":  # the rotated and projective views leave parts of the output uncovered: zeros
        assert outside.mean() > 0.05 and np.all(got[outside] == 0)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """`mask` without its one-pixel rim (where cv2's 1/32-pixel rounding decides in or out)."""
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def test_device_warp_uses_each_frames_homography_and_keeps_grids():
    visible = np.stack([smooth((90, 160, 3), seed=s) for s in (2, 3)])
    matrices = homographies(raw=(160, 90), out=(80, 64))
    warp = DeviceWarp("cpu")
    for pair in (("rotation", "projective"), ("scale", "scale")):
        batch = np.stack([matrices[n] for n in pair])
        got = warp(torch.from_numpy(visible), batch, (80, 64)).permute(0, 2, 3, 1).numpy()
        for frame, matrix, result in zip(visible, batch, got):
            assert np.abs(result - rig_warp(frame, matrix, (80, 64))).mean() <= 0.5
    assert len(warp.grids) == 3  # one grid per distinct homography, reused across calls


def test_torch_cuda_engine_fuse_unwarped_on_cpu_matches_prewarp_then_fuse():
    engine = create_engine("torch-cuda", network=TinyFusionNet().eval(), device="cpu")
    visible = np.stack([smooth((RAW[1], RAW[0], 3), seed=s) for s in (4, 5)])
    thermal = np.stack([smooth((OUT[1], OUT[0]), seed=s) for s in (6, 7)])
    matrices = np.stack([homographies()["projective"], homographies()["rotation"]])
    got = engine.fuse_unwarped(visible, thermal, matrices)
    prewarped = np.stack([rig_warp(v, m) for v, m in zip(visible, matrices)])
    expected = engine.fuse(prewarped, thermal)
    assert got.fused.shape == (2, OUT[1], OUT[0], 3) and got.fused.dtype == np.uint8
    error = np.abs(got.fused.astype(int) - expected.fused)
    assert error.max() <= 5 and error.mean() <= 0.3  # the warps' difference, carried through the network
    assert np.abs(got.registered.astype(int) - expected.registered).max() <= 2
    fused_only = engine.fuse_unwarped(visible, thermal, matrices, extras=False)
    assert np.array_equal(fused_only.fused, got.fused)
    assert fused_only.registered is None and fused_only.flow is None


def test_default_fuse_unwarped_is_the_rig_prewarp_then_fuse():
    engine = create_engine("pyramid")
    visible = np.stack([smooth((180, 320, 3), seed=s) for s in (8, 9)])
    thermal = np.stack([smooth((128, 160), seed=s) for s in (10, 11)])
    matrices = homographies(raw=(320, 180), out=(160, 128))
    batch = np.stack([matrices["rotation"], matrices["projective"]])
    got = engine.fuse_unwarped(visible, thermal, batch)
    expected = engine.fuse(np.stack([rig_warp(v, m, (160, 128)) for v, m in zip(visible, batch)]), thermal)
    assert np.array_equal(got.fused, expected.fused)
    assert np.array_equal(got.registered, expected.registered)
    assert engine.fuse_unwarped(visible, thermal, batch, extras=False).registered is None


@pytest.mark.parametrize("engine_name", ["blend", "torch-cuda"])
def test_fuse_unwarped_rejects_bad_homographies(engine_name):
    options = {"network": TinyFusionNet().eval(), "device": "cpu"} if engine_name == "torch-cuda" else {}
    engine = create_engine(engine_name, **options)
    visible, thermal = np.stack([smooth((36, 64, 3))] * 2), np.stack([smooth((32, 40))] * 2)
    good = np.stack([np.eye(3)] * 2)
    with pytest.raises(ValueError, match="one 3×3 homography per pair"):
        engine.fuse_unwarped(visible, thermal, good[:1])
    with pytest.raises(ValueError, match="finite and invertible"):
        engine.fuse_unwarped(visible, thermal, np.stack([np.eye(3), np.zeros((3, 3))]))
    with pytest.raises(ValueError, match="thermal must be"):
        engine.fuse_unwarped(visible, thermal.astype(np.uint16), good)


@needs_cuda
def test_cuda_device_warp_and_fuse_unwarped_match_the_cpu():
    visible = np.stack([smooth((RAW[1], RAW[0], 3), seed=s) for s in (12, 13)])
    thermal = np.stack([smooth((OUT[1], OUT[0]), seed=s) for s in (14, 15)])
    matrices = np.stack([homographies()["projective"], homographies()["rotation"]])
    on_cpu = DeviceWarp("cpu")(torch.from_numpy(visible), matrices, OUT)
    on_gpu = DeviceWarp("cuda")(torch.from_numpy(visible).cuda(), matrices, OUT).cpu()
    assert torch.allclose(on_gpu, on_cpu, atol=1e-2)
    reference = create_engine("torch-cuda", network=TinyFusionNet().eval(), device="cpu")
    engine = create_engine("torch-cuda", network=TinyFusionNet().eval(), half=True, cuda_graphs=True)
    got = engine.fuse_unwarped(visible, thermal, matrices, extras=False)
    expected = reference.fuse_unwarped(visible, thermal, matrices)
    error = np.linalg.norm(got.fused.astype(float) - expected.fused) / np.linalg.norm(expected.fused)
    assert error <= 1e-2
