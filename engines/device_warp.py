"""The calibration pre-warp inside engines: each visible frame resampled into the output (thermal) view by
its own homography (visible pixel -> output pixel, as from calibration.rig.Rig.homography_for).

Two implementations of one sampling rule — bilinear, pixel centres at integer coordinates, zeros outside
the visible frame:
- `HostWarp`: on the host, exactly calibration.rig.Rig.warp_visible (cv2.remap, fixed-point maps);
- `DeviceWarp`: on a torch device (grid_sample), so a GPU engine uploads the raw visible frame once and
  warps it where the network runs (issue 8, "GPU data path").
cv2 quantises the sampling position to 1/32 pixel and the weights to 15 bits and rounds to uint8; the device
warp samples exactly and stays float, so the two agree within a gray level or two on camera images.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

from calibration.rig import Rig

MAX_CACHED = 16  # homographies whose maps/grids are kept (one per camera pair in a steady pipeline)


class _Cache:
    """Least-recently-used values by key, at most `size` of them."""

    def __init__(self, size: int = MAX_CACHED):
        self.size, self.items = size, OrderedDict()

    def get(self, key: Hashable, make: Callable[[], object]):
        if key in self.items:
            self.items.move_to_end(key)
        else:
            if len(self.items) >= self.size:
                self.items.popitem(last=False)
            self.items[key] = make()
        return self.items[key]


def _key(visible_to_output: np.ndarray, visible_hw: tuple[int, int], output_size: tuple[int, int]) -> tuple:
    return np.asarray(visible_to_output, dtype=np.float64).tobytes(), tuple(visible_hw), tuple(output_size)


class HostWarp:
    """The host pre-warp: one (Hv, Wv, 3) uint8 frame -> (H, W, 3) uint8 at `output_size` (W, H)."""

    def __init__(self):
        self.rigs = _Cache()

    def __call__(self, visible: np.ndarray, visible_to_output: np.ndarray, output_size: tuple[int, int]
                 ) -> np.ndarray:
        (height, width), size = visible.shape[:2], tuple(output_size)
        # A rig whose sizes are the frames' own has `visible_to_output` as its homography, unchanged: the
        # warp is then Rig.warp_visible itself, with its sampling maps kept per homography.
        rig = self.rigs.get(_key(visible_to_output, (height, width), size), lambda: Rig(
            (width, height), size, np.array(visible_to_output, dtype=np.float64), method="per-frame"))
        return rig.warp_visible(visible, size)


class DeviceWarp:
    """The device pre-warp of a batch, with grid_sample's sampling grid kept per homography on `device`."""

    def __init__(self, device):
        self.device, self.grids = device, _Cache()

    def grid(self, visible_to_output: np.ndarray, visible_hw: tuple[int, int], output_size: tuple[int, int]):
        """(1, H, W, 2) float32 grid for grid_sample(align_corners=False): for each output pixel, the
        visible pixel it samples, normalised so that -1 and 1 are the outer edges of the frame."""
        return self.grids.get(_key(visible_to_output, visible_hw, output_size),
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
