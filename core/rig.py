"""The rig file: the fixed geometry and time offset between the visible and thermal cameras.

`visible_to_thermal` is a 3×3 homography in pixel coordinates mapping a visible pixel to the thermal
pixel that sees the same ground point. `time_offset_s` is added to thermal capture times to put them on
the visible camera's clock (a thermal frame stamped t shows the instant t + time_offset_s).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import SkyfuseError
from .warp import warp


@dataclass
class Rig:
    visible_size: tuple[int, int]  # (width, height) the homography was estimated at
    thermal_size: tuple[int, int]
    visible_to_thermal: np.ndarray  # 3×3, visible pixel -> thermal pixel
    time_offset_s: float = 0.0
    method: str = "identity"
    quality: dict = field(default_factory=dict)  # error / confidence figures of the estimate

    def homography_for(self, visible_shape: tuple[int, ...], output_size: tuple[int, int]) -> np.ndarray:
        """The homography from a visible frame of `visible_shape` (H, W, ...) into an output frame of
        `output_size` (W, H) covering the thermal view, accounting for both being resized."""
        vh, vw = visible_shape[:2]
        to_rig = np.diag([self.visible_size[0] / vw, self.visible_size[1] / vh, 1.0])
        to_out = np.diag([output_size[0] / self.thermal_size[0], output_size[1] / self.thermal_size[1], 1.0])
        return to_out @ self.visible_to_thermal @ to_rig

    def warp_visible(self, visible: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
        """The visible frame resampled into the thermal camera's view at `output_size` (W, H)."""
        return warp(visible, self.homography_for(visible.shape, output_size), output_size)

    def to_json(self) -> dict:
        data = asdict(self)
        data["visible_to_thermal"] = np.asarray(self.visible_to_thermal, dtype=float).tolist()
        data["visible_size"], data["thermal_size"] = list(self.visible_size), list(self.thermal_size)
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def identity(cls, visible_size: tuple[int, int], thermal_size: tuple[int, int]) -> Rig:
        """A rig that only rescales the visible frame to the thermal size (cameras assumed co-aligned)."""
        scale = np.diag([thermal_size[0] / visible_size[0], thermal_size[1] / visible_size[1], 1.0])
        return cls(tuple(visible_size), tuple(thermal_size), scale, 0.0, "identity")

    @classmethod
    def load(cls, path: str | Path) -> Rig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SkyfuseError(f"calibration file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SkyfuseError(f"calibration file {path} is not readable JSON: {exc}") from None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise SkyfuseError(f"calibration file {path} is invalid: {exc}") from None

    @classmethod
    def from_json(cls, data: dict) -> Rig:
        matrix = np.asarray(data["visible_to_thermal"], dtype=float)
        if matrix.shape != (3, 3) or not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-12:
            raise ValueError("visible_to_thermal must be a finite, invertible 3×3 matrix")
        sizes = [tuple(int(v) for v in data[k]) for k in ("visible_size", "thermal_size")]
        if any(len(s) != 2 or min(s) <= 0 for s in sizes):
            raise ValueError("visible_size and thermal_size must be [width, height] with positive values")
        offset = float(data.get("time_offset_s", 0.0))
        if not math.isfinite(offset):
            raise ValueError("time_offset_s must be finite")
        return cls(sizes[0], sizes[1], matrix, offset, str(data.get("method", "unknown")),
                   dict(data.get("quality", {})))

