"""DAE-Fuse (Guo et al., 2024): a discriminative autoencoder in two phases. No public code: the layer
sizes below are this project's reading of the paper (§II, Figs. 1 and 3).

- Shallow encoder SE: a 3×3 embedding and a Restormer block (multi-Dconv transposed, i.e. channel,
  attention + gated-Dconv feed-forward), shared by both modalities.
- Deep high-frequency encoder DHE: ResNet basic blocks at full resolution (the paper: "a ResNet18").
- Deep low-frequency encoder DLE: a vision transformer over `patch`×`patch` patches (convolutional
  positional encoding, so any size works), projected back to full resolution.
- Embedding Φ(x) = concat(DHE(SE(x)), DLE(SE(x))) (eq. 1). The reconstruction decoder RD (same
  architecture as SE) maps Φ to an image: phase 1 reconstructs each source (eq. 2).
- Phase 2 (eq. 4): cross-attention between the two embeddings (the visible one gives the query, the thermal
  one key and value, and the reverse), channel-wise like Restormer so the cost stays linear in pixels; the
  two attended embeddings are concatenated and decoded by RD into the fused image.
- `Discriminator` (training only): Conv-LeakyReLU-BatchNorm stack and a fully connected layer.

`forward` is the phase-2 fusion; the network does not register (thermal returned, zero flow).
Size constraint: H and W multiples of `patch` (8 by default); dynamic H×W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIZE_MULTIPLE = 8


@dataclass
class DAEFuseConfig:
    dim: int = 64  # feature channels
    heads: int = 8  # attention heads (Restormer blocks, ViT, cross-attention)
    high_blocks: int = 4  # ResNet basic blocks in the high-frequency encoder
    vit_depth: int = 4  # transformer layers in the low-frequency encoder
    patch: int = 8  # ViT patch size (the size constraint)
    ffn_expansion: float = 2.66  # Restormer GDFN expansion


class ChannelNorm(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) map."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelAttention(nn.Module):
    """Restormer MDTA: attention across channels (C/heads × C/heads per head); queries from `x`, keys and
    values from `context` (= x for self-attention)."""

    def __init__(self, c: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Sequential(nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 3, padding=1, groups=c))
        self.kv = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c))
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        q = self.q(x)
        k, v = self.kv(x if context is None else context).chunk(2, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.out((attn @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """Restormer GDFN."""

    def __init__(self, c: int, expansion: float):
        super().__init__()
        hidden = int(c * expansion)
        self.inp = nn.Conv2d(c, 2 * hidden, 1)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.out = nn.Conv2d(hidden, c, 1)

    def forward(self, x):
        a, g = self.dw(self.inp(x)).chunk(2, dim=1)
        return self.out(F.gelu(a) * g)


class RestormerBlock(nn.Module):
    def __init__(self, c: int, heads: int, expansion: float):
        super().__init__()
        self.norm1, self.attn = ChannelNorm(c), ChannelAttention(c, heads)
        self.norm2, self.ffn = ChannelNorm(c), GatedFeedForward(c, expansion)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 conv + BN, identity shortcut)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return F.relu(x + self.body(x))


class LowFrequencyEncoder(nn.Module):
    """ViT over patches: patch embedding, convolutional position encoding, transformer layers, unpatchify."""

    def __init__(self, c: int, heads: int, depth: int, patch: int):
        super().__init__()
        self.embed = nn.Conv2d(c, c, patch, stride=patch)
        self.position = nn.Conv2d(c, c, 3, padding=1, groups=c)
        layer = nn.TransformerEncoderLayer(c, heads, 2 * c, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.unembed = nn.ConvTranspose2d(c, c, patch, stride=patch)

    def forward(self, x):
        t = self.embed(x)
        t = t + self.position(t)
        b, c, h, w = t.shape
        t = self.transformer(t.flatten(2).transpose(1, 2))
        return self.unembed(t.transpose(1, 2).reshape(b, c, h, w))


class Decoder(nn.Module):
    """RD: same architecture as SE (a Restormer block), from an embedding to an image in [0, 1]."""

    def __init__(self, cin: int, c: int, heads: int, expansion: float):
        super().__init__()
        self.reduce = nn.Conv2d(cin, c, 1)
        self.block = RestormerBlock(c, heads, expansion)
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.out(self.block(self.reduce(x))))


class Discriminator(nn.Module):
    """Conv-LeakyReLU-BatchNorm stack + fully connected layer -> one real/fake logit per image."""

    def __init__(self, width: int = 32, layers: int = 4):
        super().__init__()
        seq, c = [], 1
        for i in range(layers):
            out = width * 2**i
            seq += [nn.Conv2d(c, out, 3, 2, 1), nn.LeakyReLU(0.2, True)] + (
                [nn.BatchNorm2d(out)] if i else []
            )
            c = out
        self.features = nn.Sequential(*seq)
        self.fc = nn.Linear(c, 1)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class DAEFuse(nn.Module):
    def __init__(self, config: DAEFuseConfig | None = None):
        super().__init__()
        self.config = c = config or DAEFuseConfig()
        self.shallow = nn.Sequential(
            nn.Conv2d(1, c.dim, 3, padding=1), RestormerBlock(c.dim, c.heads, c.ffn_expansion)
        )
        self.high = nn.Sequential(*[BasicBlock(c.dim) for _ in range(c.high_blocks)])
        self.low = LowFrequencyEncoder(c.dim, c.heads, c.vit_depth, c.patch)
        self.decoder = Decoder(2 * c.dim, c.dim, c.heads, c.ffn_expansion)
        self.cross_vis = ChannelAttention(2 * c.dim, c.heads)
        self.cross_ir = ChannelAttention(2 * c.dim, c.heads)
        self.merge = nn.Conv2d(4 * c.dim, 2 * c.dim, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(high-frequency, low-frequency) features; Φ(x) is their concatenation (eq. 1)."""
        h, w = x.shape[-2:]
        if h % self.config.patch or w % self.config.patch:
            raise ValueError(
                f"dae-fuse needs H and W multiples of {self.config.patch} (ViT patches), got {h}x{w}"
            )
        s = self.shallow(x)
        return self.high(s), self.low(s)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Phase 1: RD(Φ(x)) (eq. 2)."""
        return self.decoder(torch.cat(self.encode(x), 1))

    def fuse(self, phi_vis: torch.Tensor, phi_ir: torch.Tensor) -> torch.Tensor:
        """Phase 2 (eq. 4): cross-attended embeddings, concatenated, decoded."""
        att_vis = phi_vis + self.cross_vis(phi_vis, phi_ir)  # visible queries, thermal keys/values
        att_ir = phi_ir + self.cross_ir(phi_ir, phi_vis)
        return self.decoder(self.merge(torch.cat((att_vis, att_ir), 1)))

    def forward(self, visible: torch.Tensor, thermal: torch.Tensor):
        fused = self.fuse(torch.cat(self.encode(visible), 1), torch.cat(self.encode(thermal), 1))
        b, _, h, w = visible.shape
        return fused, thermal, thermal.new_zeros(b, 2, h, w)
