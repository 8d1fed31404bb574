"""Training crops and the fixed misaligned test set, built from `Pair`s and the misalignment synthesiser.

A sample is a dict of float32 tensors: `visible`, `thermal` (misaligned), `aligned` (the original
thermal image: the oracle), `flow` (2, H, W) ground truth and `valid` (1, H, W).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .data import Pair, pair_seed
from .synth import MisalignConfig, misalign, misalign_range


def sample_from(
    visible: np.ndarray, aligned: np.ndarray, rng: np.random.Generator, config: MisalignConfig
) -> dict[str, np.ndarray]:
    m = misalign(aligned, rng, config)
    return {
        "visible": visible,
        "thermal": m.thermal,
        "aligned": aligned,
        "flow": m.flow.transpose(2, 0, 1),
        "valid": m.valid.astype(np.float32),
    }


def to_tensors(sample: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        k: torch.from_numpy(np.ascontiguousarray(v if v.ndim == 3 else v[None])) for k, v in sample.items()
    }


class MisalignedCrops(Dataset):
    """Random crops of freshly misaligned pairs: every epoch sees new deformations (seeded by `seed`,
    the epoch set with `set_epoch`, and the index). The whole image is deformed before cropping, so the
    crop's neighbourhood supplies content and only the true frame border goes missing. Given several
    configs (ranges), each crop's deformation comes from one of them, picked at random with equal odds."""

    def __init__(
        self,
        pairs: list[Pair],
        crop: int,
        config: MisalignConfig | list[MisalignConfig] | None = None,
        seed: int = 0,
        repeats: int = 1,
        misaligned: bool = True,
    ):
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs, self.crop, self.seed, self.repeats = pairs, crop, seed, repeats
        configs = config if isinstance(config, list) else [config or MisalignConfig()]
        if not configs:
            raise ValueError("no misalignment config")
        self.configs = configs
        self.misaligned = misaligned
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pair = self.pairs[index % len(self.pairs)]
        visible, thermal = pair.visible, pair.thermal
        scale = self.crop / min(visible.shape)
        if scale > 1:  # small images are enlarged to hold one crop
            size = (int(np.ceil(visible.shape[1] * scale)), int(np.ceil(visible.shape[0] * scale)))
            visible = cv2.resize(visible, size, interpolation=cv2.INTER_LINEAR)
            thermal = cv2.resize(thermal, size, interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:  # horizontal flip: a mirrored scene is as plausible
            visible, thermal = visible[:, ::-1].copy(), thermal[:, ::-1].copy()
        config = self.configs[0] if len(self.configs) == 1 else self.configs[rng.integers(len(self.configs))]
        config = config if self.misaligned else MisalignConfig(0, 0, 0, 0, 0)
        sample = sample_from(visible, thermal, rng, config)
        h, w = visible.shape
        y, x = rng.integers(0, h - self.crop + 1), rng.integers(0, w - self.crop + 1)
        cropped = {k: v[..., y : y + self.crop, x : x + self.crop] for k, v in sample.items()}
        return to_tensors(cropped)


class FixedMisaligned(Dataset):
    """Whole test pairs, each with the deformation fixed by its name (`pair_seed`): identical inputs for
    every model and every run.

    `stream` names an independent set of fixed deformations: the default range's test deformations draw
    from `pair_seed(name)` alone (unchanged since the shipped weights were scored), every other named
    range from `pair_seed(name) + [crc32(stream)]`, so a large deformation is not the default one scaled."""

    def __init__(self, pairs: list[Pair], config: MisalignConfig | None = None, stream: str = ""):
        self.pairs, self.config, self.stream = pairs, config or MisalignConfig(), stream

    @classmethod
    def of_range(cls, pairs: list[Pair], name: str) -> FixedMisaligned:
        """The fixed test deformations of the named range (training.synth.MISALIGN_RANGES)."""
        return cls(pairs, misalign_range(name), "" if name == "default" else name)

    def seed(self, name: str) -> list[int]:
        return pair_seed(name) + ([zlib.crc32(self.stream.encode())] if self.stream else [])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[index]
        rng = np.random.default_rng(self.seed(pair.name))
        return to_tensors(sample_from(pair.visible, pair.thermal, rng, self.config))
