"""Geometric calibration from a target: a heated checkerboard or circle grid seen by both cameras.

The board's inner corners (or circle centres) are found in both images of each frame pair; the
homography maps the visible points onto the thermal ones. A heated board often shows inverted contrast
in thermal (the dark squares are the warm ones), so each image is searched as it is and inverted. A
checkerboard's corner order is only defined up to the board's symmetry, which inversion can flip: of
the orders that fit, the one with the smallest roll between the cameras is taken (rigs are mounted
roughly upright).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import SkyfuseError

from .features import to_gray

PATTERNS = ("checkerboard", "circles")


@dataclass
class TargetConfig:
    pattern: str = "checkerboard"  # checkerboard | circles
    grid: tuple[int, int] = (9, 6)  # inner corners (checkerboard) or circles (circle grid): columns, rows


@dataclass
class TargetEstimate:
    visible_to_thermal: np.ndarray
    reprojection_rms_px: float  # thermal px
    reprojection_max_px: float
    pairs_used: int
    pairs_tried: int


def detect(image: np.ndarray, config: TargetConfig) -> np.ndarray | None:
    """The target's points (N, 2) in image px, in the detector's row-major order, or None."""
    gray = (to_gray(image) * 255).astype(np.uint8)
    for candidate in (gray, 255 - gray):
        if config.pattern == "checkerboard":
            found, points = cv2.findChessboardCornersSB(candidate, config.grid, flags=cv2.CALIB_CB_EXHAUSTIVE)
        else:
            found, points = cv2.findCirclesGrid(candidate, config.grid, flags=cv2.CALIB_CB_SYMMETRIC_GRID)
        if found:
            return points.reshape(-1, 2).astype(np.float64)
    return None


def _orderings(points: np.ndarray, grid: tuple[int, int]) -> list[np.ndarray]:
    """The point orders the detector could have chosen for the same physical board."""
    cols, rows = grid
    board = points.reshape(rows, cols, 2)
    orders = [board, board[::-1, ::-1]]
    if cols == rows:
        orders += [board.transpose(1, 0, 2)[::-1], board.transpose(1, 0, 2)[:, ::-1]]
    return [o.reshape(-1, 2) for o in orders]


def _roll(matrix: np.ndarray, at: np.ndarray) -> float:
    """Rotation (rad) the homography applies to a small step along x at `at`."""
    ends = cv2.perspectiveTransform(np.array([[at, at + [10.0, 0.0]]]), matrix)[0]
    step = ends[1] - ends[0]
    return abs(math.atan2(step[1], step[0]))


def estimate_target(pairs: list[tuple[np.ndarray, np.ndarray]], config: TargetConfig) -> TargetEstimate:
    """The homography from the target points of all (visible, thermal) pairs where both views show it."""
    if config.pattern not in PATTERNS:
        raise SkyfuseError(f"unknown target pattern {config.pattern!r}; choose one of {', '.join(PATTERNS)}")
    if min(config.grid) < 2:
        raise SkyfuseError(f"the target grid must be at least 2x2, got {config.grid[0]}x{config.grid[1]}")
    sources, targets, seen = [], [], {"visible": 0, "thermal": 0}
    for visible, thermal in pairs:
        v_points, t_points = detect(visible, config), detect(thermal, config)
        seen["visible"] += v_points is not None
        seen["thermal"] += t_points is not None
        if v_points is None or t_points is None:
            continue
        best = None
        for order in _orderings(t_points, config.grid):
            matrix, _ = cv2.findHomography(v_points, order, 0)
            if matrix is not None and (best is None or _roll(matrix, v_points[0]) < best[0]):
                best = (_roll(matrix, v_points[0]), order)
        if best is not None:
            sources.append(v_points)
            targets.append(best[1])
    if not sources:
        raise SkyfuseError(
            f"the {config.pattern} target ({config.grid[0]}x{config.grid[1]}) was not found in both views of "
            f"any of {len(pairs)} frame pairs (found in {seen['visible']} visible and {seen['thermal']} "
            "thermal frames): check --grid and that the board is heated and fully in view"
        )
    src, dst = np.concatenate(sources), np.concatenate(targets)
    matrix, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
    if matrix is None:
        raise SkyfuseError("the target points do not fit one homography (is the board flat and rigid?)")
    keep = inliers.ravel() > 0
    matrix, _ = cv2.findHomography(src[keep], dst[keep], 0)  # least squares on the inliers
    errors = np.linalg.norm(cv2.perspectiveTransform(src[None], matrix)[0] - dst, axis=1)
    return TargetEstimate(
        matrix / matrix[2, 2],
        float(np.sqrt(np.mean(errors[keep] ** 2))),
        float(errors.max()),
        len(sources),
        len(pairs),
    )
