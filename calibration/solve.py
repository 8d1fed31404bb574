"""Calibration end to end. From footage: the time offset from the motion first; then the geometry from
frame pairs that the offset pairs up, spread over the whole flight (different ground in every pair
makes a false match unlikely to repeat, and the true one adds up), each visible frame motion-compensated
to the instant its thermal frame shows; then the offset refined by how well pairs at different image
speeds agree on one homography, and the geometry again at the refined offset. From a target: the board
points of the pairs the offset (if any can be found) pairs up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.errors import SkyfuseError
from core.rig import Rig

from .clips import Clip
from .features import to_float, to_gray
from .footage import FootageConfig, estimate_geometry, pair_spread
from .target import TargetConfig, estimate_target
from .temporal import TRACK_WIDTH, OffsetEstimate, TemporalConfig, estimate_offset


@dataclass
class FootageCalibrationConfig:
    pairs: int = 8  # frame pairs for the geometry
    time_offset_s: float | None = None  # a known offset: skip the temporal calibration
    refine_offset: bool = True  # refine the motion-based offset by the agreement of the pairs' geometry
    geometry: FootageConfig = field(default_factory=FootageConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)


def _nearest(times: np.ndarray, instants: np.ndarray) -> np.ndarray:
    """Index of the time nearest to each instant."""
    right = np.clip(np.searchsorted(times, instants), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(times[left] - instants) <= np.abs(times[right] - instants), left, right)


def _image_speed(clip: Clip) -> np.ndarray:
    """How fast each frame's image moves (tracker px per frame at the image corners: shift plus
    rotation), from the central difference of the clip's motion track."""
    if len(clip.track) < 2:
        return np.zeros(len(clip.track))
    step = np.gradient(clip.track, axis=0)
    return np.hypot(step[:, 0], step[:, 1]) + np.abs(step[:, 2]) * TRACK_WIDTH * 0.64


