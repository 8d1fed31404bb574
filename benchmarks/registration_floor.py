"""What the images themselves say about the RoadScene misaligned test's ground truth.

skyfuse-rt is scored against the synthetic flow that deformed each "aligned" RoadScene pair. This benchmark
asks how closely *any* registration that aligns what the two images show can agree with that ground truth,
using a slow reference registration with no learned part and no speed limit: a per-pair iterative
optimiser (Adam on a smooth displacement field, bicubic between control points `--spacing` px apart, plus
the starting flow) of the normalised gradient field (NGF) similarity, the standard measure for
multi-modal registration, coarse to fine (1/4, 1/2, full resolution).

Each pair (its fixed deformation, as `skyfuse eval` uses) is registered five times:
- cross-modal, from skyfuse-rt's flow: the visible image against the misaligned thermal one;
- monomodal, from skyfuse-rt's flow: the original thermal image against the misaligned one (same content,
  so the optimiser's own accuracy shows);
- cross-modal and monomodal, started *at* the ground truth: how far the similarity optimum lies from it;
- cross-modal from the ground truth again with a second, independent measure (local correlation of the
  gradient magnitudes), and how far its optimum lies from the NGF one.

If the cross-modal optimum drifts away from the truth while the monomodal one stays on it, the visible and
thermal images of the pair agree best at a displacement other than the ground truth (the "aligned" pair is
not exactly aligned, or the modalities show different structure): the ground truth is that far from what
an image-based registration can find. Each registration is also fused by skyfuse-rt with its registration
off, so the table shows the fusion scores a registration at the images' own optimum earns against the
oracle registration. And skyfuse-rt's own error is split into the part an affine map explains and the rest.

    .venv/bin/python -m benchmarks.registration_floor [--pairs 100] [--weights W.pt] \
        [--json out/bench/registration_floor.json]

About 25 s per pair on 2 cores (five registrations of 300 optimiser steps each). Skipped (exit 0, with a
message) when the RoadScene folder is absent.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import roadscene
from engines.networks.warp import warp
from training.data import load_pair
from training.dataset import FixedMisaligned
from training.metrics import end_point_error, fusion_metrics
from training.synth import warp as warp_numpy
from training.validate import run_network, to_u8

SCALES = (4, 2, 1)  # coarse to fine: pooling factor of each optimisation level
NGF_EPSILON = 0.02  # gradient magnitude below which NGF treats a pixel as flat (intensities in [0, 1])
SMOOTHNESS = 0.02  # weight of the squared control-point differences
LEARNING_RATE = 0.1  # px per Adam step
LNCC_WINDOW = 9  # px, the window of the local correlation
FUSION_COLUMNS = ["MI", "Qabf", "SSIM"]


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0), mode="replicate")
    gy = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1), mode="replicate")
    return gx, gy


def ngf_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - mean squared cosine of the two images' gradients over `mask` (0 where every edge lines up)."""
    (ax, ay), (bx, by) = image_gradients(a), image_gradients(b)
    eps2 = NGF_EPSILON**2
    cosine2 = (ax * bx + ay * by).pow(2) / ((ax * ax + ay * ay + eps2) * (bx * bx + by * by + eps2))
    return 1.0 - (cosine2 * mask).sum() / mask.sum().clamp(min=1.0)


