"""Image fusion and registration metrics (numpy + OpenCV, no torch), and the `skyfuse metrics` command.

Fusion metrics follow the reference evaluator described in shared/data/metrics_reference/README.md
(CDDFuse's utils/Evaluator.py) exactly; the test suite reproduces its reference.csv. In short:

* Images are gray on a 0..255 float scale, never normalized to 0..1. BGR input is converted like the
  reference: float32, OpenCV BGR->GRAY (0.299 R + 0.587 G + 0.114 B), rounded half to even.
* A = thermal (IR), B = visible, F = fused. Every two-source metric is symmetric in A and B.
* EN: entropy of the 256-level histogram of F, in bits.  SD: population std of F.
* SF: sqrt(mean horizontal diff^2 + mean vertical diff^2), each mean over its own pair count.
* AG: mean of sqrt((Gx^2 + Gy^2) / 2) with numpy.gradient's central/one-sided differences.
* MI: I(F;A) + I(F;B) over the 256 integer levels, in nats (natural log).
* SCD: r(F - B, A) + r(F - A, B).  CC: (r(A, F) + r(B, F)) / 2, with r the global Pearson correlation.
* VIF: vifp(A -> F) + vifp(B -> F), a sum (sigma_n^2 = 2, 4 scales).  Qabf: Xydeas-Petrovic, L = 1.
* SSIM: SSIM(F, A) + SSIM(F, B), a sum (maximum 2); 7x7 box window, data_range 255.
* MS-SSIM (not in the fixture; this project's choice): MS-SSIM(F, A) + MS-SSIM(F, B), also a sum.
* MSE: (mean((A - F)^2) + mean((B - F)^2)) / 2.  PSNR: 10 log10(max(F)^2 / MSE), peak = max of F.

Degenerate inputs, where the reference evaluator would give NaN, get defined values here:

* r (in SCD and CC) is 0 when either array is constant: no linear relation can be measured. So SCD of
  F = A is r(A - B, A) + 0, where the reference CSV has NaN.
* VIF of a source with no variance anywhere is 1 per source (the reference's NaN -> 1 rule).
* Qabf is 0 when neither source has any edge. Zero padding makes the frame border an edge of any
  non-black image, so in practice this means all-black sources.
* PSNR is +inf when MSE is 0 (F equals both sources) and -inf when F is all black with MSE > 0.

Registration metrics compare a registered (warped) thermal image with the ground-truth aligned one,
over the pixels the warped image still shows (`mask`, default all): MSE on a 0..1 scale (as in the
UMF-CMGR paper's table), NCC (Pearson correlation), MI (nats, 256 levels, as the fusion MI terms) and EPE,
the mean Euclidean distance between the estimated and the true flow, both (H, W, 2) arrays of (dx, dy)
in pixels.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from core.errors import SkyfuseError

from . import structural_metrics as structural

LEVELS = 256

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (visible, thermal, fused) gray arrays


def to_gray(image: np.ndarray) -> np.ndarray:
    """Gray float64 array on the 0..255 scale from a (H, W), (H, W, 1) or BGR (H, W, 3) array."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise SkyfuseError(f"expected a non-empty gray (H, W) or BGR (H, W, 3) image, got {image.shape}")
    if image.dtype != np.uint8 and not (np.isfinite(image).all() and image.min() >= 0 and image.max() <= 255):
        raise SkyfuseError("image values must be finite and within 0..255 (metrics use the 8-bit scale)")
    if image.ndim == 3:
        gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_BGR2GRAY)
        return np.round(gray).astype(np.float64)
    return image.astype(np.float64)


def load_gray(path: str | Path, label: str = "image") -> np.ndarray:
    """Read an image file the way the reference does (3-channel 8-bit read, then `to_gray`)."""
    path = Path(path)
    if not path.is_file():
        raise SkyfuseError(f"{label} image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SkyfuseError(f"cannot read {label} image {path}: not an image format OpenCV can decode")
    return to_gray(image)


def _levels(image: np.ndarray) -> np.ndarray:
    """Integer gray levels 0..255 (round half to even, like the reference)."""
    return np.clip(np.rint(image), 0, LEVELS - 1).astype(np.intp)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Global Pearson correlation; 0 when either array is constant (see the module docstring)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    xc = x - x.mean()
    yc = y - y.mean()
    return float((xc * yc).sum() / math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum())))


