"""Geometric calibration from footage: the visible→thermal homography found by cross-modal edge matching.

Coarse to fine, as in classical multi-modal image registration:
1. a global search over the visible camera's relative field of view (scale), roll (rotation) and
   position, on small images, scoring every candidate by the normalised cross-correlation of edge
   strength summed over several frame pairs (the rig is fixed, so one transform must fit them all);
2. a local search around the best few candidates at a finer resolution;
3. enhanced correlation coefficient maximisation (Evangelidis & Psarakis, PAMI 2008; OpenCV's
   findTransformECC) of the full homography on edge-strength images at half and full thermal
   resolution, per frame pair, combined by the median of the mapped thermal corners.
The spread of the per-pair results gives the corner error estimate (with the share of the error that
all pairs have in common, which averaging does not remove); the contrast between the best and the
runner-up global candidate, the final correlation and that estimate give the confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.errors import SkyfuseError

from .features import edge_strength, ncc

MODELS = ("homography", "affine", "similarity")
# The share of one pair's error variance that every pair has in common (see _combine); measured on rigs
# built from RoadScene's aligned pairs (benchmarks/calibration.py), where the truth is known.
SHARED_ERROR = 0.3
# Below this confidence `skyfuse calibrate` refuses to write the rig (unless --force): on the benchmark
# rigs, estimates under it came with corner errors of several pixels.
MIN_CONFIDENCE = 0.3


@dataclass
class FootageConfig:
    model: str = "homography"  # homography | affine (2-D affine) | similarity (scale, rotation, shift)
    fov_ratio: tuple[float, float] = (1.2, 4.0)  # visible FOV width / thermal FOV width, searched range
    max_rotation_deg: float = 6.0  # roll between the cameras, searched range ±
    coarse_width: int = 64  # thermal width (px) of the global search
    fine_width: int = 160  # thermal width of the local search
    coarse_pairs: int = 4  # frame pairs used by the searches (ECC uses all)
    min_score: float = 0.1  # the final edge NCC below which the footage is said not to constrain it
    min_contrast: float = 1.02  # best / runner-up global score below which the match is ambiguous
    min_pairs: int = 3  # fewer pairs cannot show that one transform fits different ground


@dataclass
class GeometryEstimate:
    visible_to_thermal: np.ndarray  # 3×3, visible px -> thermal px (at the sizes of the given images)
    corner_error_px: float  # estimated mean error at the thermal corners (from the per-pair spread)
    confidence: float  # 0..1
    score_before: float  # edge NCC of the plain resize (identity rig)
    score_after: float  # edge NCC after calibration
    pairs_used: int
    details: dict = field(default_factory=dict)


def thermal_corners(thermal_size: tuple[int, int]) -> np.ndarray:
    w, h = thermal_size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def corner_distances(estimate: np.ndarray, truth: np.ndarray, thermal_size: tuple[int, int]) -> np.ndarray:
    """Distance (thermal px) at each of the 4 thermal frame corners between two visible→thermal
    homographies: the thermal corner is taken back into the visible view by the truth, then forward by
    the estimate."""
    corners = thermal_corners(thermal_size).reshape(-1, 1, 2)
    in_visible = cv2.perspectiveTransform(corners, np.linalg.inv(truth))
    mapped = cv2.perspectiveTransform(in_visible, estimate)
    return np.linalg.norm((mapped - corners).reshape(-1, 2), axis=1)


def corner_error(estimate: np.ndarray, truth: np.ndarray, thermal_size: tuple[int, int]) -> float:
    """Mean of `corner_distances`."""
    return float(corner_distances(estimate, truth, thermal_size).mean())


def corners_in_visible(matrix: np.ndarray, thermal_size: tuple[int, int]) -> np.ndarray:
    """(4, 2) visible px that a visible→thermal matrix maps onto the thermal frame corners."""
    corners = thermal_corners(thermal_size).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(corners, np.linalg.inv(matrix)).reshape(-1, 2)


def _resize_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """Pixel coordinates after resizing an image by (sx, sy), as cv2.resize maps pixel centres."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _resize_width(gray: np.ndarray, width: int) -> np.ndarray:
    height = max(8, round(gray.shape[0] * width / gray.shape[1]))
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)


