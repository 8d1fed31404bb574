"""Training curves and picture grids as PNGs, drawn with matplotlib (the `train` extra; the runtime
install stays without it). The Agg backend writes files and needs no display."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(rows: list[dict], x_key: str, series: list[str], path: str | Path, columns: int = 3) -> None:
    """One line chart per series (its points are the rows holding that key, against `x_key`) in a grid."""
    curves = {}
    for name in series:
        points = [(float(r[x_key]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        curves[name] = [(x, y) for x, y in points if math.isfinite(y)]
    if not curves:
        return
    plt = _pyplot()
    grid_rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(4 * columns, 2.8 * grid_rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        if points:
            ax.plot(*zip(*points), color="tab:blue", linewidth=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(x_key, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)


def picture_grid(rows: list[list[tuple[str, np.ndarray]]], path: str | Path, tile_inches: float = 2.2
                 ) -> None:
    """A grid of labelled gray images (float in [0, 1] or uint8), one row of (label, image) per example."""
    if not rows:
        return
    plt = _pyplot()
    columns = max(map(len, rows))
    figure, axes = plt.subplots(len(rows), columns, figsize=(tile_inches * columns, tile_inches * len(rows)),
                                squeeze=False)
    for row, row_axes in zip(rows, axes):
        for ax in row_axes:
            ax.axis("off")
        for ax, (label, image) in zip(row_axes, row):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
            ax.set_title(label, fontsize=8)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(path), dpi=100)
    plt.close(figure)
