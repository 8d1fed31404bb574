"""Colour-preserving fusion: fuse the luminance, keep the visible chroma (YCrCb, as UMF-CMGR does)."""

from __future__ import annotations

import cv2
import numpy as np


def split_luma(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y as float32 in 0..255, CrCb uint8 (H, W, 2)) of one BGR uint8 image."""
    ycrcb = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)
    return ycrcb[..., 0].astype(np.float32), ycrcb[..., 1:]


def merge_luma(luma: np.ndarray, crcb: np.ndarray) -> np.ndarray:
    """BGR uint8 from a fused luminance (float, clipped to 0..255) and the visible chroma."""
    y = np.clip(luma + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.dstack([y, crcb]), cv2.COLOR_YCrCb2BGR)
