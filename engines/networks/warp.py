"""Flow warping shared by the registering networks.

Convention (every network and the training data follow it): a flow is (B, 2, H, W) float32 in pixels,
channel 0 = x, channel 1 = y, and `registered(p) = image(p + flow(p))`. Sampling is bilinear with zero
padding (pixels that come from outside the thermal view have no content) and `align_corners=False`, so
pixel centres sit at integer coordinates, as with `cv2.remap`. Exports to ONNX as one GridSample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cell_centres(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised x (1, 1, 1, W) and y (1, 1, H, 1) of the pixel centres of a (B, C, H, W) map: in [-1, 1]
    over the image whatever its resolution (align_corners=False: pixel i sits at (2i + 1) / size - 1)."""
    _, _, h, w = like.shape
    xs = (torch.arange(w, device=like.device, dtype=like.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=like.device, dtype=like.dtype) * 2 + 1) / h - 1
    return xs.view(1, 1, 1, w), ys.view(1, 1, h, 1)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 2) normalised sampling grid for `grid_sample` from a pixel flow (B, 2, H, W)."""
    _, _, h, w = flow.shape
    xs, ys = cell_centres(flow)
    # A flow of d pixels adds 2d / size.
    gx = xs[:, 0] + flow[:, 0] * (2.0 / w)
    gy = ys[:, 0] + flow[:, 1] * (2.0 / h)
    return torch.stack((gx, gy), dim=-1)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """`image(p + flow(p))`, bilinear, zeros outside; image (B, C, H, W), flow (B, 2, H, W) in pixels."""
    return F.grid_sample(
        image, flow_to_grid(flow), mode="bilinear", padding_mode="zeros", align_corners=False
    )

