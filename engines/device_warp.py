"""The calibration pre-warp on a torch device: each visible frame resampled into the output (thermal) view
by its own homography (visible pixel -> output pixel, as from core.rig.Rig.homography_for), so a GPU
engine uploads the raw visible frame once and warps it where the network runs (issue 8, "GPU data path").

It follows the host warp's sampling rule (core/warp.py: bilinear, pixel centres at integer coordinates,
zeros outside the visible frame). cv2 quantises the sampling position to 1/32 pixel and the weights to 15
bits and rounds to uint8; the device warp samples exactly and stays float, so the two agree within a gray
level or two on camera images.
"""

from __future__ import annotations

import numpy as np

from core.warp import LruCache, warp_key


class DeviceWarp:
    """The device pre-warp of a batch, with grid_sample's sampling grid kept per homography on `device`."""

    def __init__(self, device):
        self.device, self.grids = device, LruCache()

    def grid(self, visible_to_output: np.ndarray, visible_hw: tuple[int, int], output_size: tuple[int, int]):
        """(1, H, W, 2) float32 grid for grid_sample(align_corners=False): for each output pixel, the
        visible pixel it samples, normalised so that -1 and 1 are the outer edges of the frame."""
        return self.grids.get(warp_key(visible_to_output, visible_hw, output_size),
                              lambda: self._make_grid(visible_to_output, visible_hw, output_size))

    def _make_grid(self, visible_to_output, visible_hw, output_size):
        import torch

        # on the host in float64 (exact projective division), once per homography; then kept on the device
        output_to_visible = torch.from_numpy(np.linalg.inv(np.asarray(visible_to_output, np.float64)))
        width, height = output_size
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                torch.arange(width, dtype=torch.float64), indexing="ij")
        points = torch.stack((xs, ys, torch.ones_like(xs)), -1) @ output_to_visible.T
        xy = points[..., :2] / points[..., 2:]
        vh, vw = visible_hw
        scale = torch.tensor([2.0 / vw, 2.0 / vh], dtype=torch.float64)
        normalised = (xy + 0.5) * scale - 1.0  # pixel centre i sits at (2i + 1) / size - 1
        # a point behind the camera plane (w <= 0) is outside the view: send it far outside the frame
        normalised[points[..., 2] <= 0] = -4.0
        return normalised.float().unsqueeze(0).to(self.device)

    def __call__(self, visible, visible_to_output: np.ndarray, output_size: tuple[int, int]):
        """(B, 3, H, W) float32 in 0..255 from `visible`, a (B, Hv, Wv, 3) uint8 tensor on the device,
        and (B, 3, 3) homographies; `output_size` is (W, H)."""
        import torch
        import torch.nn.functional as F

        visible_hw = tuple(visible.shape[1:3])
        grids = [self.grid(h, visible_hw, output_size) for h in visible_to_output]
        same = all(g is grids[0] for g in grids)
        grid = grids[0].expand(len(grids), -1, -1, -1) if same else torch.cat(grids)
        source = visible.permute(0, 3, 1, 2).float()
        return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