def pick_pairs(
    visible: Clip, thermal: Clip, offset_s: float, count: int, slowest: bool = True
) -> list[tuple[int, int]]:
    """Up to `count` (visible, thermal) positions showing the same instant under `offset_s`. A thermal
    frame pairs with the visible frame nearest to the instant it shows, within half a visible frame
    period. The pairs are spread over the overlap of the clips (one per equal share of it), and within
    each share the one where the image moves least is taken (`slowest`): there an error in the time
    offset costs the least geometric error. Otherwise the middle one."""
    period = 1.0 / visible.fps if visible.fps > 0 else math.inf
    shown = thermal.times + offset_s
    nearest = _nearest(visible.times, shown)
    candidates = np.flatnonzero(np.abs(visible.times[nearest] - shown) <= 0.5 * period + 1e-9)
    if len(candidates) == 0:
        raise SkyfuseError(
            "no visible frame shows the same instant as any thermal frame: the streams do not "
            "overlap in time (check the sources, or the --time-offset given)"
        )
    speed = _image_speed(thermal)
    shares = np.array_split(candidates, min(count, len(candidates)))
    chosen = [int(share[np.argmin(speed[share])] if slowest else share[len(share) // 2]) for share in shares]
    return [(int(nearest[j]), j) for j in chosen]


def motion_compensated(image: np.ndarray, clip: Clip, position: int, instant: float) -> np.ndarray:
    """The frame at `position` moved by the clip's own image motion from its time to `instant` (the
    track interpolated between frames): the view the camera had at that instant, up to parallax. This
    removes the up to half a frame period between the two frames of a pair, which at drone speeds is
    worth more than a pixel."""
    delta = np.array([np.interp(instant, clip.times, column) for column in clip.track.T])
    delta -= clip.track[position]
    scale = clip.size[0] / TRACK_WIDTH
    centre = np.array([clip.size[0] / 2, clip.size[1] / 2])
    c, s = math.cos(delta[2]), math.sin(delta[2])
    rotation = np.array([[c, -s], [s, c]])
    warp = np.hstack([rotation, (centre + delta[:2] * scale - rotation @ centre)[:, None]])
    return cv2.warpAffine(image, warp, clip.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _offset(visible: Clip, thermal: Clip, given: float | None, config: TemporalConfig) -> OffsetEstimate:
    if given is not None:
        return OffsetEstimate(given, 0.0, math.nan, 0)
    return estimate_offset(visible.times, visible.track, thermal.times, thermal.track, config)


def _offset_quality(offset: OffsetEstimate, visible: Clip, thermal: Clip, source: str) -> dict:
    return {
        "time_offset_uncertainty_s": _finite(offset.uncertainty_s),
        "time_offset_visible_frames": round(offset.time_offset_s * visible.fps, 3),
        "time_offset_thermal_frames": round(offset.time_offset_s * thermal.fps, 3),
        "time_offset_source": source,
        "motion_correlation": _finite(offset.correlation),
    }


def _load_pairs(
    visible: Clip, thermal: Clip, pairs: list[tuple[int, int]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(zip(visible.load([v for v, _ in pairs]), thermal.load([t for _, t in pairs])))


def _float_pairs(
    visible: Clip, thermal: Clip, pairs, frames, offset_s: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float (visible, thermal) pairs, each visible frame motion-compensated to the instant its thermal
    frame shows under `offset_s`."""
    return [
        (
            to_float(motion_compensated(v_image, visible, v, float(thermal.times[t] + offset_s))),
            to_gray(t_image),
        )
        for (v, t), (v_image, t_image) in zip(pairs, frames)
    ]


def refine_offset(
    visible: Clip, thermal: Clip, offset: OffsetEstimate, matrix: np.ndarray, config: FootageCalibrationConfig
) -> float:
    """The time offset refined by the geometry: pairs at different image speeds agree on one homography
    only when they are paired at the right offset (a wrong one displaces each along its own motion).
    The pair spread is evaluated on a grid of offsets within the motion estimate's uncertainty and its
    minimum located by a parabola."""
    pairs = pick_pairs(visible, thermal, offset.time_offset_s, config.pairs, slowest=False)
    frames = _load_pairs(visible, thermal, pairs)
    step = max(offset.uncertainty_s, 0.1 / visible.fps)
    grid = offset.time_offset_s + step * np.arange(-2, 3)
    spreads = np.array(
        [
            pair_spread(_float_pairs(visible, thermal, pairs, frames, tau), matrix, config.geometry.model)
            for tau in grid
        ]
    )
    i = int(np.argmin(spreads))
    if not 0 < i < len(grid) - 1 or not np.all(np.isfinite(spreads[i - 1 : i + 2])):
        return offset.time_offset_s
    a, b, c = spreads[i - 1 : i + 2]
    curvature = a - 2 * b + c
    return float(grid[i] + (0.5 * (a - c) / curvature * step if curvature > 0 else 0.0))


def calibrate_footage(visible: Clip, thermal: Clip, config: FootageCalibrationConfig | None = None) -> Rig:
    """The rig (homography, time offset, quality figures) from two clips of the same flight."""
    config = config or FootageCalibrationConfig()
    offset = _offset(visible, thermal, config.time_offset_s, config.temporal)
    pairs = pick_pairs(visible, thermal, offset.time_offset_s, config.pairs)
    frames = _load_pairs(visible, thermal, pairs)
    geometry = estimate_geometry(
        _float_pairs(visible, thermal, pairs, frames, offset.time_offset_s), config.geometry
    )
    source = "given" if config.time_offset_s is not None else "motion"
    motion_offset = offset.time_offset_s
    if config.time_offset_s is None and config.refine_offset:
        refined = refine_offset(visible, thermal, offset, geometry.visible_to_thermal, config)
        source = "motion, refined by the pairs' geometry"
        offset = OffsetEstimate(refined, offset.uncertainty_s, offset.correlation, offset.intervals)
        pairs = pick_pairs(visible, thermal, refined, config.pairs)
        frames = _load_pairs(visible, thermal, pairs)
        geometry = estimate_geometry(_float_pairs(visible, thermal, pairs, frames, refined), config.geometry)
    quality = {
        "corner_error_px": _finite(geometry.corner_error_px),
        "confidence": round(geometry.confidence, 3),
        "edge_ncc_before": round(geometry.score_before, 4),
        "edge_ncc_after": round(geometry.score_after, 4),
        "pairs": geometry.pairs_used,
        "model": config.geometry.model,
        **_offset_quality(offset, visible, thermal, source),
        "time_offset_from_motion_s": round(motion_offset, 5),
        **{k: _finite(float(v)) for k, v in geometry.details.items()},
    }
    return Rig(
        visible.size,
        thermal.size,
        geometry.visible_to_thermal,
        float(offset.time_offset_s),
        "footage",
        quality,
    )


def calibrate_target(
    visible: Clip,
    thermal: Clip,
    config: TargetConfig,
    time_offset_s: float | None = None,
    max_pairs: int = 30,
) -> Rig:
    """The rig from footage of a target. The time offset is the given one, else estimated from the
    motion when the footage allows it, else 0 (a target is often filmed standing still; the quality
    figures then say so)."""
    source = "given"
    try:
        offset = _offset(visible, thermal, time_offset_s, TemporalConfig())
        source = "motion" if time_offset_s is None else source
    except SkyfuseError as exc:
        offset, source = OffsetEstimate(0.0, math.nan, math.nan, 0), f"not estimated ({exc}); 0 assumed"
    pairs = pick_pairs(visible, thermal, offset.time_offset_s, max_pairs)
    frames = zip(visible.load([v for v, _ in pairs]), thermal.load([t for _, t in pairs]))
    estimate = estimate_target(list(frames), config)
    quality = {
        "reprojection_rms_px": round(estimate.reprojection_rms_px, 4),
        "reprojection_max_px": round(estimate.reprojection_max_px, 4),
        "corner_error_px": round(estimate.reprojection_rms_px / math.sqrt(max(estimate.pairs_used, 1)), 4),
        "pairs": estimate.pairs_used,
        "pairs_tried": estimate.pairs_tried,
        "target": f"{config.pattern} {config.grid[0]}x{config.grid[1]}",
        **_offset_quality(offset, visible, thermal, source),
    }
    return Rig(
        visible.size,
        thermal.size,
        estimate.visible_to_thermal,
        float(offset.time_offset_s),
        "target",
        quality,
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: an undefined figure is written as null."""
    return round(float(value), 4) if math.isfinite(value) else None
