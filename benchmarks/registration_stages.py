"""Where skyfuse-rt's registration error comes from, stage by stage, on the RoadScene misaligned test.

For each test pair (its fixed deformation, as `skyfuse eval` uses) the table gives the end-point error
(px, over the pixels the warped image shows) of every stage of `SkyfuseRT.estimate`: the global shift,
the affine map, the refined affine map and the final flow; the error of the per-region matches that
feed the two affine fits against each region's mean true flow; and two bounds:

- best affine: the least-squares affine fit of the true flow itself. No affine map does better; the rest
  is the elastic part of the deformation, which only the residual decoder can recover.
- self-consistency: the same pair deformed a second time (another seed). Whatever the two inputs share
  cancels in the difference of the two predicted flows: any misalignment the dataset's "aligned" pair
  already has (label noise of the synthetic ground truth) and any error the network makes the same way
  on the same content. The EPE of that difference against the difference of the true flows, divided by
  sqrt(2) (two independent errors), is the part of the error that follows the deformation.

And a look at the "aligned" pairs themselves: the flow the network reads on each undeformed pair, and
whether warping the thermal image by it raises the NCC of the two images' gradient magnitudes (interior
only). As a control, the thermal image is also warped by the flow read on another pair (the previous
test pair's, resized): resampling alone, or a flow of the same size but the wrong pattern.

    .venv/bin/python -m benchmarks.registration_stages [--pairs 100] [--weights W.pt] \
        [--json out/bench/registration_stages.json]

Skipped (exit 0, with a message) when the RoadScene folder is absent.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import roadscene
from engines.networks import pad_to_multiple
from training.data import load_pair, pair_seed
from training.dataset import sample_from, to_tensors
from training.losses import end_point_error
from training.metrics import pearson
from training.synth import MisalignConfig, warp

CLASSICAL_SEARCH = 16  # px, the classical matcher's search radius (the network's first fit: ±16 px too)
SECOND_DEFORMATION_SEED = 1  # pair_seed's seed for the self-consistency input (the test set uses the default)
NCC_BORDER = 16  # px left out of the aligned-pair gradient NCC (where a warp pulls in the zero outside)

COLUMNS = {
    "epe_global_shift": "global shift",
    "epe_affine": "affine",
    "epe_refined_affine": "refined affine",
    "epe_final": "final flow",
    "region_match_error": "region matches (affine fit)",
    "refined_region_match_error": "region matches (refined fit)",
    "classical_region_match_error": "region matches, classical gradient NCC (reference)",
    "epe_best_affine": "best affine of the true flow (bound)",
    "self_consistency": "self-consistency (shared errors cancelled)",
}


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    smooth = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))


def classical_region_error(visible: np.ndarray, thermal: np.ndarray, flow: np.ndarray,
                           valid: np.ndarray, side: int = 32) -> float:
    """Mean error (px) of template matching of each visible region's gradient magnitude in the misaligned
    thermal one, against the region's mean true flow; regions fully inside the thermal view. Thermal and
    valid (1, H, W), flow (2, H, W)."""
    thermal, valid = thermal[0], valid[0]
    r = CLASSICAL_SEARCH
    g_visible, g_thermal = gradient_magnitude(visible), gradient_magnitude(thermal)
    h, w = visible.shape
    errors = []
    for y in range(r, h - side - r + 1, side // 2):
        for x in range(r, w - side - r + 1, side // 2):
            template = g_visible[y:y + side, x:x + side]
            if valid[y:y + side, x:x + side].min() < 0.5 or template.std() < 1e-3:
                continue
            scores = cv2.matchTemplate(g_thermal[y - r:y + side + r, x - r:x + side + r], template,
                                       cv2.TM_CCOEFF_NORMED)
            iy, ix = np.unravel_index(scores.argmax(), scores.shape)
            found = np.array((subpixel_peak(scores[iy], ix), subpixel_peak(scores[:, ix], iy))) - r
            errors.append(np.linalg.norm(found - flow[:, y:y + side, x:x + side].reshape(2, -1).mean(1)))
    return float(np.mean(errors))


def subpixel_peak(scores: np.ndarray, i: int) -> float:
    """The peak of the parabola through the best score and its two neighbours."""
    if 0 < i < len(scores) - 1:
        curvature = scores[i - 1] - 2 * scores[i] + scores[i + 1]
        if curvature < 0:
            return i + 0.5 * (scores[i - 1] - scores[i + 1]) / curvature
    return float(i)


def gradient_ncc(visible: np.ndarray, thermal: np.ndarray) -> float:
    """NCC of the two images' gradient magnitudes over the interior."""
    inner = (slice(NCC_BORDER, -NCC_BORDER),) * 2
    return pearson(gradient_magnitude(visible)[inner], gradient_magnitude(thermal)[inner])


def aligned_flow(network, pair) -> np.ndarray:
    """The flow (H, W, 2) px the network reads on the undeformed pair."""
    h, w = pair.visible.shape
    images = [pad_to_multiple(torch.from_numpy(x)[None, None], 16) for x in (pair.visible, pair.thermal)]
    with torch.no_grad():
        flow = network(*images)[2][0, :, :h, :w]
    return flow.permute(1, 2, 0).numpy()