def gradient_lncc_distance(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - mean local (9×9) correlation of the two images' gradient magnitudes over `mask`: a second,
    independent multi-modal measure (it compares edge strength where NGF compares edge direction)."""

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, LNCC_WINDOW, stride=1, padding=LNCC_WINDOW // 2, count_include_pad=False)

    ga, gb = (torch.sqrt(gx * gx + gy * gy + 1e-6) for gx, gy in map(image_gradients, (a, b)))
    da, db = ga - local_mean(ga), gb - local_mean(gb)
    correlation = local_mean(da * db) / torch.sqrt(local_mean(da * da) * local_mean(db * db) + 1e-8)
    return 1.0 - (correlation * mask).sum() / mask.sum().clamp(min=1.0)


MEASURES = {"ngf": ngf_distance, "gradient_lncc": gradient_lncc_distance}


def register(reference: torch.Tensor, moving: torch.Tensor, start: torch.Tensor, spacing: int,
             steps: int, measure: str = "ngf") -> torch.Tensor:
    """The flow (1, 2, H, W) px that aligns `moving` (1, 1, H, W) to `reference` by the distance
    `measure`: `start` plus a smooth field with control points every `spacing` px, optimised coarse to
    fine."""
    distance = MEASURES[measure]
    h, w = reference.shape[-2:]
    control = torch.zeros(1, 2, h // spacing + 2, w // spacing + 2, requires_grad=True)
    optimiser = torch.optim.Adam([control], lr=LEARNING_RATE)

    def flow() -> torch.Tensor:
        return start + F.interpolate(control, size=(h, w), mode="bicubic", align_corners=False)

    ones = torch.ones_like(moving)
    for scale in SCALES:
        target = F.avg_pool2d(reference, scale)
        for _ in range(steps):
            current = flow()
            # Only where the warped image has content: outside the thermal view there is nothing to align.
            shown = (F.avg_pool2d(warp(ones, current), scale) > 0.99).float()
            smoothness = sum((control.diff(dim=d) ** 2).mean() for d in (2, 3))
            loss = distance(target, F.avg_pool2d(warp(moving, current), scale), shown)
            optimiser.zero_grad()
            (loss + SMOOTHNESS * smoothness).backward()
            optimiser.step()
    return flow().detach()


def measure_pair(network, sample, spacing: int, steps: int) -> dict[str, float]:
    visible, misaligned, aligned = (sample[k][None] for k in ("visible", "thermal", "aligned"))
    truth = sample["flow"][None]
    truth_hw, valid = truth[0].permute(1, 2, 0).numpy(), sample["valid"][0].numpy() > 0.5

    def as_hw(flow: torch.Tensor) -> np.ndarray:
        return flow[0].permute(1, 2, 0).numpy()

    def scores(fused: np.ndarray) -> dict[str, float]:
        return fusion_metrics(*(to_u8(x) for x in (visible[0, 0].numpy(), aligned[0, 0].numpy(), fused)),
                              FUSION_COLUMNS)

    def registered_scores(registered: np.ndarray) -> dict[str, float]:
        """The scores of skyfuse-rt's fusion, registration off, of the thermal image as registered."""
        thermal = torch.from_numpy(registered)[None, None]
        return scores(run_network(network, visible, thermal, 16, register=False)[0])

    fused, _, network_flow = run_network(network, visible, misaligned, 16)
    start = torch.from_numpy(network_flow).permute(2, 0, 1)[None]
    flows = {
        "cross_from_network": register(visible, misaligned, start, spacing, steps),
        "mono_from_network": register(aligned, misaligned, start, spacing, steps),
        "cross_from_truth": register(visible, misaligned, truth, spacing, steps),
        "mono_from_truth": register(aligned, misaligned, truth, spacing, steps),
        "lncc_cross_from_truth": register(visible, misaligned, truth, spacing, steps, "gradient_lncc"),
    }
    row = {"epe_network": end_point_error(network_flow, truth_hw, valid)}
    row |= {f"epe_{k}": end_point_error(as_hw(f), truth_hw, valid) for k, f in flows.items()}
    row["ngf_vs_lncc_optimum"] = end_point_error(
        as_hw(flows["cross_from_truth"]), as_hw(flows["lncc_cross_from_truth"]), valid
    )
    row["network_error_affine"], row["network_error_rest"] = roadscene.affine_split(
        network_flow - truth_hw, valid
    )
    image = misaligned[0, 0].numpy()
    fused_scores = {
        "network": scores(fused),
        "oracle": registered_scores(warp_numpy(image, truth_hw)),
        "cross_from_truth": registered_scores(warp_numpy(image, as_hw(flows["cross_from_truth"]))),
        "lncc_cross_from_truth": registered_scores(warp_numpy(image, as_hw(flows["lncc_cross_from_truth"]))),
    }
    row |= {f"{name}_{k}": v for name, values in fused_scores.items() for k, v in values.items()}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = roadscene.parser(__doc__)
    parser.add_argument("--spacing", type=int, default=24, help="px between the optimiser's control points")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per resolution")
    args = parser.parse_args(argv)
    loaded = roadscene.network_and_test_pairs(args)
    if loaded is None:
        return 0
    network, test = loaded
    samples = FixedMisaligned([load_pair(p) for p in test])
    rows, started = [], time.perf_counter()
    for i in range(len(samples)):
        rows.append(measure_pair(network, samples[i], args.spacing, args.steps))
        print(f"\rregistered {i + 1}/{len(samples)} pairs ({time.perf_counter() - started:.0f} s)",
              end="", flush=True)
    print()
    means = roadscene.column_means(rows)
    print(f"Registration against the ground truth, RoadScene misaligned test ({len(rows)} pairs), EPE px")
    print(f"  {'':<44}{'cross-modal':>12}{'monomodal':>12}")
    for label, start in (("iterative NGF, from skyfuse-rt's flow", "network"),
                         ("iterative NGF, from the truth", "truth")):
        cross, mono = means[f"epe_cross_from_{start}"], means[f"epe_mono_from_{start}"]
        print(f"  {label:<44}{cross:>12.2f}{mono:>12.2f}")
    print(f"  {'iterative gradient LNCC, from the truth':<44}{means['epe_lncc_cross_from_truth']:>12.2f}")
    print(f"  {'  NGF optimum against LNCC optimum':<44}{means['ngf_vs_lncc_optimum']:>12.2f}")
    print(f"  {'skyfuse-rt':<44}{means['epe_network']:>12.2f}")
    print(f"  {'  its error: affine part / the rest':<44}{means['network_error_affine']:>12.2f}"
          f"{means['network_error_rest']:>12.2f}")
    print("Fusion by skyfuse-rt (registration off) of each registration")
    print(f"  {'registration':<48}" + "".join(f"{c:>8}" for c in FUSION_COLUMNS))
    for label, name in (("oracle (ground truth)", "oracle"),
                        ("iterative NGF optimum near the truth", "cross_from_truth"),
                        ("iterative gradient LNCC optimum near the truth", "lncc_cross_from_truth"),
                        ("skyfuse-rt's own", "network")):
        print(f"  {label:<48}" + "".join(f"{means[f'{name}_{c}']:>8.3f}" for c in FUSION_COLUMNS))
    roadscene.write_json(args, means, rows, spacing=args.spacing, steps=args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
