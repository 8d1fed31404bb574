"""Modality-robust image representations and cross-modal similarity scores.

Visible and thermal images of the same ground share edges (field borders, roads, tree crowns) but not
intensities: a warm road is bright in thermal and dark in visible, and the sign of an edge may flip.
The magnitude of the image gradient keeps the edges and drops the sign, so it can be compared across the
two modalities with plain normalised cross-correlation.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_gray(image: np.ndarray) -> np.ndarray:
    """A float32 gray image in [0, 1] from BGR8, gray8 or gray16, stretched by robust percentiles so that
    16-bit thermal frames with a narrow occupied range look like 8-bit ones."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    gray = image.astype(np.float32)
    low, high = np.percentile(gray, (0.5, 99.5))
    if high - low < 1e-6:
        return np.zeros_like(gray)
    return np.clip((gray - low) / (high - low), 0.0, 1.0).astype(np.float32)


def to_float(image: np.ndarray) -> np.ndarray:
    """Colour frames as float32 BGR in [0, 1] (colour edges matter: two materials of one brightness
    differ in temperature); gray frames as `to_gray`."""
    if image.ndim == 3:
        return image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else float(image.max() or 1))
    return to_gray(image)


def edge_strength(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Square root of the gradient magnitude of a blurred gray or colour image (colour: the root of the
    summed squared channel gradients). The root compresses the range so that the strongest edges of one
    modality, which may be faint in the other, do not dominate a correlation."""
    image = image.astype(np.float32, copy=False)
    blurred = cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    energy = gx * gx + gy * gy
    if energy.ndim == 3:
        energy = energy.sum(axis=2)
    return np.sqrt(np.sqrt(energy))


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two equally sized images over `mask` (all pixels by default)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if mask is not None:
        a, b = a[mask > 0], b[mask > 0]
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, bins: int = 32) -> float:
    """Mutual information (nats) of the intensities of two equally sized gray images over `mask`."""
    a, b = a.ravel(), b.ravel()
    if mask is not None:
        keep = mask.ravel() > 0
        a, b = a[keep], b[keep]
    if a.size == 0:
        return 0.0
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])).sum())