def aligned_pair_check(pairs: list, flows: list[np.ndarray]) -> list[dict[str, float]]:
    """Per pair: the mean length of the flow read on it, and the gradient NCC of the pair as it is, with
    the thermal image warped by that flow, and warped by the previous pair's flow (the control)."""
    rows = []
    for i, (pair, flow) in enumerate(zip(pairs, flows)):
        h, w = pair.visible.shape
        other = cv2.resize(flows[i - 1], (w, h), interpolation=cv2.INTER_LINEAR)
        rows.append({
            "aligned_flow_px": float(np.linalg.norm(flow, axis=2).mean()),
            "aligned_gradient_ncc": gradient_ncc(pair.visible, pair.thermal),
            "aligned_gradient_ncc_own_flow": gradient_ncc(pair.visible, warp(pair.thermal, flow)),
            "aligned_gradient_ncc_other_flow": gradient_ncc(pair.visible, warp(pair.thermal, other)),
        })
    return rows


def measure_pair(network, pair, config: MisalignConfig) -> dict[str, float]:
    def deformed(*seed: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(pair_seed(pair.name, *seed))
        return to_tensors(sample_from(pair.visible, pair.thermal, rng, config))

    samples = [deformed(), deformed(SECOND_DEFORMATION_SEED)]  # the test deformation, then another
    h, w = pair.visible.shape
    padded_size = pad_to_multiple(samples[0]["visible"][None], 16).shape[2:]

    def full(flow8: torch.Tensor) -> torch.Tensor:
        flow = F.interpolate(flow8, size=padded_size, mode="bilinear", align_corners=False) * 8.0
        return flow[..., :h, :w]

    stages, finals = [], []
    for s in samples:
        with torch.no_grad():
            stage = network.estimate(*(pad_to_multiple(s[k][None], 16) for k in ("visible", "thermal")))
        stages.append(stage)
        finals.append(full(stage.maps[:, :2]))
    first, truth, valid = stages[0], samples[0]["flow"][None], samples[0]["valid"][None]
    padded = (0, padded_size[1] - w, 0, padded_size[0] - h)
    region_truth, coverage = network.region_flow(F.pad(truth, padded), F.pad(valid, padded))
    covered = (coverage > 0.5).float()
    both_valid = valid * samples[1]["valid"][None]
    row = {
        "epe_global_shift": end_point_error((first.shift * 8.0).expand_as(truth), truth, valid),
        "epe_affine": end_point_error(full(first.affine), truth, valid),
        "epe_refined_affine": end_point_error(full(first.refined), truth, valid),
        "epe_final": end_point_error(finals[0], truth, valid),
        # Region matches are in 1/8-pixels.
        "region_match_error": 8.0 * end_point_error(first.region_matches, region_truth, covered),
        "refined_region_match_error": 8.0 * end_point_error(
            first.refined_region_matches, region_truth, covered
        ),
        "self_consistency": end_point_error(
            finals[0] - finals[1], truth - samples[1]["flow"][None], both_valid
        ) / math.sqrt(2.0),
    }
    row = {k: float(v) for k, v in row.items()}
    # No affine map does better than the affine part of the true flow itself.
    row["epe_best_affine"] = roadscene.affine_split(
        samples[0]["flow"].permute(1, 2, 0).numpy(), samples[0]["valid"][0].numpy() > 0.5
    )[1]
    first_input = samples[0]
    row["classical_region_match_error"] = classical_region_error(
        pair.visible, *(first_input[k].numpy() for k in ("thermal", "flow", "valid"))
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = roadscene.parser(__doc__).parse_args(argv)
    loaded = roadscene.network_and_test_pairs(args)
    if loaded is None:
        return 0
    network, test = loaded
    pairs = [load_pair(p) for p in test]
    rows = [measure_pair(network, pair, MisalignConfig()) for pair in pairs]
    for row, aligned in zip(rows, aligned_pair_check(pairs, [aligned_flow(network, p) for p in pairs])):
        row.update(aligned)
    means = roadscene.column_means(rows)
    print(f"skyfuse-rt registration stages, RoadScene misaligned test ({len(rows)} pairs), px")
    for key, label in COLUMNS.items():
        print(f"  {label:<52} {means[key]:6.2f}")
    own, other = (sum(r[f"aligned_gradient_ncc_{k}_flow"] > r["aligned_gradient_ncc"] for r in rows)
                  for k in ("own", "other"))
    means["aligned_pairs_raised_by_own_flow"], means["aligned_pairs_raised_by_other_flow"] = own, other
    print(f"the undeformed pairs: the network reads {means['aligned_flow_px']:.2f} px of flow; gradient NCC "
          f"{means['aligned_gradient_ncc']:.3f} as they are, {means['aligned_gradient_ncc_own_flow']:.3f} "
          f"warped by that flow (higher on {own} of {len(rows)} pairs), "
          f"{means['aligned_gradient_ncc_other_flow']:.3f} by another pair's (higher on {other})")
    roadscene.write_json(args, means, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