def _warp(gray: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`gray` warped by a 3×3 matrix into `size`, with the mask of pixels it covers (eroded so that the
    artificial edge at its border is not matched)."""
    warped = cv2.warpPerspective(gray, matrix, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.ones(gray.shape[:2], np.uint8), matrix, size, flags=cv2.INTER_NEAREST)
    return warped, cv2.erode(mask, np.ones((5, 5), np.uint8))


@dataclass
class _Candidate:
    score: float
    ratio: float
    angle: float
    matrix: np.ndarray  # visible px -> search-level thermal px


class _Search:
    """Scale/rotation/translation search at one resolution, summed over frame pairs."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], width: int, max_ratio: float):
        self.templates = [edge_strength(_resize_width(t, width)) for _, t in pairs]
        # Every candidate downscales from this copy, just above the largest size any candidate needs.
        base = min(pairs[0][0].shape[1], math.ceil(1.1 * max_ratio * width))
        self.visibles = [_resize_width(v, base) for v, _ in pairs]
        self.full_size = (pairs[0][0].shape[1], pairs[0][0].shape[0])
        self.pad = width // 4

    def score(self, ratio: float, angle: float) -> _Candidate:
        th, tw = self.templates[0].shape
        vw, vh = self.full_size
        scale = ratio * tw / vw  # search px per visible px
        # Downscale first (area-averaged, no aliasing), then rotate about the centre into a canvas that
        # holds the whole visible view plus a margin, so a thermal view partly outside it can still match.
        small = [_resize_width(v, max(8, round(vw * scale))) for v in self.visibles]
        sh, sw = small[0].shape[:2]
        rot = np.vstack([cv2.getRotationMatrix2D((sw / 2, sh / 2), angle, 1.0), [0, 0, 1]])
        corners = cv2.transform(np.array([[[0, 0], [sw, 0], [sw, sh], [0, sh]]], np.float64), rot[:2])[0]
        low, high = corners.min(axis=0), corners.max(axis=0)
        size = (
            int(math.ceil(high[0] - low[0])) + 2 * self.pad,
            int(math.ceil(high[1] - low[1])) + 2 * self.pad,
        )
        size = (max(size[0], tw + 1), max(size[1], th + 1))
        shift = np.array([[1, 0, self.pad - low[0]], [0, 1, self.pad - low[1]], [0, 0, 1]])
        to_canvas = shift @ rot
        total = None
        for image, template in zip(small, self.templates):
            warped, mask = _warp(image, to_canvas, size)
            response = cv2.matchTemplate(edge_strength(warped) * mask, template, cv2.TM_CCOEFF_NORMED)
            total = response if total is None else total + response
        total /= len(small)
        _, best, _, (x, y) = cv2.minMaxLoc(total)
        to_thermal = (
            np.array([[1, 0, -x], [0, 1, -y], [0, 0, 1]]) @ to_canvas @ _resize_matrix(sw / vw, sh / vh)
        )
        return _Candidate(best, ratio, angle, to_thermal)


def _global_search(pairs, config: FootageConfig) -> list[_Candidate]:
    """All candidates on a log-spaced scale grid × rotation grid, best first."""
    search = _Search(pairs, config.coarse_width, config.fov_ratio[1])
    low, high = config.fov_ratio
    ratios = np.exp(np.arange(math.log(low), math.log(high) + 1e-9, 0.05))
    steps = max(1, math.ceil(config.max_rotation_deg / 2.5))
    angles = np.linspace(-config.max_rotation_deg, config.max_rotation_deg, 2 * steps + 1)
    candidates = [search.score(r, a) for r in ratios for a in angles]
    return sorted(candidates, key=lambda c: -c.score)


def _distinct(candidates: list[_Candidate], size: tuple[int, int]) -> list[_Candidate]:
    """Local maxima: drop candidates that put the thermal view within a tenth of its width of where a
    better candidate already kept puts it (the same peak seen at a neighbouring scale or roll)."""
    kept: list[_Candidate] = []
    for cand in candidates:
        if all(corner_error(cand.matrix, k.matrix, size) > size[0] / 10 for k in kept):
            kept.append(cand)
    return kept


def _local_search(pairs, start: _Candidate, config: FootageConfig) -> _Candidate:
    search = _Search(pairs, config.fine_width, start.ratio * 1.05)
    ratios = start.ratio * np.exp(np.arange(-2, 3) * 0.015)
    angles = start.angle + np.arange(-2, 3) * 0.8
    return max((search.score(r, a) for r in ratios for a in angles), key=lambda c: c.score)


def _to_model(matrix: np.ndarray, model: str, size: tuple[int, int]) -> np.ndarray:
    """The nearest transform of the chosen model (least squares on the mapped thermal corners)."""
    if model == "homography":
        return matrix / matrix[2, 2]
    corners = thermal_corners(size)
    src = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), np.linalg.inv(matrix)).reshape(-1, 2)
    if model == "affine":
        affine, _ = cv2.estimateAffine2D(src, corners, method=cv2.LMEDS)
    else:
        affine, _ = cv2.estimateAffinePartial2D(src, corners, method=cv2.LMEDS)
    return np.vstack([affine, [0, 0, 1]])


