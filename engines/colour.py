"""Colour-preserving fusion: fuse the luminance, keep the visible chroma (YCrCb, as UMF-CMGR does)."""

from __future__ import annotations

import cv2
import numpy as np


def split_luma(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y uint8 (H, W), the YCrCb image (H, W, 3)) of one BGR uint8 image; pass the second to
    `merge_luma`, which reuses it for the chroma."""
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    return ycrcb[..., 0].copy(), ycrcb


def merge_luma(luma: np.ndarray, ycrcb: np.ndarray) -> np.ndarray:
    """BGR uint8 from a fused luminance (uint8, or float in 0..255, rounded and clipped) and the visible
    image's YCrCb from `split_luma` (its Y channel is overwritten)."""
    if luma.dtype != np.uint8:
        luma = np.clip(luma + 0.5, 0, 255).astype(np.uint8)
    ycrcb[..., 0] = luma
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)
