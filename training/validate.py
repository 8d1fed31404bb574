"""Scoring a network on fixed misaligned pairs: registration against the ground truth and fusion metrics
against the oracle-registered thermal image. Used by the trainer's periodic validation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engines.networks import pad_to_multiple, registers

from .metrics import fusion_metrics, registration_metrics

VALIDATION_FUSION_METRICS = ["MI", "VIF", "Qabf", "SSIM"]


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


@torch.no_grad()
def run_network(network: nn.Module, visible: torch.Tensor, thermal: torch.Tensor, size_multiple: int,
                register: bool = True):
    """Network outputs for one (1, 1, H, W) pair of any size: padded to the size multiple, then cropped.
    `register=False` fuses the pair as it is (`fuse_registered`) when the network registers.
    Returns numpy (fused (H, W), registered (H, W), flow (H, W, 2))."""
    h, w = visible.shape[-2:]
    fuse = network.fuse_registered if not register and registers(network) else network
    fused, registered, flow = fuse(*(pad_to_multiple(x, size_multiple) for x in (visible, thermal)))
    return (
        fused[0, 0, :h, :w].cpu().numpy(),
        registered[0, 0, :h, :w].cpu().numpy(),
        flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy(),
    )


def score(
    sample: dict[str, torch.Tensor], fused: np.ndarray, registered: np.ndarray, flow: np.ndarray
) -> dict[str, float]:
    """Registration (over the pixels the warped image shows) and fusion metrics of one result."""
    visible, aligned = sample["visible"][0].numpy(), sample["aligned"][0].numpy()
    valid = sample["valid"][0].numpy() > 0.5
    true_flow = sample["flow"].permute(1, 2, 0).numpy()
    reg = registration_metrics(to_u8(registered), to_u8(aligned), flow=flow, true_flow=true_flow, mask=valid)
    fus = fusion_metrics(to_u8(visible), to_u8(aligned), to_u8(fused), VALIDATION_FUSION_METRICS)
    return {f"reg_{k}": v for k, v in reg.items()} | fus


def validate(network: nn.Module, samples, size_multiple: int, device: torch.device) -> dict[str, float]:
    """Mean scores over `samples` (dicts from training.dataset.FixedMisaligned)."""
    network.eval()
    totals: dict[str, list[float]] = {}
    for sample in samples:
        vis = sample["visible"][None].to(device)
        ir = sample["thermal"][None].to(device)
        for k, v in score(sample, *run_network(network, vis, ir, size_multiple)).items():
            totals.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in totals.items()}


def baseline(samples) -> dict[str, float]:
    """The same scores for the floor: no registration (zero flow) and a 50/50 blend of the misaligned
    pair (engines.classical.BlendEngine's default)."""
    totals: dict[str, list[float]] = {}
    for sample in samples:
        visible, thermal = sample["visible"][0].numpy(), sample["thermal"][0].numpy()
        fused = 0.5 * (visible + thermal)
        flow = np.zeros(visible.shape + (2,), np.float32)
        for k, v in score(sample, fused, thermal, flow).items():
            totals.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in totals.items()}
