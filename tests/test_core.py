"""The bottom layer: one size convention, one host warp with its map cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from core.sizes import parse_size
from core.warp import LruCache, warp


def test_sizes_parse_as_width_by_height():
    assert parse_size("640x512") == (640, 512)
    assert parse_size(" 1280X720 ") == (1280, 720)
    for bad in ("640", "x512", "640x", "-640x512", "8x512", "640x512x3"):
        with pytest.raises(SkyfuseError, match="size"):
            parse_size(bad)


def test_warp_matches_opencv_and_reuses_its_maps():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), (7, 7), 2)
    homography = np.array([[0.6, 0.05, 4.0], [-0.04, 0.62, 3.0], [1e-4, 0.0, 1.0]])
    expected = cv2.warpPerspective(image, homography, (64, 48))
    got = warp(image, homography, (64, 48))
    assert got.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - expected).mean() < 0.5  # fixed point against float sampling


def test_lru_cache_keeps_the_last_used():
    cache: LruCache[int] = LruCache(size=2)
    made = []
    for key in ("a", "b", "a", "c", "a", "b"):
        cache.get(key, lambda key=key: made.append(key) or len(made))
    assert made == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c", "a" stayed in use
