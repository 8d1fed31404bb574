"""A rig with known truth made from aligned visible/thermal image pairs (RoadScene's, or any pair that
shows one view in both modalities).

The visible camera sees the whole pair, resized to its frame size; the thermal camera sees a window of
it `fov_ratio` times narrower, rolled and shifted, at its own resolution. Every pair is seen through the
same rig, as a drone's cameras see different ground through one fixed mounting, so the pairs behave like
stills of one flight (`skyfuse calibrate --time-offset 0`) whose visible→thermal homography is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import SkyfuseError
from core.warp import warp


@dataclass(frozen=True)
class RigSpec:
    fov_ratio: float = 1.9  # visible field-of-view width / thermal field-of-view width
    roll_deg: float = 3.0  # roll of the thermal camera (+ = clockwise on screen)
    shift: tuple[float, float] = (0.05, -0.03)  # thermal view centre - visible centre, fraction of W, H
    visible_size: tuple[int, int] = (640, 480)  # (width, height)
    thermal_size: tuple[int, int] = (320, 256)


def _translation(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _resize_matrix(source: tuple[int, int], target: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates of `source` (W, H) after cv2.resize to `target`, which maps pixel centres."""
    sx, sy = target[0] / source[0], target[1] / source[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def true_homography(spec: RigSpec) -> np.ndarray:
    """Visible px -> thermal px of the rig: the thermal view's centre sits at the visible centre plus
    the shift, and a visible pixel spans fov_ratio × thermal width / visible width thermal pixels."""
    (vw, vh), (tw, th) = spec.visible_size, spec.thermal_size
    scale = spec.fov_ratio * tw / vw
    angle = math.radians(spec.roll_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0],
                         [0, 0, 1]])
    centre = ((vw - 1) / 2 + spec.shift[0] * vw, (vh - 1) / 2 + spec.shift[1] * vh)
    return (_translation((tw - 1) / 2, (th - 1) / 2) @ rotation @ np.diag([scale, scale, 1.0])
            @ _translation(-centre[0], -centre[1]))


def check_spec(spec: RigSpec) -> None:
    """Raise SkyfuseError unless the thermal view lies inside the visible one (outside it, the thermal
    frame would show a border that no visible frame has)."""
    if spec.fov_ratio <= 1.0:
        raise SkyfuseError(f"aligned rig: the visible view must be the wider one (fov_ratio > 1), "
                           f"got {spec.fov_ratio}")
    (vw, vh), (tw, th) = spec.visible_size, spec.thermal_size
    corners = np.array([[[0, 0], [tw - 1, 0], [tw - 1, th - 1], [0, th - 1]]], np.float64)
    seen = cv2.perspectiveTransform(corners, np.linalg.inv(true_homography(spec)))[0]
    if seen.min() < 0 or np.any(seen.max(axis=0) > (vw - 1, vh - 1)):
        raise SkyfuseError(f"aligned rig: the thermal view of {spec} leaves the visible frame; use a "
                           "larger fov_ratio or a smaller shift")


def render_pair(visible: np.ndarray, thermal: np.ndarray, spec: RigSpec) -> tuple[np.ndarray, np.ndarray]:
    """(visible frame, thermal frame) of one aligned pair (same size, pixel-aligned) seen through the rig.
    The thermal frame is resampled from the original pair, not from the resized visible frame's grid."""
    if visible.shape[:2] != thermal.shape[:2]:
        raise SkyfuseError(f"aligned rig: the pair's images differ in size ({visible.shape[1::-1]} vs "
                           f"{thermal.shape[1::-1]}): they must be pixel-aligned")
    check_spec(spec)
    source = (visible.shape[1], visible.shape[0])
    grow = spec.visible_size[0] > source[0]
    frame = cv2.resize(visible, spec.visible_size, interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA)
    to_thermal = true_homography(spec) @ _resize_matrix(source, spec.visible_size)
    return frame, warp(thermal, to_thermal, spec.thermal_size)
