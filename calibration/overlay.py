"""The picture a person judges a calibration by: the thermal image with the visible edges drawn over it,
before (plain resize) and after (the calibrated warp), side by side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.errors import SkyfuseError
from core.rig import Rig
from core.warp import warp

from .features import to_float, to_gray


def edge_overlay(visible: np.ndarray, thermal: np.ndarray, matrix: np.ndarray, label: str) -> np.ndarray:
    """BGR thermal image (gray) with the main visible edges, warped by `matrix` into it, in magenta.
    Only the strongest edges of the smoothed visible image are drawn, so the picture stays readable."""
    th, tw = thermal.shape[:2]
    warped = warp(to_float(visible), matrix, (tw, th))
    gray = (
        cv2.GaussianBlur(
            cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY) if warped.ndim == 3 else warped, (0, 0), 2.0
        )
        * 255
    ).astype(np.uint8)
    # Canny's gradient is the 3×3 Sobel magnitude; its thresholds are set from that gradient's percentiles
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    high = max(float(np.percentile(magnitude, 90)), 1.0)
    edges = cv2.Canny(gray, high / 2, high, L2gradient=True) > 0
    picture = cv2.cvtColor((to_gray(thermal) * 220).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    picture[edges] = (255, 0, 255)
    cv2.putText(picture, label, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(picture, label, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return picture


def before_after(visible: np.ndarray, thermal: np.ndarray, rig: Rig) -> np.ndarray:
    """Two overlays side by side: the plain resize (identity rig), then the calibrated rig."""
    size = (thermal.shape[1], thermal.shape[0])
    naive = Rig.identity(rig.visible_size, rig.thermal_size)
    panels = [
        edge_overlay(visible, thermal, r.homography_for(visible.shape, size), text)
        for r, text in ((naive, "before: plain resize"), (rig, f"after: {rig.method} calibration"))
    ]
    gap = np.full((thermal.shape[0], 8, 3), 255, np.uint8)
    return np.hstack([panels[0], gap, panels[1]])


def write_png(path: str | Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise SkyfuseError(f"cannot write {path}")
