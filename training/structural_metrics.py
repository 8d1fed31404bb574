"""Fusion metrics that compare local structure: VIF, Qabf, SSIM and MS-SSIM.

Inputs are 2-D float64 arrays on the 0..255 scale (see `training.metrics.to_gray`). Each function scores
one source against the fused image; `training.metrics` sums the two sources as the reference evaluator
does. Conventions follow shared/data/metrics_reference/README.md; the section of that file is named next
to each function. Windowed statistics use "valid" filtering (no padding), done with separable OpenCV
filters because every window here is a product of two 1-D kernels.
"""

from __future__ import annotations

import cv2
import numpy as np

from core.errors import SkyfuseError

VIF_NOISE_VAR = 2.0  # sigma_n^2 of the reference evaluator (README, "VIF")
VIF_EPS = 1e-10
VIF_MIN_SIZE = 41  # smallest side that still leaves a window's worth of pixels at VIF's 4th scale

SSIM_WINDOW = 7  # skimage's default uniform window
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli, Bovik 2003, Table 1
MS_SSIM_WINDOW = 11
MS_SSIM_SIGMA = 1.5

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalized 1-D Gaussian; its outer product is MATLAB's fspecial('gaussian', size, sigma).

    fspecial also zeroes entries below eps * max, but for the sizes used here the smallest 2-D entry is
    at least exp(-25/4) * max (sigma >= size / 5), so that step never fires and the window is separable.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def filter_valid(image: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """Correlate with outer(kernel_1d, kernel_1d), keeping only positions where the window fits."""
    r = len(kernel_1d) // 2
    out = cv2.sepFilter2D(image, cv2.CV_64F, kernel_1d, kernel_1d, borderType=cv2.BORDER_REFLECT)
    return out[r:out.shape[0] - r, r:out.shape[1] - r]


def _local_moments(x: np.ndarray, y: np.ndarray, kernel_1d: np.ndarray):
    """Windowed means, population variances (E[x^2] - mu^2) and covariance."""
    mx, my = filter_valid(x, kernel_1d), filter_valid(y, kernel_1d)
    var_x = filter_valid(x * x, kernel_1d) - mx * mx
    var_y = filter_valid(y * y, kernel_1d) - my * my
    cov = filter_valid(x * y, kernel_1d) - mx * my
    return mx, my, var_x, var_y, cov


def vif(reference: np.ndarray, distorted: np.ndarray) -> float:
    """Multi-scale pixel-domain VIF (vifp) of `distorted` against `reference` (README, "VIF").

    One ratio of sums over 4 scales. A source with no variance anywhere gives 0/0, which the convention
    maps to 1.
    """
    if min(reference.shape) < VIF_MIN_SIZE:
        raise SkyfuseError(f"VIF needs images of at least {VIF_MIN_SIZE}x{VIF_MIN_SIZE} pixels, "
                           f"got {reference.shape[1]}x{reference.shape[0]}")
    num = den = 0.0
    ref, dist = reference, distorted
    for scale in range(1, 5):
        size = 2 ** (5 - scale) + 1
        kernel = gaussian_kernel_1d(size, size / 5)
        if scale > 1:
            ref = np.ascontiguousarray(filter_valid(ref, kernel)[::2, ::2])
            dist = np.ascontiguousarray(filter_valid(dist, kernel)[::2, ::2])
        _, _, var1, var2, cov = _local_moments(ref, dist, kernel)
        var1 = np.maximum(var1, 0.0)
        var2 = np.maximum(var2, 0.0)
        g = cov / (var1 + VIF_EPS)
        var_v = var2 - g * cov
        # The evaluator's steps, in its order: flat reference, flat distorted, negative gain.
        flat1 = var1 < VIF_EPS
        g[flat1] = 0.0
        var_v[flat1] = var2[flat1]
        var1[flat1] = 0.0
        flat2 = var2 < VIF_EPS
        g[flat2] = 0.0
        var_v[flat2] = 0.0
        negative = g < 0
        var_v[negative] = var2[negative]
        g[negative] = 0.0
        var_v[var_v <= VIF_EPS] = VIF_EPS
        num += float(np.log10(1.0 + g * g * var1 / (var_v + VIF_NOISE_VAR)).sum())
        den += float(np.log10(1.0 + var1 / VIF_NOISE_VAR).sum())
    return num / den if den > 0 else 1.0


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation (README, "Qabf"): true convolution, zero padding, same size."""
    # filter2D correlates, so flip the kernels to convolve as scipy.signal.convolve2d does.
    sx = cv2.filter2D(image, cv2.CV_64F, cv2.flip(_SOBEL_X, -1), borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(image, cv2.CV_64F, cv2.flip(_SOBEL_Y, -1), borderType=cv2.BORDER_CONSTANT)
    strength = np.sqrt(sx * sx + sy * sy)
    ratio = np.divide(sy, sx, out=np.zeros_like(sy), where=sx != 0)
    orientation = np.where(sx == 0, np.pi / 2, np.arctan(ratio))  # plain arctan, not atan2
    return strength, orientation


def _edge_preservation(g_src, a_src, g_fused, a_fused) -> np.ndarray:
    """Q_XF per pixel: strength and orientation preservation through sigmoids."""
    src_stronger = np.divide(g_fused, g_src, out=np.zeros_like(g_src), where=g_src > g_fused)
    fused_stronger = np.divide(g_src, g_fused, out=np.zeros_like(g_src), where=g_src < g_fused)
    # Where the strengths are equal the evaluator uses g_fused itself (the textbook value is 1).
    strength = np.where(g_src > g_fused, src_stronger, np.where(g_src < g_fused, fused_stronger, g_fused))
    angle = 1.0 - np.abs(a_src - a_fused) / (np.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (strength - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (angle - 0.8)))
    return q_g * q_a


def qabf(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic edge preservation, weighted by source edge strength (README, "Qabf").

    Sources without any edge give 0: nothing to preserve, so no credit. With zero padding the frame
    border is an edge of every non-black image, so only all-black sources reach that case.
    """
    g_a, a_a = _sobel(source_a)
    g_b, a_b = _sobel(source_b)
    g_f, a_f = _sobel(fused)
    weight = float((g_a + g_b).sum())
    if weight == 0:
        return 0.0
    q = _edge_preservation(g_a, a_a, g_f, a_f) * g_a + _edge_preservation(g_b, a_b, g_f, a_f) * g_b
    return float(q.sum()) / weight


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """skimage structural_similarity defaults with data_range=255 (README, "SSIM").

    7x7 uniform window, sample covariance (49/48), the map averaged over valid positions, which equals
    skimage's same-size map cropped by 3 pixels.
    """
    kernel = np.full(SSIM_WINDOW, 1.0 / SSIM_WINDOW)
    mx, my, var_x, var_y, cov = _local_moments(x, y, kernel)
    n = SSIM_WINDOW * SSIM_WINDOW
    sample = n / (n - 1)
    ssim_map = ((2 * mx * my + SSIM_C1) * (2 * cov * sample + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * ((var_x + var_y) * sample + SSIM_C2))
    return float(ssim_map.mean())


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 mean then keep every other pixel, as Wang's MATLAB code (symmetric pad for odd sizes)."""
    h, w = image.shape
    image = np.pad(image, ((0, h % 2), (0, w % 2)), mode="symmetric")
    return image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2).mean(axis=(1, 3))


def ms_ssim_scales(shape: tuple[int, int]) -> int:
    """How many of the 5 scales fit: the coarsest must still hold one 11x11 window."""
    side = min(shape)
    scales = 0
    while scales < len(MS_SSIM_WEIGHTS) and side >= MS_SSIM_WINDOW:
        scales += 1
        side = (side + 1) // 2
    return scales


def ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Multi-scale SSIM (Wang et al. 2003): Gaussian 11x11 window, sigma 1.5, population statistics.

    Not part of the reference fixture, so these are this project's choices: 5 scales with the paper's
    weights; images smaller than 176 px use the scales that fit, with their weights renormalized to sum
    to 1; negative contrast-structure terms are clipped to 0 before the power so the result stays real.
    """
    scales = ms_ssim_scales(x.shape)
    if scales == 0:
        raise SkyfuseError(f"MS-SSIM needs images of at least {MS_SSIM_WINDOW}x{MS_SSIM_WINDOW} pixels, "
                           f"got {x.shape[1]}x{x.shape[0]}")
    kernel = gaussian_kernel_1d(MS_SSIM_WINDOW, MS_SSIM_SIGMA)
    weights = np.array(MS_SSIM_WEIGHTS[:scales])
    if scales < len(MS_SSIM_WEIGHTS):  # the paper's 5 weights sum to 1.0001; keep them as published
        weights /= weights.sum()
    terms = []
    for scale in range(scales):
        mx, my, var_x, var_y, cov = _local_moments(x, y, kernel)
        cs = (2 * cov + SSIM_C2) / (var_x + var_y + SSIM_C2)
        if scale == scales - 1:
            cs = cs * (2 * mx * my + SSIM_C1) / (mx * mx + my * my + SSIM_C1)
        else:
            x, y = _halve(x), _halve(y)
        terms.append(max(float(cs.mean()), 0.0))
    return float(np.prod(np.power(terms, weights)))
