"""The homography warp on the host: an image resampled into another view by a homography (source pixel ->
output pixel), bilinear, pixel centres at integer coordinates, zeros outside the source.

Every warp by the rig goes through `warp` (the fuse stage's pre-warp, engines' default `fuse_unwarped`,
int8 calibration frames, calibration overlays, rigs built from aligned pairs); engines/device_warp.py does
the same on a torch device. (Footage calibration's search warps each candidate matrix once: no rig, nothing
to cache, so it calls cv2.warpPerspective itself.)
The sampling maps are computed once per homography and sizes and kept in fixed point (cv2.convertMaps),
which makes each frame's warp about twice as fast as cv2.warpPerspective; the last MAX_CACHED are kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import cv2
import numpy as np

MAX_CACHED = 16  # homographies whose maps are kept (one per camera pair in a steady pipeline)

Value = TypeVar("Value")


class LruCache(Generic[Value]):
    """The last `size` values used, by key; safe to share between threads."""

    def __init__(self, size: int = MAX_CACHED):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, make: Callable[[], Value]) -> Value:
        """The value for `key`, made by `make()` on first use."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: maps take milliseconds, and two threads making one is harmless
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def warp_key(source_to_output: np.ndarray, source_hw: tuple[int, int], output_size: tuple[int, int]) -> tuple:
    """The cache key of one warp: the homography's exact value and both sizes."""
    return np.asarray(source_to_output, dtype=np.float64).tobytes(), tuple(source_hw), tuple(output_size)


_maps: LruCache[tuple[np.ndarray, np.ndarray]] = LruCache()


def warp(image: np.ndarray, source_to_output: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """`image` (H, W[, C]) resampled at `output_size` (W, H) so that output pixel H·p shows source pixel p."""
    key = warp_key(source_to_output, image.shape[:2], output_size)
    maps = _maps.get(key, lambda: _sampling_maps(np.linalg.inv(np.asarray(source_to_output, np.float64)),
                                                 tuple(output_size)))
    return cv2.remap(image, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _sampling_maps(output_to_source: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point cv2.remap maps giving, for each output pixel, where to sample the source."""
    xs, ys = np.meshgrid(np.arange(size[0], dtype=np.float64), np.arange(size[1], dtype=np.float64))
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ output_to_source.T
    map_x = (points[..., 0] / points[..., 2]).astype(np.float32)
    map_y = (points[..., 1] / points[..., 2]).astype(np.float32)
    return cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
