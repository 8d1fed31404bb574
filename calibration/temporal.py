"""Temporal calibration: the offset between the two streams' clocks, from the camera motion seen by both.

Both cameras sit on one drone, so the image content moves in step. Each stream's global image motion
between consecutive frames (shift of the image centre and rotation: phase correlation, refined by ECC)
is integrated into a trajectory against time. The shifts of the two cameras differ by the scale
between their views; their rotations are the same angle. For every candidate offset, the slower
stream's displacement over each of its frame intervals is compared with the faster stream's trajectory
interpolated at the same (shifted) instants, which gives sub-frame resolution and works for any pair
of frame rates. The offset maximises the normalised
correlation of those displacements (shift and rotation correlated separately and averaged; means
removed: a constant drift carries no timing information); its uncertainty is the jackknife spread over
blocks of intervals. A drone flying straight at constant speed gives no timing information at all;
such footage is refused (too large an uncertainty) rather than guessed.

Convention (as in Rig.time_offset_s): a thermal frame stamped t shows the scene at visible time t + offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import SkyfuseError

from .features import to_gray

MIN_FRAMES = 4
TRACK_WIDTH = 160  # frames are downscaled to this width to measure their motion


@dataclass
class TemporalConfig:
    max_offset_s: float = 1.0  # the offsets searched are within ± this
    min_correlation: float = 0.5  # a peak below this means the two streams' motion does not match
    blocks: int = 8  # jackknife blocks for the uncertainty
    max_uncertainty_frames: float = 2.0  # a larger uncertainty (in frames of the faster stream) is refused


@dataclass
class OffsetEstimate:
    time_offset_s: float
    uncertainty_s: float
    correlation: float  # peak normalised correlation of the motion signals
    intervals: int  # frame intervals compared


class MotionTracker:
    """Accumulates a stream's global image motion frame by frame, so a long clip never has to be held in
    memory. Each step is the shift of the image centre and the rotation between consecutive downscaled
    frames: phase correlation finds the shift roughly (its sub-pixel part is biased towards whole
    pixels), then ECC refines a rigid (Euclidean) motion. The rotation matters: both cameras turn with
    the drone by the same angle, whatever their fields of view."""

    def __init__(self, width: int = TRACK_WIDTH):
        self.width = width
        self._previous: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._steps: list[np.ndarray] = []

    def add(self, image: np.ndarray) -> None:
        gray = to_gray(image)
        height = max(8, round(gray.shape[0] * self.width / gray.shape[1]))
        small = cv2.resize(gray, (self.width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        # A band-pass: pixel noise goes, and so do the patterns of thermal sensors that stay put while the
        # scene moves (a warm lens centre, column stripes), which would pull the estimate towards zero.
        low, high = (cv2.GaussianBlur(small, (0, 0), self.width * f) for f in (1 / 160, 1 / 20))
        small = low - high
        small -= small.mean(axis=0, keepdims=True)
        if self._previous is None or self._previous.shape != small.shape:
            self._window = cv2.createHanningWindow((self.width, height), cv2.CV_64F)
            self._steps.append(np.zeros(3))
        else:
            self._steps.append(_rigid_step(self._previous, small, self._window))
        self._previous = small

    def track(self) -> np.ndarray:
        """(N, 3) cumulative centre shift x, y (px) and rotation (rad) of each frame from the first."""
        if not self._steps:
            return np.zeros((0, 3))
        return np.cumsum(_despike(np.array(self._steps)), axis=0)


def _despike(steps: np.ndarray) -> np.ndarray:
    """Steps where the registration locked onto a wrong peak (far from the running median of their
    neighbours; a drone cannot jerk like that between two frames) replaced by that median."""
    if len(steps) < 5:
        return steps
    padded = np.pad(steps, ((2, 2), (0, 0)), mode="edge")
    median = np.median(np.stack([padded[k:k + len(steps)] for k in range(5)]), axis=0)
    deviation = np.abs(steps - median)
    spread = np.median(deviation, axis=0)
    floor = np.array([1.0, 1.0, 0.02])  # px, px, rad
    bad = np.any(deviation > np.maximum(6 * spread, floor[: steps.shape[1]]), axis=1)
    return np.where(bad[:, None], median, steps)


def _rigid_step(previous: np.ndarray, current: np.ndarray, window: np.ndarray) -> np.ndarray:
    (dx, dy), _ = cv2.phaseCorrelate(previous.astype(np.float64), current.astype(np.float64), window)
    warp = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:
        _, warp = cv2.findTransformECC(previous, current, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 1)
    except cv2.error:
        return np.array([dx, dy, 0.0])
    centre = np.array([previous.shape[1] / 2, previous.shape[0] / 2, 1.0])
    shift = warp @ centre - centre[:2]
    return np.array([shift[0], shift[1], np.arctan2(warp[1, 0], warp[0, 0])])


def _check(times: np.ndarray, name: str) -> None:
    if len(times) < MIN_FRAMES:
        raise SkyfuseError(
            f"temporal calibration needs at least {MIN_FRAMES} frames of the {name} stream, "
            f"got {len(times)} (give a fixed --time-offset to skip it)"
        )
    if np.any(np.diff(times) <= 0):
        raise SkyfuseError(f"the {name} stream's timestamps do not increase")


def estimate_offset(
    visible_times: np.ndarray,
    visible_track: np.ndarray,
    thermal_times: np.ndarray,
    thermal_track: np.ndarray,
    config: TemporalConfig | None = None,
) -> OffsetEstimate:
    """The thermal→visible clock offset from each stream's frame times (s) and motion track (N, 2).
    The two tracks may be in different pixel units (only their correlation matters)."""
    config = config or TemporalConfig()
    visible_times, thermal_times = np.asarray(visible_times, float), np.asarray(thermal_times, float)
    _check(visible_times, "visible")
    _check(thermal_times, "thermal")
    # The stream with the longer frame interval is sampled as it is; the other is interpolated.
    thermal_is_slow = np.median(np.diff(thermal_times)) >= np.median(np.diff(visible_times))
    slow, fast = (thermal_times, thermal_track), (visible_times, visible_track)
    sign = 1
    if not thermal_is_slow:
        slow, fast, sign = fast, slow, -1
    (slow_times, slow_track), (fast_times, fast_track) = slow, fast
    fast_period = float(np.median(np.diff(fast_times)))
    offsets = np.arange(-config.max_offset_s, config.max_offset_s + 1e-12, fast_period / 10)
    slow_steps = np.diff(slow_track, axis=0)
    scores, counts = _correlations(offsets * sign, slow_times, slow_steps, fast_times, fast_track)
    # an offset must leave most of the clip overlapping: a correlation of a few intervals means nothing
    usable = counts >= max(MIN_FRAMES - 1, 0.6 * len(slow_steps))
    if not usable.any():
        raise SkyfuseError(
            "the visible and thermal streams do not overlap in time within "
            f"±{config.max_offset_s} s: mismatched sequences?"
        )
    if float(np.std(slow_steps - slow_steps.mean(axis=0))) < 1e-3:
        raise SkyfuseError(
            "the footage does not constrain the time offset: the image motion does not vary "
            "(hovering or flying straight at constant speed); give a fixed --time-offset"
        )
    peak_score, peak = _peak(offsets, np.where(usable, scores, -np.inf))
    if peak_score < config.min_correlation:
        raise SkyfuseError(
            f"the motion of the two streams does not match (best correlation "
            f"{peak_score:.2f}, needs ≥ {config.min_correlation}): mismatched sequences or "
            "too little motion"
        )
    uncertainty = _jackknife(
        offsets, usable, slow_times, slow_steps, fast_times, fast_track, sign, config.blocks
    )
    # The grid and the linear interpolation bound the resolution from below.
    uncertainty = math.hypot(uncertainty, fast_period / 20)
    if not uncertainty <= config.max_uncertainty_frames * fast_period:
        raise SkyfuseError(f"the footage does not constrain the time offset: {peak:+.3f} s "
                           f"± {uncertainty:.3f} s (more than {config.max_uncertainty_frames} frames); "
                           "use a longer clip with changing motion, or give a fixed --time-offset")
    return OffsetEstimate(peak, uncertainty, peak_score, int(counts[np.argmin(np.abs(offsets - peak))]))


def _correlations(shifts, slow_times, slow_steps, fast_times, fast_track, keep=None):
    """Normalised correlation, for each shift, of the slow stream's steps with the fast stream's
    displacement over the same intervals moved by the shift; and how many intervals took part."""
    starts = slow_times[:-1][None, :] + shifts[:, None]
    ends = slow_times[1:][None, :] + shifts[:, None]
    inside = (starts >= fast_times[0]) & (ends <= fast_times[-1])
    if keep is not None:
        inside &= keep[None, :]
    fast = np.stack(
        [
            np.interp(ends, fast_times, column) - np.interp(starts, fast_times, column)
            for column in fast_track.T
        ],
        axis=-1,
    )
    slow = np.broadcast_to(slow_steps, fast.shape)
    weight = inside[..., None].astype(float)
    count = inside.sum(axis=1)
    safe = np.maximum(count, 1)[:, None, None]
    slow_c = (slow - (slow * weight).sum(axis=1, keepdims=True) / safe) * weight
    fast_c = (fast - (fast * weight).sum(axis=1, keepdims=True) / safe) * weight
    # The shifts of the two cameras differ by the scale between their views, their rotations do not:
    # each group is correlated on its own and the correlations averaged.
    scores = []
    for group in (slice(0, 2), slice(2, 3)):
        num = (slow_c[..., group] * fast_c[..., group]).sum(axis=(1, 2))
        den = np.sqrt((slow_c[..., group] ** 2).sum(axis=(1, 2)) * (fast_c[..., group] ** 2).sum(axis=(1, 2)))
        scores.append(np.where(den > 0, num / np.maximum(den, 1e-12), np.nan))
    scores = np.array(scores)
    valid = np.isfinite(scores)
    mean = np.where(valid, scores, 0.0).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
    mean = np.where(valid.any(axis=0), mean, -1.0)
    # Smooth over a frame period (the grid holds 10 points per fast-stream frame): the motion varies
    # slowly, so the true peak is broad, while at shifts that put the two streams' frames on the same
    # instants the sampling makes narrow spurious spikes.
    return np.convolve(np.pad(mean, 5, mode="edge"), np.ones(11) / 11, mode="valid"), count


def _peak(offsets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best score and its offset, refined between grid points by a parabola through the neighbours."""
    i = int(np.argmax(scores))
    if 0 < i < len(scores) - 1 and np.all(np.isfinite(scores[i - 1 : i + 2])):
        a, b, c = scores[i - 1 : i + 2]
        curvature = a - 2 * b + c
        if curvature < 0:
            delta = 0.5 * (a - c) / curvature
            return float(b - 0.25 * (a - c) * delta), float(offsets[i] + delta * (offsets[1] - offsets[0]))
    return float(scores[i]), float(offsets[i])


def _jackknife(offsets, usable, slow_times, slow_steps, fast_times, fast_track, sign, blocks) -> float:
    n = len(slow_steps)
    blocks = min(blocks, n)
    if blocks < 3:
        return math.inf
    labels = np.arange(n) * blocks // n
    estimates = []
    for b in range(blocks):
        scores, _ = _correlations(offsets * sign, slow_times, slow_steps, fast_times, fast_track, labels != b)
        estimates.append(_peak(offsets, np.where(usable, scores, -np.inf))[1])
    estimates = np.array(estimates)
    return float(math.sqrt((blocks - 1) / blocks * np.sum((estimates - estimates.mean()) ** 2)))
