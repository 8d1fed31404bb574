"""UMF-CMGR (Wang et al., IJCAI 2022): generate a pseudo-infrared image, register, fuse.

- CPSTN (§2.2): visible -> pseudo-IR, a ResNet generator with 9 residual blocks at 1/4 resolution
  (CycleGAN's resnet_9blocks: reflection padding, instance norm; ~11.4 M parameters at width 64).
- MRRN (§2.3, eqs. 1-3): a shared two-level feature extractor (1/2, 1/4) over the distorted IR and the
  pseudo-IR; per level a coarse deformation-field estimator M_C fed the two features and their L1
  matching cost, and a refinement M_R whose output is added to the coarse field (eq. 2); coarse to
  fine (1/4 then 1/2, the 1/2 level sees the IR features warped by the 1/4 field); the final field is
  upsampled to full size and a resampler (grid_sample) warps the IR (eq. 3). ~0.17 M parameters.
- DIFN (§2.4, eqs. 4-7): two residual-dense feature paths and the interaction fusion module
  A = sigmoid(conv1x1(f_ir) * conv1x1(f_vis)), both paths scaled by (1 + A), concatenated, 3×3 conv.

Deviation from the authors' code, for the project's I/O convention: the resampler uses zero padding and
`align_corners=False` (engines/networks/warp.py), so pixels from outside the thermal view stay empty.
Size constraint: H and W multiples of 4 (two stride-2 levels in CPSTN and MRRN); dynamic H×W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .warp import warp

SIZE_MULTIPLE = 4


@dataclass
class UMFCMGRConfig:
    cpstn_width: int = 64  # CycleGAN ngf
    cpstn_blocks: int = 9  # residual blocks at 1/4 resolution
    mrrn_width: int = 22  # features at 1/2 (1/4 has twice as many); ~0.17 M parameters as the code
    difn_width: int = 64  # DIFN feature channels (full resolution)
    difn_growth: int = 32  # residual-dense growth rate
    difn_blocks: int = 2  # residual dense blocks per path
    difn_layers: int = 4  # dense layers per block


# ---- CPSTN -------------------------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator: c7s1-w, d2w, d4w, blocks × R4w, u2w, uw, c7s1-1 + tanh -> [0, 1]."""

    def __init__(self, width: int = 64, blocks: int = 9, cin: int = 1, cout: int = 1):
        super().__init__()
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(cin, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
        for m in (1, 2):
            layers += [
                nn.Conv2d(w * m, w * m * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(w * m * 2),
                nn.ReLU(True),
            ]
        layers += [ResidualBlock(4 * w) for _ in range(blocks)]
        for m in (4, 2):
            layers += [
                nn.ConvTranspose2d(w * m, w * m // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(w * m // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, cout, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return (self.model(x * 2 - 1) + 1) / 2


# ---- MRRN --------------------------------------------------------------------------------------------
def conv_lrelu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.LeakyReLU(0.1)
    )


class C2FDFE(nn.Module):
    """One coarse-to-fine deformation-field estimator: M_C on (f_ir, f_pir, |f_ir - f_pir|, prior flow),
    then phi_r = M_R(phi_c) + phi_c (eq. 2)."""

    def __init__(self, c: int, width: int):
        super().__init__()
        self.coarse = nn.Sequential(
            conv_lrelu(3 * c + 2, width),
            conv_lrelu(width, width, dilation=2),
            conv_lrelu(width, width, dilation=4),
            nn.Conv2d(width, 2, 3, padding=1),
        )
        self.refine = nn.Sequential(
            conv_lrelu(2, 16), conv_lrelu(16, 16, dilation=2), nn.Conv2d(16, 2, 3, padding=1)
        )

    def forward(self, f_ir, f_pir, prior):
        phi_c = prior + self.coarse(torch.cat((f_ir, f_pir, (f_ir - f_pir).abs(), prior), 1))
        return self.refine(phi_c) + phi_c


class MRRN(nn.Module):
    """Deformation field (pixels, full resolution) that registers the distorted IR onto the pseudo-IR."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.level2 = nn.Sequential(conv_lrelu(1, w, 2), conv_lrelu(w, w))  # shared extractor (SM-FE), 1/2
        self.level4 = nn.Sequential(conv_lrelu(w, 2 * w, 2), conv_lrelu(2 * w, 2 * w))  # 1/4
        self.dfe4 = C2FDFE(2 * w, 2 * w)
        self.dfe2 = C2FDFE(w, w + 8)

    def forward(self, ir, pseudo_ir):
        i2, p2 = self.level2(ir), self.level2(pseudo_ir)
        i4, p4 = self.level4(i2), self.level4(p2)
        b, _, h4, w4 = i4.shape
        flow4 = self.dfe4(i4, p4, i4.new_zeros(b, 2, h4, w4))
        prior2 = F.interpolate(flow4, scale_factor=2.0, mode="bilinear", align_corners=False) * 2
        flow2 = self.dfe2(warp(i2, prior2), p2, prior2)  # the level sees IR features pre-warped by the prior
        return F.interpolate(flow2, scale_factor=2.0, mode="bilinear", align_corners=False) * 2


# ---- DIFN --------------------------------------------------------------------------------------------
class ResidualDenseBlock(nn.Module):
    def __init__(self, c: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + i * growth, growth, 3, padding=1), nn.ReLU(True))
            for i in range(layers)
        )
        self.fuse = nn.Conv2d(c + layers * growth, c, 1)

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return x + self.fuse(torch.cat(features, 1))


class InteractionFusion(nn.Module):
    """IFM, eqs. 5-7."""

    def __init__(self, c: int):
        super().__init__()
        self.q_ir, self.q_vis = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.out = nn.Conv2d(2 * c, 1, 3, padding=1)

    def forward(self, f_ir, f_vis):
        att = torch.sigmoid(self.q_ir(f_ir) * self.q_vis(f_vis))
        return self.out(torch.cat((f_ir * (1 + att), f_vis * (1 + att)), 1))


class DIFN(nn.Module):
    def __init__(self, c: int = 64, growth: int = 32, blocks: int = 2, layers: int = 4):
        super().__init__()

        def path():
            return nn.Sequential(
                nn.Conv2d(1, c, 3, padding=1),
                nn.ReLU(True),
                *[ResidualDenseBlock(c, growth, layers) for _ in range(blocks)],
            )

        self.path_ir, self.path_vis = path(), path()
        self.ifm = InteractionFusion(c)

    def forward(self, ir, vis):
        return torch.sigmoid(self.ifm(self.path_ir(ir), self.path_vis(vis)))


class UMFCMGR(nn.Module):
    def __init__(self, config: UMFCMGRConfig | None = None):
        super().__init__()
        self.config = c = config or UMFCMGRConfig()
        self.cpstn = ResnetGenerator(c.cpstn_width, c.cpstn_blocks)
        self.mrrn = MRRN(c.mrrn_width)
        self.difn = DIFN(c.difn_width, c.difn_growth, c.difn_blocks, c.difn_layers)

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        h, w = visible.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"umf-cmgr needs H and W multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        pseudo_ir = self.cpstn(visible)
        flow = self.mrrn(thermal, pseudo_ir)
        registered = warp(thermal, flow)
        return self.difn(registered, visible), registered, flow

    def fuse_registered(self, visible: torch.Tensor, thermal: torch.Tensor):
        """`forward` for a pair that is already registered: DIFN alone, the flow zero."""
        flow = torch.zeros_like(thermal).expand(-1, 2, -1, -1)
        return self.difn(thermal, visible), thermal, flow
