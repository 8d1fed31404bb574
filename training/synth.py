"""Synthetic misalignment of an aligned thermal image, with its ground truth.

The ground-truth flow `f` (H, W, 2), in pixels, follows the networks' convention: the thermal pixel seen
at visible pixel p is at p + f(p), so `registered(p) = misaligned(p + f(p))` (`warp`). `f` is a random
affine map about the centre, plus a smooth elastic field (random displacements on a coarse grid,
bicubically interpolated) and optionally a depth-like parallax (a smooth random inverse-depth map times
a random baseline direction, as a second camera beside the first would see).

The misaligned image is made like a real rig makes it: the aligned image is resampled ONCE through the
inverse of `f` (found by fixed-point iteration), and pixels that come from outside the aligned image
have no content (zero). `valid` marks the visible pixels whose thermal sample lies inside the thermal
frame: the pixels a registered image can show.

Named ranges (`MISALIGN_RANGES`) span the misalignments the product meets, from a calibrated rig's
residual to an uncalibrated pair. Displacement |f(p)| measured over the 100 RoadScene test pairs, each at
its own size and with its own fixed deformation (training.dataset.FixedMisaligned; `mean` is the mean of
the per-pair means, `p95`/`p99`/`max` are over all their pixels; `python -m benchmarks.misalign_ranges`):

    range    mean    p95    p99    max   what it stands for
    rig      1.13   2.10   2.46   3.31   a calibrated rig's residual: depth parallax (up to 2 px) and
                                         sub-pixel calibration error; under 4 px at 640×512 too
    default  7.84  14.53  17.47  25.72   the range the shipped weights were trained and scored on
    large   16.10  29.33  33.98  45.28   an uncalibrated pair: affine (shift up to 4.5 % of the size,
                                         rotation 3°, zoom 3 %, shear), elastic (6 px) and parallax (3 px)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from core.errors import SkyfuseError


@dataclass(frozen=True)
class MisalignConfig:
    translate: float = 0.02  # max shift, fraction of the image size (UMF-CMGR's code: 0.01)
    rotate_deg: float = 2.0  # max rotation
    scale: float = 0.02  # max relative zoom
    shear: float = 0.01  # max shear
    elastic_px: float = 3.0  # max elastic displacement
    elastic_spacing: int = 48  # px between the elastic field's random control points
    parallax_px: float = 0.0  # max depth-dependent shift (0 = off)
    inverse_iterations: int = 20  # fixed-point iterations to invert the flow


# The named misalignment ranges (see the module docstring for their measured displacements). `default`
# must never change: the shipped weights' evaluation numbers depend on its fixed test deformations.
MISALIGN_RANGES: dict[str, MisalignConfig] = {
    "rig": MisalignConfig(
        translate=0.001, rotate_deg=0.05, scale=0.001, shear=0.0005, elastic_px=0.5, parallax_px=2.0
    ),
    "default": MisalignConfig(),
    "large": MisalignConfig(
        translate=0.045, rotate_deg=3.0, scale=0.03, shear=0.02, elastic_px=6.0, elastic_spacing=64,
        parallax_px=3.0,
    ),
}


def misalign_range(name: str) -> MisalignConfig:
    """The config of a named range; a one-line error naming the choices otherwise."""
    if name not in MISALIGN_RANGES:
        raise SkyfuseError(f"unknown misalignment range {name!r}; choose from {', '.join(MISALIGN_RANGES)}")
    return MISALIGN_RANGES[name]


def displacement_stats(flows: list[np.ndarray]) -> dict[str, float]:
    """Displacement |f| of flows (H, W, 2) of any sizes: the mean of the per-flow means, and the 95th and
    99th percentile and the maximum over all their pixels."""
    magnitudes = [np.linalg.norm(f, axis=2).ravel() for f in flows]
    pooled = np.concatenate(magnitudes)
    return {
        "mean": float(np.mean([m.mean() for m in magnitudes])),
        "p95": float(np.percentile(pooled, 95)),
        "p99": float(np.percentile(pooled, 99)),
        "max": float(pooled.max()),
    }


@dataclass
class Misaligned:
    thermal: np.ndarray  # (H, W) float32: the misaligned thermal image (zero where it has no content)
    flow: np.ndarray  # (H, W, 2) float32 ground-truth registration flow, pixels (x, y)
    valid: np.ndarray  # (H, W) bool: visible pixels whose thermal sample lies inside the thermal frame


def _smooth_field(h: int, w: int, spacing: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Random field in [-1, 1]-ish, smooth at the scale of `spacing` pixels, (h, w, channels)."""
    gh, gw = max(2, h // spacing + 2), max(2, w // spacing + 2)
    coarse = rng.uniform(-1.0, 1.0, size=(gh, gw, channels)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return field.reshape(h, w, channels)


def random_flow(h: int, w: int, rng: np.random.Generator, config: MisalignConfig) -> np.ndarray:
    """A random ground-truth flow (h, w, 2) float32."""
    c = config
    angle = np.deg2rad(rng.uniform(-c.rotate_deg, c.rotate_deg))
    zoom = 1.0 + rng.uniform(-c.scale, c.scale)
    shear = rng.uniform(-c.shear, c.shear)
    linear = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = linear @ np.array([[1.0, shear], [0.0, 1.0]])
    shift = rng.uniform(-c.translate, c.translate, size=2) * np.array([w, h])
    xs, ys = _pixel_grid(h, w)
    centred = np.stack((xs - (w - 1) / 2, ys - (h - 1) / 2), axis=-1)
    flow = centred @ (linear - np.eye(2)).T.astype(np.float32) + shift.astype(np.float32)
    if c.elastic_px > 0:
        flow += c.elastic_px * _smooth_field(h, w, c.elastic_spacing, 2, rng)
    if c.parallax_px > 0:
        inverse_depth = 0.5 * (1.0 + _smooth_field(h, w, 2 * c.elastic_spacing, 1, rng))  # near = 1
        direction = rng.normal(size=2)
        flow += c.parallax_px * inverse_depth * (direction / np.linalg.norm(direction)).astype(np.float32)
    return flow.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def _remap(image: np.ndarray, flow: np.ndarray, border: int, value: float = 0.0) -> np.ndarray:
    xs, ys = _pixel_grid(*flow.shape[:2])
    return cv2.remap(
        image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border, borderValue=value
    )


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image(p + flow(p))`, bilinear, zero outside the image (the numpy twin of engines.networks.warp)."""
    return _remap(image, flow, cv2.BORDER_CONSTANT)


def inside(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: p + flow(p) lies inside the image (pixel centres 0..W-1, 0..H-1)."""
    h, w = flow.shape[:2]
    xs, ys = _pixel_grid(h, w)
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def invert_flow(flow: np.ndarray, iterations: int = 20, scale: int = 4) -> np.ndarray:
    """g with p + f(p) + g(p + f(p)) = p, i.e. g(q) = -f(q + g(q)); converges for smooth, mild f.
    Solved on a grid `scale` times coarser (the field is smooth), then interpolated back."""
    h, w = flow.shape[:2]
    small = cv2.resize(flow, (max(2, w // scale), max(2, h // scale)), interpolation=cv2.INTER_AREA)
    factors = np.array([small.shape[1] / w, small.shape[0] / h], dtype=np.float32)
    small = small * factors
    inverse = -small
    for _ in range(iterations):
        inverse = -_remap(small, inverse, cv2.BORDER_REPLICATE)
    return cv2.resize(inverse / factors, (w, h), interpolation=cv2.INTER_LINEAR)


def misalign(
    thermal: np.ndarray, rng: np.random.Generator, config: MisalignConfig | None = None
) -> Misaligned:
    """Deform an aligned thermal image (H, W) float32; returns it with its ground truth."""
    config = config or MisalignConfig()
    h, w = thermal.shape
    flow = random_flow(h, w, rng, config)
    distorted = warp(thermal, invert_flow(flow, config.inverse_iterations))
    return Misaligned(distorted, flow, inside(flow))
