"""Tiny networks that follow the engines' network convention, for the engine and export tests:
forward(visible, thermal) (B, 1, H, W) in [0, 1] -> (fused, registered, flow in pixels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_grid(flow: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 2) grid_sample grid for a pixel flow, on the flow's device and in its dtype (float16 under
    CUDA autocast), as engines/networks/warp.py builds it."""
    _, _, h, w = flow.shape
    xs = (torch.arange(w, dtype=flow.dtype, device=flow.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=flow.dtype, device=flow.device) * 2 + 1) / h - 1
    gx, gy = xs.view(1, 1, w) + flow[:, 0] * (2.0 / w), ys.view(1, h, 1) + flow[:, 1] * (2.0 / h)
    return torch.stack((gx, gy), -1)


class TinyFusionNet(nn.Module):
    """Conv features at 1/2 resolution -> a flow (upsampled) and a fusion weight; one GridSample."""

    size_multiple = 4

    def __init__(self, seed: int = 0, scale: float = 1.0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(2, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 3, 3, padding=1)
        self.scale = scale  # > 1e4 overflows fp16 inside the graph (for the parity test)

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        _, _, h, w = visible.shape
        maps = self.head(self.features(torch.cat((visible, thermal), 1)) * self.scale) / self.scale
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        flow = maps[:, :2] * 4.0
        registered = F.grid_sample(thermal, pixel_grid(flow), mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
        weight = torch.sigmoid(maps[:, 2:3])
        fused = (visible + weight * (registered - visible)).clamp(0.0, 1.0)
        return fused, registered, flow


class PassThroughNet(nn.Module):
    """fused = visible, registered = thermal, flow = `flow` pixels everywhere; records the input size."""

    def __init__(self, size_multiple: int = 8, fixed_size=None, flow=(0.0, 0.0)):
        super().__init__()
        self.size_multiple, self.fixed_size, self.flow = size_multiple, fixed_size, flow
        self.seen: list[tuple[int, ...]] = []

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        self.seen.append(tuple(visible.shape))
        b, _, h, w = visible.shape
        flow = torch.tensor(self.flow, dtype=visible.dtype, device=visible.device)
        flow = flow.view(1, 2, 1, 1).expand(b, 2, h, w)
        return visible.clone(), thermal.clone(), flow.clone()
