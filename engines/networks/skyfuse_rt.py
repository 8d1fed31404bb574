"""skyfuse-rt: the real-time default network. Registers the thermal frame onto the visible one and fuses.

Design (METHODS.md, "What this means for a real-time engine"): all learned work runs at 1/8 resolution;
full resolution sees only one bilinear resize of the 5 predicted maps, one GridSample and a handful of
element-wise operations (about 0.6 GMAC per 640×512 frame).

1. Both luminances are average-pooled to 1/4; one shared (Siamese) CNN, fed the image and its local
   contrast, gives features at 1/8 plus narrow unit-length matching features.
2. Global shift: a correlation volume (radius `global_radius`) of the learned matching features and of a
   fixed edge descriptor (`StructureDescriptor`) is averaged over the whole image and read by a soft-argmax.
   Local cross-modal matches are ambiguous; the image-wide average has a clear peak.
3. The 1/4 thermal image is shifted (one channel, cheap) and re-encoded; a local correlation (radius
   `fine_radius`) and a dilated decoder predict the residual flow (rotation, scale, elastic distortion,
   parallax) and three fusion maps: gains `a`, `c` in (0, 1) and a low-frequency offset `b`.
4. Full resolution: the 5 maps are resized once; the thermal frame is warped once (GridSample) and
   `fused = a * visible + c * registered + b`, with c = 0 where the sample left the thermal view.

I/O: `forward(visible, thermal)` with (B, 1, H, W) float32 in [0, 1] returns `(fused, registered, flow)`,
flow in pixels with `registered(p) = thermal(p + flow(p))` (see `warp.py`).
Size constraint: H and W multiples of 16 (`SIZE_MULTIPLE`); any such H×W works (dynamic shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .warp import flow_to_grid, grid_inside, warp

SIZE_MULTIPLE = 16


@dataclass
class SkyfuseRTConfig:
    width: int = 24  # feature channels at 1/8
    decoder_width: int = 40  # channels of the flow/fusion decoder
    global_radius: int = 3  # search radius of the global shift at 1/8 (±24 px at full resolution)
    fine_radius: int = 2  # local search radius at 1/8 after the global shift (±16 px)
    match_channels: int = 12  # channels of the learned matching features (correlation cost ∝ this)
    global_temperature: float = 50.0  # softmax sharpness over the image-averaged cosine costs


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation), nn.LeakyReLU(0.1)
    )


class Encoder(nn.Module):
    """1/4-resolution luminance (and its local contrast) -> features at 1/8 and a narrow unit-length
    projection of them used only for matching."""

    def __init__(self, width: int, match_channels: int):
        super().__init__()
        self.features = nn.Sequential(conv(2, 16), conv(16, width, stride=2), conv(width, width))
        self.match = nn.Conv2d(width, match_channels, 1)

    def forward(self, x4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.features(with_contrast(x4))
        return f8, normalise(self.match(f8))


class StructureDescriptor(nn.Module):
    """Fixed (not learned) matching features: Sobel gradient magnitude at 1/4, pooled to 1/8, and its 3×3
    neighbourhood as 9 channels, zero-mean and unit length. Edges are where visible and thermal agree
    most, so this matches across modalities from the first step; learning adds to it."""

    def __init__(self):
        super().__init__()
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack((sobel_x, sobel_x.t())).unsqueeze(1), persistent=False)
        self.register_buffer("neighbours", torch.eye(9).view(9, 1, 3, 3), persistent=False)

    def forward(self, x4: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(F.pad(x4, (1, 1, 1, 1), mode="replicate"), self.sobel).abs().sum(dim=1, keepdim=True)
        g = F.avg_pool2d(g, 2)
        d = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.neighbours)
        d = d - d.mean(dim=1, keepdim=True)
        return d / (d.pow(2).sum(dim=1, keepdim=True) + 1e-6).sqrt()


class Correlation(nn.Module):
    """Local cost volume: sum over channels of a(p) * b(p + d) for every d in [-radius, radius]^2 (with
    unit-length features: the cosine similarity, in [-1, 1]).

    The shifted copies of `b` come from one grouped convolution with fixed one-hot kernels (a buffer, not
    a parameter): one Conv + Mul + ReduceSum in ONNX instead of hundreds of small Slice nodes, whose
    per-node overhead dominated on the CPU."""

    def __init__(self, channels: int, radius: int):
        super().__init__()
        size = 2 * radius + 1
        self.channels, self.radius, self.taps = channels, radius, size * size
        kernels = torch.eye(self.taps).view(self.taps, 1, size, size).repeat(channels, 1, 1, 1)
        self.register_buffer("kernels", kernels, persistent=False)
        # The (dx, dy) of every tap, as a fixed 1×1 convolution: applied to a softmax over the taps it gives
        # the expected displacement (soft-argmax).
        offsets = torch.arange(size, dtype=torch.float32) - radius
        displacement = torch.stack((offsets.repeat(size), offsets.repeat_interleave(size)))
        self.register_buffer("displacement", displacement.view(2, self.taps, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, stride: int = 1) -> torch.Tensor:
        """Costs at every `stride`-th pixel of `a` (displacements stay in whole pixels of the level)."""
        # Edge padding: zero padding would give border taps a cost of 0, better than the many negative
        # costs, and bias the border flow outwards.
        b = F.pad(b, (self.radius,) * 4, mode="replicate")
        shifted = F.conv2d(b, self.kernels, stride=stride, groups=self.channels)
        bsz, _, h, w = shifted.shape
        shifted = shifted.view(bsz, self.channels, self.taps, h, w)
        return (shifted * a[..., ::stride, ::stride].unsqueeze(2)).sum(dim=1)


def with_contrast(x: torch.Tensor) -> torch.Tensor:
    """The image and its local contrast (x - local mean) / local std over 5×5: structure that looks alike in
    both modalities whatever their brightness, which is what matching can start from."""
    mean = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    centred = x - mean
    std = (F.avg_pool2d(centred * centred, 5, stride=1, padding=2, count_include_pad=False) + 1e-4).sqrt()
    return torch.cat((x, centred / std), dim=1)


def normalise(f: torch.Tensor) -> torch.Tensor:
    """Per channel zero mean over the image, then unit length per pixel: correlation then measures
    similar structure, not the constant part (biases) or the contrast."""
    f = f - f.mean(dim=(2, 3), keepdim=True)
    return f / (f.pow(2).sum(dim=1, keepdim=True) + 1e-6).sqrt()


class SkyfuseRT(nn.Module):
    def __init__(self, config: SkyfuseRTConfig | None = None):
        super().__init__()
        self.config = c = config or SkyfuseRTConfig()
        # One encoder for both modalities (Siamese): matching features start out comparable.
        self.encoder = Encoder(c.width, c.match_channels)
        self.descriptor = StructureDescriptor()
        self.corr_global = Correlation(c.match_channels + 9, c.global_radius)
        self.corr_fine = Correlation(c.match_channels, c.fine_radius)
        d = c.decoder_width
        self.fine = nn.Sequential(
            conv(self.corr_fine.taps + 2 * c.width + 4, d),
            conv(d, d, dilation=2),
            conv(d, d, dilation=4),
            conv(d, 32),
            nn.Conv2d(32, 5, 3, padding=1),
        )
        # Start from the global shift and the plain average (gains sigmoid(0) = 0.5, offset 0).
        nn.init.zeros_(self.fine[-1].weight)
        nn.init.zeros_(self.fine[-1].bias)

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        _, maps = self.estimate(visible, thermal)
        return self.render(visible, thermal, maps)

    def estimate(self, visible: torch.Tensor, thermal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global shift (B, 2, 1, 1) in 1/8-pixels, the 5 maps at 1/8: flow in 1/8-pixels, then the
        logits of a and c and the offset b)."""
        _, _, h, w = visible.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"skyfuse-rt needs H and W multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        vis4, ir4 = F.avg_pool2d(visible, 4), F.avg_pool2d(thermal, 4)
        v8, vm8 = self.encoder(vis4)
        _, tm8 = self.encoder(ir4)
        # Global shift: the cost volume averaged over the whole image has a clear peak even where local
        # cross-modal matches are ambiguous; soft-argmax reads it.
        # Learned and fixed matching features side by side: the cost is the sum of both cosines. Every
        # second pixel is enough for an image-wide average.
        cost = self.corr_global(
            torch.cat((vm8, self.descriptor(vis4)), 1), torch.cat((tm8, self.descriptor(ir4)), 1), stride=2
        )
        cost = cost.mean(dim=(2, 3), keepdim=True) * (0.5 * self.config.global_temperature)
        shift = F.conv2d(torch.softmax(cost, dim=1), self.corr_global.displacement)
        # Warp the 1/4 image (one channel, cheap) by the shift, re-extract features, refine locally.
        ir4w = warp(ir4, (shift * 2.0).expand(-1, -1, ir4.shape[2], ir4.shape[3]))
        t8w, tm8w = self.encoder(ir4w)
        cost8 = self.corr_fine(vm8, tm8w)
        flow8 = shift.expand(-1, -1, v8.shape[2], v8.shape[3])
        out8 = self.fine(
            torch.cat((cost8, v8, t8w, flow8, F.avg_pool2d(vis4, 2), F.avg_pool2d(ir4w, 2)), dim=1)
        )
        return shift, torch.cat((flow8 + out8[:, :2], out8[:, 2:]), dim=1)

    def render(self, visible: torch.Tensor, thermal: torch.Tensor, maps: torch.Tensor):
        """The full-resolution part: resize the maps, warp once, fuse."""
        _, _, h, w = visible.shape
        maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        flow = maps[:, :2] * 8.0
        grid = flow_to_grid(flow)
        registered = F.grid_sample(thermal, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Local affine fusion: per-pixel gains for each source plus a low-frequency offset, all predicted at
        # 1/8; pixels whose sample left the thermal view get no thermal term.
        gain_vis = torch.sigmoid(maps[:, 2:3])
        gain_ir = torch.sigmoid(maps[:, 3:4]) * grid_inside(grid)
        fused = gain_vis * visible + gain_ir * registered + maps[:, 4:5]
        return fused.clamp(0.0, 1.0), registered, flow
