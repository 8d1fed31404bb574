"""What the sink draws on the fused video: a text panel with the live numbers, thumbnails of the
inputs (picture-in-picture), and a false-colour map for thermal images.

Everything draws in place with OpenCV on the frame the sink already owns: the panel costs well under
a millisecond at 640x512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import cv2
import numpy as np

from core.errors import SkyfuseError

FONT = cv2.FONT_HERSHEY_SIMPLEX
COLORMAPS = {
    "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT, "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO,
    "bone": cv2.COLORMAP_BONE, "viridis": cv2.COLORMAP_VIRIDIS,
}


@dataclass
class HudInfo:
    """The numbers the HUD shows; a field left None is not shown."""

    fps: float | None = None
    latency_ms: float | None = None  # end to end: capture to this frame reaching the sink
    drops: int | None = None
    engine: str | None = None
    capture_wall_ns: int | None = None  # wall-clock capture time of the frame on screen

    def lines(self) -> list[str]:
        lines = []
        if self.engine is not None:
            lines.append(f"engine {self.engine}")
        if self.fps is not None:
            lines.append(f"{self.fps:.1f} fps")
        if self.latency_ms is not None:
            lines.append(f"latency {self.latency_ms:.1f} ms")
        if self.drops is not None:
            lines.append(f"drops {self.drops}")
        if self.capture_wall_ns is not None:
            when = datetime.fromtimestamp(self.capture_wall_ns / 1e9, tz=timezone.utc)
            lines.append(when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z")
        return lines


@dataclass(frozen=True)
class _Layout:
    scale: float
    thickness: int
    line_height: int
    pad: int


def _layout(height: int) -> _Layout:
    """Text size follows the image height so the panel reads the same at 320x256 and 1920x1080."""
    scale = min(2.0, max(0.35, height / 1000))
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, 1)
    return _Layout(scale, max(1, round(scale * 2)), text_h + baseline + round(4 * scale), round(8 * scale))


def hud_rect(shape: tuple[int, ...], lines: Sequence[str]) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the panel `draw_hud` draws for `lines` on an image of `shape`."""
    layout = _layout(shape[0])
    if not lines:
        return (0, 0, 0, 0)
    text_w = max(cv2.getTextSize(line, FONT, layout.scale, layout.thickness)[0][0] for line in lines)
    x = y = layout.pad
    width = min(text_w + 2 * layout.pad, shape[1] - x)
    height = min(len(lines) * layout.line_height + layout.pad, shape[0] - y)
    return (x, y, max(0, width), max(0, height))


def draw_hud(image: np.ndarray, lines: Sequence[str] | HudInfo) -> np.ndarray:
    """Draw `lines` in the top-left corner on a darkened panel (white on dark reads on any background);
    changes `image` (BGR or gray uint8) in place and returns it."""
    if isinstance(lines, HudInfo):
        lines = lines.lines()
    x, y, width, height = hud_rect(image.shape, lines)
    if width == 0 or height == 0:
        return image
    panel = image[y : y + height, x : x + width]
    np.right_shift(panel, 2, out=panel)  # a quarter of the brightness: a 75 % black panel, no extra buffer
    layout = _layout(image.shape[0])
    white = (255, 255, 255) if image.ndim == 3 else 255
    for i, line in enumerate(lines):
        baseline_y = y + (i + 1) * layout.line_height - round(2 * layout.scale)
        cv2.putText(image, line, (x + layout.pad, baseline_y), FONT, layout.scale, white,
                    layout.thickness, cv2.LINE_AA)
    return image


def draw_no_signal(image: np.ndarray, silent_s: float) -> np.ndarray:
    """A banner across the middle of the last frame a viewer saw: no frame has come for `silent_s`, so the
    picture is frozen, not live. Changes `image` in place and returns it."""
    height = image.shape[0]
    layout = _layout(height)
    band = slice(height // 2 - layout.line_height, height // 2 + layout.line_height)
    np.right_shift(image[band], 2, out=image[band])
    text = f"NO SIGNAL for {silent_s:.0f} s"
    (text_w, _), _ = cv2.getTextSize(text, FONT, layout.scale * 1.5, layout.thickness)
    origin = (max(0, (image.shape[1] - text_w) // 2), height // 2 + layout.line_height // 2)
    colour = (80, 80, 255) if image.ndim == 3 else 255  # red: not the white of the live HUD
    cv2.putText(image, text, origin, FONT, layout.scale * 1.5, colour, layout.thickness, cv2.LINE_AA)
    return image


def to_gray8(image: np.ndarray) -> np.ndarray:
    """uint8 gray from gray8, gray16 (stretched min..max) or BGR."""
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint16:
        return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    if image.dtype != np.uint8:
        raise SkyfuseError(f"cannot show an image of dtype {image.dtype}: expected uint8 or uint16")
    return image


def thermal_colormap(image: np.ndarray, name: str = "inferno") -> np.ndarray:
    """False-colour BGR view of a thermal image (gray8, gray16 or BGR taken as its luminance)."""
    if name not in COLORMAPS:
        raise SkyfuseError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    return cv2.applyColorMap(to_gray8(image), COLORMAPS[name])


def picture_in_picture(image: np.ndarray, thumbnails: Sequence[np.ndarray], scale: float = 0.25,
                       margin: int = 8) -> np.ndarray:
    """Insert `thumbnails` (gray8, gray16 or BGR; any size) in a row in the bottom-right corner of
    `image` (BGR), each `scale` of the image width wide with a white border; changes `image` in place
    and returns it. Thumbnails shrink further if the row would not fit."""
    if not thumbnails:
        return image
    height, width = image.shape[:2]
    thumb_w = int(min(width * scale, (width - margin) / len(thumbnails) - margin))
    right = width - margin
    for thumb in reversed(thumbnails):
        thumb_h = max(1, round(thumb.shape[0] * thumb_w / thumb.shape[1]))
        if thumb_w < 4 or thumb_h > height - 2 * margin:
            break  # no room left for a thumbnail that shows anything
        small = cv2.resize(thumb if thumb.ndim == 3 else to_gray8(thumb), (thumb_w, thumb_h),
                           interpolation=cv2.INTER_AREA)
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        x0, y0 = right - thumb_w, height - margin - thumb_h
        image[y0 : y0 + thumb_h, x0:right] = small
        cv2.rectangle(image, (x0 - 1, y0 - 1), (right, y0 + thumb_h), (255, 255, 255), 1)
        right = x0 - margin
    return image
