"""Thermal automatic gain control (AGC): 16-bit radiometric counts to 8-bit display levels.

The rule, per frame, for a uint16 frame x (uint8 frames pass through unchanged, same array):

1. lo, hi = the `low_pct` and `high_pct` percentiles of x (default 1st and 99th), measured on every
   `stride`-th pixel of every `stride`-th row (default 4): outliers such as a hot engine or the sky
   do not set the range.
2. Temporal smoothing: the bounds used are exponential moving averages,
   L = smoothing * L_prev + (1 - smoothing) * lo, and the same for H (default smoothing 0.9, i.e. a
   time constant of about 10 frames); the first frame after construction or reset() uses lo, hi as is.
   The brightness of a static scene does not flicker when a warm object crosses the view.
3. Minimum span: if H - L < `min_span` (default 200 counts, 2 K for centikelvin cameras), the range is
   widened to `min_span` about its centre, so a uniform scene is not stretched into noise.
4. y = clip(round((x - L) * 255 / (H - L)), 0, 255) as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AGCConfig:
    low_pct: float = 1.0  # percentile mapped to 0
    high_pct: float = 99.0  # percentile mapped to 255
    smoothing: float = 0.9  # weight of the previous bounds per frame (0 = no smoothing)
    min_span: float = 200.0  # smallest input range stretched to 0..255, in input counts
    stride: int = 4  # percentile sampling step in x and y


class ThermalAGC:
    """Stateful 16-bit -> 8-bit conversion for one thermal stream (see the module docstring)."""

    def __init__(self, config: AGCConfig | None = None):
        self.config = config or AGCConfig()
        cfg = self.config
        if not 0 <= cfg.low_pct < cfg.high_pct <= 100 or not 0 <= cfg.smoothing < 1:
            raise ValueError("AGC needs 0 <= low_pct < high_pct <= 100 and 0 <= smoothing < 1")
        if cfg.min_span <= 0 or cfg.stride < 1:
            raise ValueError("AGC needs min_span > 0 and stride >= 1")
        self.bounds: tuple[float, float] | None = None  # (L, H) used for the last frame

    def reset(self) -> None:
        """Forget the smoothed bounds (e.g. after a cut to another scene)."""
        self.bounds = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype == np.uint8:
            return frame
        if frame.dtype != np.uint16 or frame.ndim != 2:
            raise ValueError(f"AGC takes (H, W) uint8 or uint16 frames, got {frame.shape} {frame.dtype}")
        cfg = self.config
        sample = frame[::cfg.stride, ::cfg.stride]
        lo, hi = (float(v) for v in np.percentile(sample, [cfg.low_pct, cfg.high_pct]))
        if self.bounds is not None:
            a = cfg.smoothing
            lo, hi = a * self.bounds[0] + (1 - a) * lo, a * self.bounds[1] + (1 - a) * hi
        if hi - lo < cfg.min_span:
            mid = (lo + hi) / 2
            lo, hi = mid - cfg.min_span / 2, mid + cfg.min_span / 2
        self.bounds = (lo, hi)
        gain = 255.0 / (hi - lo)
        # one pass: saturate_cast<uint8>(x * gain - L * gain) rounds and clips as in step 4
        return cv2.addWeighted(frame, gain, frame, 0.0, -lo * gain, dtype=cv2.CV_8U)
