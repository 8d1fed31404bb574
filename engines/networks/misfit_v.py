"""MISFIT-V (Chaturvedi et al., 2023): fusion of misaligned visible/thermal pairs without registration.

- Cross-attention front (§3.1.1): each modality is encoded to 1/8 resolution (three stride-2 convs);
  visible tokens query the thermal tokens and thermal tokens query the visible ones (multi-head attention
  over all token pairs, quadratic in the number of tokens), so each modality can pick what is relevant
  from the other without alignment. The two attended maps are projected, upsampled to full resolution and
  concatenated with both images as the generator input.
- Generator: pix2pix U-Net with 8 stride-2 levels (unet_256: widths w, 2w, 4w, 8w × 5; dropout in the
  three innermost decoder levels; ~54 M parameters at w = 64, the paper width). Output tanh -> [0, 1].
- Two PatchGAN discriminators (`PatchDiscriminator`, training only, ~2.8 M each at width 64), each fed
  (source, fused) concatenated.

The network does not register: `registered` is the thermal input and `flow` is zero.
Size constraint: H and W multiples of 256 (8 stride-2 levels); dynamic H×W (no size in the weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIZE_MULTIPLE = 256


@dataclass
class MisfitVConfig:
    width: int = 64  # U-Net ngf (paper: 64); discriminators use the same width
    attention_dim: int = 64  # token width of the cross-attention front
    attention_heads: int = 4
    attention_out: int = 4  # channels per modality handed from the attention front to the U-Net
    dropout: float = 0.5  # pix2pix dropout in the innermost decoder levels


class ModalityEncoder(nn.Module):
    """(B, 1, H, W) -> (B, dim, H/8, W/8)."""

    def __init__(self, dim: int):
        super().__init__()
        layers, c = [], 1
        for out in (dim // 4, dim // 2, dim):
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c = out
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class CrossAttentionFront(nn.Module):
    def __init__(self, dim: int, heads: int, out: int):
        super().__init__()
        self.enc_vis, self.enc_ir = ModalityEncoder(dim), ModalityEncoder(dim)
        self.vis_from_ir = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ir_from_vis = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_vis, self.norm_ir = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.proj = nn.Conv2d(2 * dim, 2 * out, 1)

    def tokens(self, visible, thermal):
        """Attended token maps (B, dim, H/8, W/8) for both modalities (also used by the contrastive loss)."""
        fv, ft = self.enc_vis(visible), self.enc_ir(thermal)
        b, c, h, w = fv.shape
        tv, tt = fv.flatten(2).transpose(1, 2), ft.flatten(2).transpose(1, 2)
        qv, qt = self.norm_vis(tv), self.norm_ir(tt)
        av = tv + self.vis_from_ir(qv, qt, qt, need_weights=False)[0]  # visible queries thermal
        at = tt + self.ir_from_vis(qt, qv, qv, need_weights=False)[0]  # thermal queries visible
        return av.transpose(1, 2).reshape(b, c, h, w), at.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, visible, thermal):
        av, at = self.tokens(visible, thermal)
        maps = self.proj(torch.cat((av, at), 1))
        return F.interpolate(maps, size=visible.shape[-2:], mode="bilinear", align_corners=False)


class UnetBlock(nn.Module):
    """pix2pix skip block: down -> inner -> up, output concatenated with the input (except outermost)."""

    def __init__(
        self,
        outer: int,
        inner: int,
        cin: int | None = None,
        sub: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        dropout: float = 0.0,
        cout: int | None = None,
    ):
        super().__init__()
        cin = cin or outer
        self.outermost = outermost
        down = [nn.LeakyReLU(0.2, True), nn.Conv2d(cin, inner, 4, 2, 1, bias=False)]
        if outermost:
            down = down[1:]
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner * 2, cout, 4, 2, 1), nn.Tanh()]
            layers = down + [sub] + up
        elif innermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            layers = down + up
        else:
            down = down + [nn.BatchNorm2d(inner)]
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False),
                nn.BatchNorm2d(outer),
            ]
            layers = down + [sub] + up + ([nn.Dropout(dropout)] if dropout else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat((x, self.model(x)), 1)


def unet_256(cin: int, cout: int, w: int, dropout: float) -> nn.Module:
    block = UnetBlock(8 * w, 8 * w, innermost=True)
    for _ in range(3):
        block = UnetBlock(8 * w, 8 * w, sub=block, dropout=dropout)
    block = UnetBlock(4 * w, 8 * w, sub=block)
    block = UnetBlock(2 * w, 4 * w, sub=block)
    block = UnetBlock(w, 2 * w, sub=block)
    return UnetBlock(cout, w, cin=cin, sub=block, outermost=True, cout=cout)


class PatchDiscriminator(nn.Module):
    """pix2pix 70×70 PatchGAN on the channel concatenation of its inputs (MISFIT-V: (source, fused);
    CycleGAN: one image); returns one logit per patch."""

    def __init__(self, cin: int = 2, width: int = 64, layers: int = 3):
        super().__init__()
        seq = [nn.Conv2d(cin, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(width * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq += [nn.Conv2d(width * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat(images, 1))


class MisfitV(nn.Module):
    def __init__(self, config: MisfitVConfig | None = None):
        super().__init__()
        self.config = c = config or MisfitVConfig()
        self.front = CrossAttentionFront(c.attention_dim, c.attention_heads, c.attention_out)
        self.generator = unet_256(2 + 2 * c.attention_out, 1, c.width, c.dropout)

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        h, w = visible.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"misfit-v needs H and W multiples of {SIZE_MULTIPLE} (8 stride-2 levels), got {h}x{w}"
            )
        x = torch.cat((visible, thermal, self.front(visible, thermal)), 1)
        fused = (self.generator(x) + 1) / 2
        b = visible.shape[0]
        return fused, thermal, thermal.new_zeros(b, 2, h, w)