def _ecc(visible: np.ndarray, thermal: np.ndarray, matrix: np.ndarray, motion: int) -> np.ndarray | None:
    """One ECC refinement of `matrix` (visible -> this thermal image's px). The visible image is first
    warped by the current estimate so that both edge images have the same scale and blur; ECC then finds
    the small residual warp. None when ECC does not converge."""
    warped, mask = _warp(visible, matrix, (thermal.shape[1], thermal.shape[0]))
    residual = np.eye(3, 3, dtype=np.float32)[: 3 if motion == cv2.MOTION_HOMOGRAPHY else 2]
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-4)
    try:
        _, residual = cv2.findTransformECC(
            edge_strength(thermal), edge_strength(warped) * mask, residual, motion, criteria, mask, 1
        )
    except cv2.error:
        return None
    residual = np.vstack([residual, [0, 0, 1]])[:3] if residual.shape[0] == 2 else residual
    # ECC's warp maps template (thermal) px to input (warped visible) px: undo it on the thermal side.
    return np.linalg.inv(residual.astype(np.float64)) @ matrix


def _refine(pairs, matrix: np.ndarray, model: str) -> list[np.ndarray | None]:
    """Per-pair ECC at half, then full thermal resolution; None for a pair where ECC fails."""
    motion = cv2.MOTION_HOMOGRAPHY if model == "homography" else cv2.MOTION_AFFINE
    th, tw = pairs[0][1].shape
    results = []
    for visible, thermal in pairs:
        current = matrix
        for level in (2, 1):
            down = _resize_matrix(1.0 / level)
            refined = _ecc(visible, _resize_width(thermal, tw // level), down @ current, motion)
            if refined is None:
                current = None
                break
            current = _to_model(np.linalg.inv(down) @ refined, model, (tw, th))
        results.append(current)
    return results


def _combine(matrices: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The per-corner median of the per-pair estimates (robust to a pair where ECC went astray) and the
    estimated error at the corners, from the RMS distance σ of the agreeing pairs from that median:
    σ·√(1/n + SHARED_ERROR). σ/√n alone assumes the pairs err independently, but cross-modal edges err
    partly alike in every pair (a warm object's halo, a shadow that has no thermal edge), and averaging
    does not remove that share."""
    corners = thermal_corners(size)
    in_visible = np.stack([corners_in_visible(m, size) for m in matrices])
    result = cv2.getPerspectiveTransform(
        np.median(in_visible, axis=0).astype(np.float32), corners.astype(np.float32)
    )
    errors = np.array([corner_error(m, result, size) for m in matrices])
    agreeing = errors[errors <= max(2.0, 3 * np.median(errors))]
    if len(agreeing) < 2:
        return result, math.nan
    sigma = np.sqrt(np.sum(agreeing**2) / (len(agreeing) - 1))
    return result, float(sigma * np.sqrt(1.0 / len(agreeing) + SHARED_ERROR))


def pair_spread(pairs, matrix: np.ndarray, model: str) -> float:
    """How much the pairs disagree: RMS corner distance (thermal px) of each pair's own refined fit from
    their median, starting from `matrix`. Pairs taken at different instants disagree when they are
    paired at the wrong time offset, since each is then displaced along its own image motion."""
    th, tw = pairs[0][1].shape
    fits = [m for m in _refine(pairs, matrix, model) if m is not None]
    if len(fits) < 3:
        return math.inf
    median, _ = _combine(fits, (tw, th))
    return float(np.sqrt(np.mean([corner_error(m, median, (tw, th)) ** 2 for m in fits])))


def edge_score(visible: np.ndarray, thermal: np.ndarray, matrix: np.ndarray) -> float:
    """Edge NCC between the thermal image and the visible image warped by `matrix`, over their overlap."""
    size = (thermal.shape[1], thermal.shape[0])
    warped, mask = _warp(visible, matrix, size)
    if mask.sum() < 0.05 * mask.size:
        return 0.0
    return ncc(edge_strength(warped), edge_strength(thermal), mask)


def estimate_geometry(
    pairs: list[tuple[np.ndarray, np.ndarray]], config: FootageConfig | None = None
) -> GeometryEstimate:
    """The visible→thermal transform from (visible, thermal) float pairs taken at the same instant.
    Raises SkyfuseError when the footage does not constrain it."""
    config = config or FootageConfig()
    if config.model not in MODELS:
        raise SkyfuseError(f"unknown geometric model {config.model!r}; choose one of {', '.join(MODELS)}")
    if len(pairs) < config.min_pairs:
        raise SkyfuseError(
            f"calibration from footage needs at least {config.min_pairs} frame pairs spread "
            f"over the flight, got {len(pairs)}"
        )
    _check_contrast(pairs)
    (vh, vw), (th, tw) = pairs[0][0].shape[:2], pairs[0][1].shape
    step = max(1, len(pairs) // config.coarse_pairs)
    search_pairs = pairs[::step][: config.coarse_pairs]
    coarse_size = (config.coarse_width, round(th * config.coarse_width / tw))
    candidates = _distinct(_global_search(search_pairs, config), coarse_size)
    contrast = candidates[0].score / max(candidates[1].score, 1e-6) if len(candidates) > 1 else math.inf
    best = max((_local_search(search_pairs, c, config) for c in candidates[:2]), key=lambda c: c.score)
    fine_h = round(th * config.fine_width / tw)
    start = _resize_matrix(tw / config.fine_width, th / fine_h) @ best.matrix
    details = {"fov_ratio": best.ratio, "rotation_deg": best.angle, "search_contrast": contrast}
    refined = [
        m for m in _refine(pairs, _to_model(start, config.model, (tw, th)), config.model) if m is not None
    ]
    if not refined:
        raise SkyfuseError(
            "the footage does not constrain the geometry: the fine alignment diverged on "
            "every frame pair (too little texture shared by the two cameras?)"
        )
    matrix, spread = _combine(refined, (tw, th))
    matrix = _to_model(matrix, config.model, (tw, th))
    identity = np.diag([tw / vw, th / vh, 1.0])  # Rig.identity: the plain resize
    before = float(np.mean([edge_score(v, t, identity) for v, t in pairs]))
    after = float(np.mean([edge_score(v, t, matrix) for v, t in pairs]))
    # Confidence: each factor in 0..1 — a distinct global peak, a strong final correlation, pairs that agree.
    agree = 1.0 / (1.0 + (spread if math.isfinite(spread) else 2.0))
    confidence = min(1.0, (contrast - 1.0) * 10) * min(1.0, after / 0.5) * agree
    if after < config.min_score or contrast < config.min_contrast:
        raise SkyfuseError(
            f"the footage does not constrain the geometry: best edge correlation {after:.2f} "
            f"(needs ≥ {config.min_score}), best/runner-up match {contrast:.3f} "
            f"(needs ≥ {config.min_contrast}), confidence {max(confidence, 0.0):.2f}; "
            "check that both streams show the same overlapping scene with visible texture"
        )
    details["pairs_refined"] = len(refined)
    return GeometryEstimate(matrix, spread, confidence, before, after, len(pairs), details)


def _check_contrast(pairs) -> None:
    for name, index in (("visible", 0), ("thermal", 1)):
        if all(float(p[index].std()) < 1e-3 for p in pairs):
            raise SkyfuseError(f"the {name} frames are blank (no contrast): nothing to calibrate from")