def mutual_information_pair(x: np.ndarray, y: np.ndarray) -> float:
    """I(X; Y) in nats from the joint histogram of the 256 integer levels (sklearn mutual_info_score)."""
    joint = np.bincount((_levels(x) * LEVELS + _levels(y)).ravel(), minlength=LEVELS * LEVELS)
    joint = joint.reshape(LEVELS, LEVELS) / x.size
    outer = joint.sum(axis=1)[:, None] * joint.sum(axis=0)[None, :]
    nonzero = joint > 0
    return max(float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum()), 0.0)


def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy of the 256-level histogram, in bits."""
    p = np.bincount(_levels(fused).ravel(), minlength=LEVELS) / fused.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (constant image) into 0.0


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation (divide by N)."""
    return float(np.std(fused))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: sqrt(RF^2 + CF^2), each the mean squared neighbour difference over its own pair count."""
    row = np.mean(np.diff(fused, axis=1) ** 2)
    col = np.mean(np.diff(fused, axis=0) ** 2)
    return float(np.sqrt(row + col))


def average_gradient(fused: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), numpy.gradient differences."""
    gy, gx = np.gradient(fused)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2)))


def mutual_information(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """MI: I(F; A) + I(F; B) in nats."""
    return mutual_information_pair(fused, thermal) + mutual_information_pair(fused, visible)


def scd(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """SCD: sum of the correlations of differences, r(F - B, A) + r(F - A, B)."""
    return pearson(fused - visible, thermal) + pearson(fused - thermal, visible)


def vif(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """VIF: vifp(A -> F) + vifp(B -> F), summed over the sources."""
    return structural.vif(thermal, fused) + structural.vif(visible, fused)


def qabf(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """Qabf: gradient-based edge preservation from both sources."""
    return structural.qabf(thermal, visible, fused)


def ssim(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """SSIM: SSIM(F, A) + SSIM(F, B), summed (maximum 2)."""
    return structural.ssim(fused, thermal) + structural.ssim(fused, visible)


def ms_ssim(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """MS-SSIM: MS-SSIM(F, A) + MS-SSIM(F, B), summed like SSIM (maximum 2)."""
    return structural.ms_ssim(fused, thermal) + structural.ms_ssim(fused, visible)


def correlation_coefficient(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """CC: (r(A, F) + r(B, F)) / 2."""
    return (pearson(thermal, fused) + pearson(visible, fused)) / 2


def mse(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """MSE: mean of the two sources' mean squared errors against F, 0..255 scale."""
    return float((np.mean((thermal - fused) ** 2) + np.mean((visible - fused) ** 2)) / 2)


def psnr(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray) -> float:
    """PSNR: 10 log10(max(F)^2 / MSE), peak = the fused image's maximum, not 255."""
    error = mse(visible, thermal, fused)
    peak = float(fused.max())
    if error == 0:
        return math.inf
    if peak == 0:
        return -math.inf
    return 10 * math.log10(peak * peak / error)


def _fused_only(function: Callable[[np.ndarray], float]) -> Metric:
    return lambda visible, thermal, fused: function(fused)


# name -> (metric, one-line description), in the order tables print them
FUSION_METRICS: dict[str, tuple[Metric, str]] = {
    "EN": (_fused_only(entropy), "entropy of F (bits)"),
    "SD": (_fused_only(standard_deviation), "standard deviation of F"),
    "SF": (_fused_only(spatial_frequency), "spatial frequency of F"),
    "AG": (_fused_only(average_gradient), "average gradient of F"),
    "MI": (mutual_information, "mutual information, sum over sources (nats)"),
    "SCD": (scd, "sum of the correlations of differences"),
    "VIF": (vif, "visual information fidelity, sum over sources"),
    "Qabf": (qabf, "edge preservation (Xydeas-Petrovic)"),
    "SSIM": (ssim, "structural similarity, sum over sources (max 2)"),
    "MS-SSIM": (ms_ssim, "multi-scale SSIM, sum over sources (max 2)"),
    "CC": (correlation_coefficient, "correlation coefficient, mean over sources"),
    "PSNR": (psnr, "peak signal-to-noise ratio, peak = max(F) (dB)"),
    "MSE": (mse, "mean squared error, mean over sources (0..255 scale)"),
}


def _check_names(names: list[str] | None, known: dict) -> list[str]:
    if names is None:
        return list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SkyfuseError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(names)


def _check_same_shape(**images: np.ndarray) -> None:
    shapes = {label: image.shape for label, image in images.items()}
    if len(set(shapes.values())) > 1:
        sizes = ", ".join(f"{label} {shape[1]}x{shape[0]}" for label, shape in shapes.items())
        raise SkyfuseError(f"images must have the same size, got {sizes}")


def fusion_metrics(visible: np.ndarray, thermal: np.ndarray, fused: np.ndarray,
                   names: list[str] | None = None) -> dict[str, float]:
    """Fusion metrics of `fused` against both sources; uint8/float gray or BGR arrays of one size."""
    selected = _check_names(names, FUSION_METRICS)
    visible, thermal, fused = to_gray(visible), to_gray(thermal), to_gray(fused)
    _check_same_shape(visible=visible, thermal=thermal, fused=fused)
    return {name: FUSION_METRICS[name][0](visible, thermal, fused) for name in selected}


def end_point_error(flow: np.ndarray, true_flow: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean Euclidean distance between two (H, W, 2) flows, over `mask` if given."""
    flow, true_flow = np.asarray(flow, dtype=np.float64), np.asarray(true_flow, dtype=np.float64)
    if flow.shape != true_flow.shape or flow.ndim != 3 or flow.shape[2] != 2:
        raise SkyfuseError(f"flows must both be (H, W, 2) arrays, got {flow.shape} and {true_flow.shape}")
    distance = np.linalg.norm(flow - true_flow, axis=2)
    return float(distance[_valid_mask(mask, distance.shape)].mean())


def _valid_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != shape:
        raise SkyfuseError(f"mask has shape {mask.shape}, expected {shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise SkyfuseError("mask selects no pixels: nothing to score")
    return mask


def registration_metrics(registered: np.ndarray, reference: np.ndarray, *, flow: np.ndarray | None = None,
                         true_flow: np.ndarray | None = None,
                         mask: np.ndarray | None = None) -> dict[str, float]:
    """MSE (0..1 scale), NCC and MI (nats) of `registered` against `reference`, plus EPE when both flows
    are given; all over the pixels of `mask` (nonzero = the warped image shows that pixel)."""
    if (flow is None) != (true_flow is None):
        raise SkyfuseError("end-point error needs both flow and true_flow")
    registered, reference = to_gray(registered), to_gray(reference)
    _check_same_shape(registered=registered, reference=reference)
    valid = _valid_mask(mask, reference.shape)
    moved, fixed = registered[valid], reference[valid]
    result = {
        "MSE": float(np.mean(((moved - fixed) / 255.0) ** 2)),
        "NCC": pearson(moved, fixed),
        "MI": mutual_information_pair(moved, fixed),
    }
    if flow is not None:
        if np.shape(flow)[:2] != reference.shape:
            raise SkyfuseError(f"flow has shape {np.shape(flow)}, expected {reference.shape + (2,)}")
        result["EPE"] = end_point_error(flow, true_flow, valid)
    return result


def _format_table(values: dict[str, float]) -> str:
    width = max(map(len, values))
    return "\n".join(f"{name:<{width}}  {value:>12.4f}  {FUSION_METRICS[name][1]}"
                     for name, value in values.items())


def main(argv: list[str]) -> int:
    """`skyfuse metrics`: fusion metrics for one visible/thermal/fused image triple."""
    parser = argparse.ArgumentParser(
        prog="skyfuse metrics",
        description="Fusion metrics of a fused image against its visible and thermal sources, with the "
                    "conventions of shared/data/metrics_reference/README.md (gray 0..255 scale).")
    parser.add_argument("--visible", required=True, help="visible image (any OpenCV-readable file)")
    parser.add_argument("--thermal", required=True, help="thermal image, same size")
    parser.add_argument("--fused", required=True, help="fused image, same size")
    parser.add_argument("--metrics", help=f"comma-separated subset of {','.join(FUSION_METRICS)}")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON object instead of a table (non-finite values as null)")
    args = parser.parse_args(argv)
    names = None if args.metrics is None else [name.strip() for name in args.metrics.split(",")]
    values = fusion_metrics(load_gray(args.visible, "visible"), load_gray(args.thermal, "thermal"),
                            load_gray(args.fused, "fused"), names)
    if args.json:
        print(json.dumps({name: value if math.isfinite(value) else None for name, value in values.items()}))
    else:
        print(_format_table(values))
    return 0
