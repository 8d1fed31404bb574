"""Thermal automatic gain control (AGC): 16-bit radiometric counts to 8-bit display levels.

The rule, per frame, for a uint16 frame x (uint8 frames pass through unchanged, same array):

1. Statistics come from the region of interest `roi` (fractions x0, y0, x1, y1 of the frame; default the
   whole frame), e.g. the ground below a horizon, so a cold sky does not take the gray levels; every
   `stride`-th pixel of every `stride`-th row of it is counted (default 4). The mapping built from them
   is applied to the whole frame.
2. Tail rejection: L is the value below which `low_tail_pct` % of those pixels lie and H the value above
   which `high_tail_pct` % lie (default 1 % and 0.2 %); what lies outside [L, H] maps to 0 or 255.
   The hot tail is small because the targets a drone's thermal camera looks for are small and hot: at
   640×512 a car covers about 0.25 % of the frame and a person 0.01-0.05 %. A 1 % tail (the 99th
   percentile) lets the background's hottest 1 % (sunlit asphalt, roofs) set white, so a target at
   least as hot is clipped to the same white; 0.2 % (650 pixels) lets a car or a group of people set
   the top of the range, and still drops the few pixels of a glint or a defective pixel.
3. Minimum span: if H - L < `min_span` (default 200 counts, 2 K for centikelvin cameras), the range is
   widened to `min_span` about its centre, so a uniform scene is not stretched into noise.
4. The map, by `mode`:
   - `dde` (default): digital detail enhancement, the display mode thermal camera cores offer. The frame
     is split into a base, a low-pass of it wider than a person, and the detail x - base, in which small
     warm targets live. Steps 1-3 count the frame averaged over 4×4 blocks, so the bounds follow the scene's
     large-scale layout (hot roofs or a cold sky set them, a person hardly does). The base is the frame
     clipped to [L, H], averaged over 4×4 blocks, then over (2 * round(`detail_radius` / 4) + 1)² of them
     (28 px square at full size by default) and bilinearly resized back. With s = 255 / (H - L), the
     slope of the linear map below:
     y = (base - L) * s * `base_levels` / 255 + (x - base) * s * `detail_gain`.
     The base takes the lowest `base_levels` gray levels (default 80) and the rest of the range is
     headroom for warm detail, which gets `detail_gain` (default 2.5) times the gray levels per count that
     the linear map gives. A small warm target thus keeps its contrast against the ground around it
     however hot the clutter elsewhere or however cold a sky in view. Costs, measured in benchmarks/agc.py:
     sensor noise and fine ground texture are amplified by `detail_gain` too (the contrast-to-noise ratio
     against the ground around a target still rises on every scene measured); and a warm object darkens
     the ground within about `detail_radius` px of it (a halo) by its share of the low-pass, as every
     linear-filter DDE does. The clipping bounds that share: an object hotter than H counts as H in the
     base (at night it halves the darkening around people; README, "Thermal AGC").
   - `linear`: y = (x - L) * 255 / (H - L).
   - `plateau`: plateau histogram equalisation over [L, H], as thermal cores do for display: a histogram
     of the counted pixels in `PLATEAU_BINS` bins, each bin capped at `plateau` times an even share (so
     a large uniform background cannot take every gray level, and no stretch of input is steeper than
     `plateau` times the linear map's; the capped-off pixels are spread evenly over all bins), its
     cumulative sum as the map, then mixed with the linear map by `linear_mix` (0..1).
   y is rounded and clipped to 0..255.
5. Temporal damping: the map is an exponential moving average over frames, weight `smoothing` (default
   0.9, a time constant of about 10 frames) on the previous one, so the brightness of a static scene
   does not flicker when a warm object crosses the view: in linear and dde modes the bounds L and H are
   averaged, in plateau mode the whole map (a 65,536-entry table). The first frame after construction or
   reset() uses its own map.

Options reach the fuse stage as `--agc KEY=VALUE,...` (`skyfuse run --agc` or `agc:` in a run's YAML),
e.g. `mode=plateau,high_tail_pct=0.1,roi=0,0.3,1,1` or `detail_gain=1.5`; `parse_agc_options` reads them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

import cv2
import numpy as np

from core.errors import SkyfuseError

MODES = ("dde", "linear", "plateau")
PLATEAU_BINS = 512  # histogram bins over [L, H] in plateau mode: finer than the 256 output levels
_LEVELS = 65536  # uint16 input values: the size of the plateau map's lookup table
DDE_SCALE = 4  # dde mode: the base is computed on the frame averaged over DDE_SCALE² blocks (cheap)


@dataclass
class AGCConfig:
    mode: str = "dde"  # dde | linear | plateau (see the module docstring)
    low_tail_pct: float = 1.0  # % of the counted pixels mapped to 0 (the cold tail)
    high_tail_pct: float = 0.2  # % of the counted pixels mapped to 255 (the hot tail)
    roi: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0, y0, x1, y1: fractions counted
    plateau: float = 4.0  # plateau mode: most pixels a bin counts, in even shares (its largest gain)
    linear_mix: float = 0.0  # plateau mode: weight of the linear map mixed into the equalised one
    detail_gain: float = 2.5  # dde mode: gray levels per count of the detail, in linear-map slopes
    base_levels: float = 80.0  # dde mode: gray levels the base takes (0..base_levels); the rest: detail
    detail_radius: int = 12  # dde mode: half-width in px of the base's low-pass (wider than a person)
    smoothing: float = 0.9  # weight of the previous map per frame (0 = no damping)
    min_span: float = 200.0  # smallest input range stretched to 0..255, in input counts
    stride: int = 4  # sampling step in x and y

    def validate(self) -> None:
        """Raise SkyfuseError naming the first unusable option."""
        if self.mode not in MODES:
            raise SkyfuseError(f"AGC mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("mode", "roi")}
        for name, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SkyfuseError(f"AGC {name} must be a number, got {value!r}")
        if not (0 <= self.low_tail_pct and 0 <= self.high_tail_pct and
                self.low_tail_pct + self.high_tail_pct < 100):
            raise SkyfuseError(f"AGC tails must be >= 0 % and leave pixels between them, got "
                               f"low_tail_pct={self.low_tail_pct}, high_tail_pct={self.high_tail_pct}")
        roi = self.roi
        if (len(roi) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in roi)
                or not (0 <= roi[0] < roi[2] <= 1 and 0 <= roi[1] < roi[3] <= 1)):
            raise SkyfuseError(f"AGC roi must be x0,y0,x1,y1 with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                               f"(fractions of the frame), got {roi!r}")
        if not self.plateau >= 1:
            raise SkyfuseError(f"AGC plateau must be at least 1 (an even share), got {self.plateau}")
        if not 0 <= self.linear_mix <= 1:
            raise SkyfuseError(f"AGC linear_mix must be 0..1, got {self.linear_mix}")
        if not 0 <= self.detail_gain <= 64:
            raise SkyfuseError(f"AGC detail_gain must be 0..64 (times the linear map's slope), "
                               f"got {self.detail_gain}")
        if not 1 <= self.base_levels <= 255:
            raise SkyfuseError(f"AGC base_levels must be 1..255 gray levels, got {self.base_levels}")
        if self.detail_radius != int(self.detail_radius) or not 1 <= self.detail_radius <= 256:
            raise SkyfuseError(f"AGC detail_radius must be a whole number of px, 1..256, got "
                               f"{self.detail_radius}")
        if not 0 <= self.smoothing < 1:
            raise SkyfuseError(f"AGC smoothing must be 0 <= smoothing < 1, got {self.smoothing}")
        if not self.min_span > 0:
            raise SkyfuseError(f"AGC min_span must be positive, got {self.min_span}")
        if self.stride != int(self.stride) or self.stride < 1:
            raise SkyfuseError(f"AGC stride must be a whole number >= 1, got {self.stride}")

    def to_options(self) -> str:
        """The `--agc` text of the options that differ from the defaults (parse_agc_options reads it)."""
        default = AGCConfig()
        changed = {f.name: getattr(self, f.name) for f in fields(self)
                   if getattr(self, f.name) != getattr(default, f.name)}
        return ",".join(f"{key}={','.join(map(str, value)) if key == 'roi' else value}"
                        for key, value in changed.items())


def parse_agc_options(options: str | dict) -> AGCConfig:
    """An AGCConfig from `KEY=VALUE,...` (`roi=x0,y0,x1,y1` keeps its commas) or from a YAML mapping
    (roi as a list or that string); SkyfuseError naming an unknown key or a bad value."""
    if isinstance(options, str):
        items = [item.strip() for item in re.split(r",(?=\s*\w+\s*=)", options) if item.strip()]
        pairs = [item.partition("=") for item in items]
        bad = next((item for item, (key, sep, _) in zip(items, pairs) if not sep or not key.strip()), None)
        if bad is not None:
            raise SkyfuseError(f"--agc: expected KEY=VALUE, got {bad!r}")
        options = {key.strip(): value.strip() for key, _, value in pairs}
    if not isinstance(options, dict):
        raise SkyfuseError(f"AGC options must be KEY=VALUE,... or a mapping, got {options!r}")
    types = {f.name: type(getattr(AGCConfig(), f.name)) for f in fields(AGCConfig)}
    values = {}
    for key, value in options.items():
        if key not in types:
            raise SkyfuseError(f"unknown AGC option {key!r} (options: {', '.join(types)})")
        try:
            if key == "roi":
                parts = value.split(",") if isinstance(value, str) else list(value)
                values[key] = tuple(float(v) for v in parts)
            elif isinstance(value, str):
                values[key] = value if types[key] is str else types[key](value)
            else:
                values[key] = value
        except (TypeError, ValueError):
            raise SkyfuseError(f"AGC option {key}={value!r} is not a valid value "
                               f"({'x0,y0,x1,y1' if key == 'roi' else types[key].__name__})") from None
    config = AGCConfig(**values)
    config.validate()
    return config


class ThermalAGC:
    """Stateful 16-bit -> 8-bit conversion for one thermal stream (see the module docstring)."""

    def __init__(self, config: AGCConfig | None = None):
        self.config = config or AGCConfig()
        self.config.validate()
        self._previous: tuple[float, float] | np.ndarray | None = None  # last map: (L, H) or plateau table

    def reset(self) -> None:
        """Forget the damped map (e.g. after a cut to another scene)."""
        self._previous = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype == np.uint8:
            return frame
        if frame.dtype != np.uint16 or frame.ndim != 2:
            raise ValueError(f"AGC takes (H, W) uint8 or uint16 frames, got {frame.shape} {frame.dtype}")
        cfg = self.config
        if cfg.mode == "dde":
            return self._detail_enhanced(frame)
        histogram = np.bincount(self._sample(frame, cfg.stride).ravel(), minlength=_LEVELS)
        lo, hi = self._bounds(histogram)
        if cfg.mode == "plateau":
            table = self._plateau_map(histogram, lo, hi)
            if self._previous is not None:
                table = cfg.smoothing * self._previous + np.float32(1 - cfg.smoothing) * table
            self._previous = table
            return np.take(cv2.convertScaleAbs(table), frame)  # (rounds and saturates to uint8)
        lo, hi = self._damped(lo, hi)
        gain = 255.0 / (hi - lo)
        # one pass: saturate_cast<uint8>(x * gain - L * gain) rounds and clips
        return cv2.addWeighted(frame, gain, frame, 0.0, -lo * gain, dtype=cv2.CV_8U)

    def _detail_enhanced(self, frame: np.ndarray) -> np.ndarray:
        """dde mode: the base's bounds set the map; the detail (frame - base) gets detail_gain slopes."""
        cfg = self.config
        h, w = frame.shape
        small_size = (max(1, round(w / DDE_SCALE)), max(1, round(h / DDE_SCALE)))
        small = cv2.resize(frame, small_size, interpolation=cv2.INTER_AREA)  # (uint16: rounded block means)
        histogram = np.bincount(self._sample(small, max(1, cfg.stride // DDE_SCALE)).ravel(),
                                minlength=_LEVELS)
        lo, hi = self._damped(*self._bounds(histogram))
        # the base of the frame clipped to [L, H]: a target hotter than the hot tail enters it at H only
        clipped = np.clip(frame, max(0, math.floor(lo)), min(_LEVELS - 1, math.ceil(hi)))
        small = cv2.resize(clipped, small_size, interpolation=cv2.INTER_AREA)
        side = 2 * round(cfg.detail_radius / DDE_SCALE) + 1
        if side > 1:
            small = cv2.blur(small, (side, side), borderType=cv2.BORDER_REFLECT)
        base = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        slope = 255.0 / (hi - lo)
        base_slope, detail_slope = slope * cfg.base_levels / 255, slope * cfg.detail_gain
        # one pass: y = (base - L) * base_slope + (x - base) * detail_slope, rounded and saturated
        return cv2.addWeighted(frame, detail_slope, base, base_slope - detail_slope, -lo * base_slope,
                               dtype=cv2.CV_8U)

    def _bounds(self, histogram: np.ndarray) -> tuple[float, float]:
        """L and H of the counted pixels' histogram: tails rejected, widened to min_span (steps 2-3)."""
        cfg = self.config
        cumulative = np.cumsum(histogram)
        n = int(cumulative[-1])
        # the values at ranks k and n-1-k of the sorted sample, k pixels being the tail
        lo = float(np.searchsorted(cumulative, int(n * cfg.low_tail_pct / 100), side="right"))
        hi = float(np.searchsorted(cumulative, n - 1 - int(n * cfg.high_tail_pct / 100), side="right"))
        if hi - lo < cfg.min_span:
            mid = (lo + hi) / 2
            lo, hi = mid - cfg.min_span / 2, mid + cfg.min_span / 2
        return lo, hi

    def _damped(self, lo: float, hi: float) -> tuple[float, float]:
        """The bounds averaged with the previous frame's (step 5), remembered for the next one."""
        if self._previous is not None:
            a = self.config.smoothing
            lo, hi = a * self._previous[0] + (1 - a) * lo, a * self._previous[1] + (1 - a) * hi
        self._previous = (lo, hi)
        return lo, hi

    def _sample(self, image: np.ndarray, step: int) -> np.ndarray:
        """The counted pixels: every step-th one of the region of interest (at least one pixel)."""
        h, w = image.shape
        x0, y0, x1, y1 = self.config.roi
        left, top = min(int(x0 * w), w - 1), min(int(y0 * h), h - 1)
        right, bottom = max(round(x1 * w), left + 1), max(round(y1 * h), top + 1)
        step = int(step)
        return image[top:bottom:step, left:right:step]

    def _plateau_map(self, histogram: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """(65536,) float32 output level of every input value: plateau-equalised over [lo, hi]."""
        cfg = self.config
        edges = np.linspace(lo, hi, PLATEAU_BINS + 1)
        # pixels per bin from the per-value histogram: its cumulative sum at the bin edges
        inside = np.clip(np.ceil(edges).astype(np.int64), 0, _LEVELS)
        cumulative = np.concatenate([[0], np.cumsum(histogram)])
        counts = np.diff(cumulative[inside]).astype(np.float64)
        total = counts.sum()
        if total > 0:
            cap = cfg.plateau * total / PLATEAU_BINS
            capped = np.minimum(counts, cap)
            share = (capped + (total - capped.sum()) / PLATEAU_BINS) / total
        else:  # every counted pixel in a tail: nothing to equalise
            share = np.full(PLATEAU_BINS, 1 / PLATEAU_BINS)
        share = (1 - cfg.linear_mix) * share + cfg.linear_mix / PLATEAU_BINS
        levels = np.concatenate([[0.0], np.cumsum(share)]) * 255.0
        return np.interp(np.arange(_LEVELS), edges, levels).astype(np.float32)
