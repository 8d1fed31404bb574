"""VGG-19 features for UMF-CMGR's perceptual/style loss, only from weights present on this machine.

Pretrained weights cannot be downloaded here: set SKYFUSE_VGG19 to torchvision's vgg19 state dict
(vgg19-dcbb9e9d.pth), or place it in torch's hub cache. Without it `load_vgg19` returns None and the
recipe trains without the perceptual/style term (it says so once).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

# torchvision's VGG-19 "features" layer list (configuration E); "M" = max-pool.
VGG19_LAYERS = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
]
PAPER_LAYERS = (2, 7, 12, 21, 30)  # UMF-CMGR eq. 8: psi_j, j in [2, 7, 12, 21, 30]
PAPER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1.0, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_path() -> Path | None:
    candidates = [
        os.environ.get("SKYFUSE_VGG19", ""),
        str(Path(torch.hub.get_dir()) / "checkpoints" / "vgg19-dcbb9e9d.pth"),
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


class VGG19Features(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for item in VGG19_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, item, 3, padding=1), nn.ReLU(inplace=False)]
                c = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, gray: torch.Tensor) -> list[torch.Tensor]:
        """Features after each of PAPER_LAYERS for a (B, 1, H, W) image in [0, 1]."""
        x = (gray.expand(-1, 3, -1, -1) - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features[: max(PAPER_LAYERS) + 1]):
            x = layer(x)
            if i in PAPER_LAYERS:
                out.append(x)
        return out


def load_vgg19() -> VGG19Features | None:
    path = vgg19_path()
    if path is None:
        return None
    model = VGG19Features()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
    return model.eval().requires_grad_(False)
