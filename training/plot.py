"""Training curves as a PNG drawn with OpenCV (no matplotlib dependency): one panel per series."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

PANEL_W, PANEL_H, MARGIN = 360, 220, 46


def _panel(name: str, xs: list[float], ys: list[float]) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 24, PANEL_W - 12, PANEL_H - 28
    cv2.rectangle(img, (x0, y0), (x1, y1), (180, 180, 180), 1)
    cv2.putText(img, name, (x0, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if not points:
        return img
    px, py = np.array(points, dtype=np.float64).T
    lo, hi = py.min(), py.max()
    hi = hi if hi > lo else lo + 1e-9
    left, right = px.min(), max(px.max(), px.min() + 1e-9)
    u = x0 + (px - left) / (right - left) * (x1 - x0)
    v = y1 - (py - lo) / (hi - lo) * (y1 - y0)
    cv2.polylines(img, [np.stack((u, v), 1).round().astype(np.int32)], False, (200, 80, 0), 2, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, f"{hi:.4g}", (2, y0 + 8), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{lo:.4g}", (2, y1), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{left:g}", (x0, y1 + 16), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"{right:g}", (x1 - 40, y1 + 16), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def plot_history(rows: list[dict], x_key: str, series: list[str], path: str | Path, columns: int = 3) -> None:
    """Write one line chart per series (its points are the rows holding that key) into a grid PNG."""
    panels = []
    for name in series:
        pts = [(float(r[x_key]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        panels.append(_panel(name, [p[0] for p in pts], [p[1] for p in pts]))
    if not panels:
        return
    while len(panels) % columns:
        panels.append(np.full_like(panels[0], 255))
    grid = np.vstack([np.hstack(panels[i : i + columns]) for i in range(0, len(panels), columns)])
    cv2.imwrite(str(path), grid)
