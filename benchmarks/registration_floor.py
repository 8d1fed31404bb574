"""What the images themselves say about the RoadScene misaligned test's ground truth.

skyfuse-rt is scored against the synthetic flow that deformed each "aligned" RoadScene pair. This benchmark
asks how closely *any* registration that aligns what the two images show can agree with that ground truth,
using a slow reference registration with no learned part and no speed limit: a per-pair iterative
optimiser (Adam on a smooth displacement field, bicubic between control points `--spacing` px apart, plus
the starting flow) of the normalised gradient field (NGF) similarity, the standard measure for
multi-modal registration, coarse to fine (1/4, 1/2, full resolution).

Each pair (its fixed deformation, as `skyfuse eval` uses) is registered six times:
- cross-modal, from skyfuse-rt's flow: the visible image against the misaligned thermal one;
- monomodal, from skyfuse-rt's flow: the original thermal image against the misaligned one (same content,
  so the optimiser's own accuracy shows);
- cross-modal and monomodal, started *at* the ground truth: how far the similarity optimum lies from it;
- cross-modal from the ground truth again with a second, independent measure (local correlation of the
  gradient magnitudes), and how far its optimum lies from the NGF one;
- cross-modal from the ground truth at 1/4 resolution only, the finest that skyfuse-rt's features see: how
  well the images support the alignment at the resolution the network works at.

If the cross-modal optimum drifts away from the truth while the monomodal one stays on it, the visible and
thermal images of the pair agree best at a displacement other than the ground truth (the "aligned" pair is
not exactly aligned, or the modalities show different structure): the ground truth is that far from what
an image-based registration can find. Each registration is also fused by skyfuse-rt with its registration
off, so the table shows the fusion scores a registration at the images' own optimum earns against the
oracle registration. And skyfuse-rt's own error is split into the part an affine map explains and the rest.

Targets relative to the images' own optimum (issue 21): per protocol (`--protocol`, as `skyfuse eval`'s),
the NCC over the covered pixels (the registered thermal image against the aligned one, where the deformed
image still has content) and the MI, Qabf and SSIM of fusing at the NGF-from-truth registration, and
skyfuse-rt's own row beside it with the gaps: NCC difference (target: within 0.02), EPE ratio (within
1.5×), fusion scores' relative difference (within 5 %), and on the large range NCC ≥ 0.90. For the large
range the registrations started from skyfuse-rt's flow begin one level coarser (1/8 resolution), since its
flow can be many pixels off; those started at the truth begin at the optimum anyway.

    .venv/bin/python -m benchmarks.registration_floor [--protocol roadscene-misaligned-large] \
        [--pairs 100] [--weights W.pt] [--json out/bench/registration_floor.json]

About 27 s per pair on 2 cores (six registrations of up to 300 optimiser steps each). Skipped (exit 0, with a
message) when the RoadScene folder is absent.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import roadscene
from core.errors import SkyfuseError
from engines.networks.warp import warp
from training.data import load_pair
from training.evaluate import PROTOCOLS, protocol_range, protocol_samples
from training.metrics import end_point_error, fusion_metrics, registration_metrics
from training.synth import warp as warp_numpy
from training.validate import run_network, to_u8

SCALES = (4, 2, 1)  # coarse to fine: pooling factor of each optimisation level
# Levels of the registrations started from the network's flow, per range where they differ: on the large
# range its flow can be off by more than a 1/4-level basin is wide.
START_SCALES = {"large": (8, 4, 2, 1)}
# Issue 21's targets against the NGF-from-truth registration: NCC over covered pixels within this much,
# EPE within this ratio, fusion scores within this fraction; and on the large range an absolute NCC.
TARGET_NCC_GAP, TARGET_EPE_RATIO, TARGET_FUSION_LOSS, TARGET_LARGE_NCC = 0.02, 1.5, 0.05, 0.90
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
             steps: int, measure: str = "ngf", scales: tuple[int, ...] = SCALES,
             region: torch.Tensor | None = None) -> torch.Tensor:
    """The flow (1, 2, H, W) px that aligns `moving` (1, 1, H, W) to `reference` by the distance
    `measure`: `start` plus a smooth field with control points every `spacing` px, optimised coarse to
    fine over the pooling factors `scales`, scored only inside `region` (1, 1, H, W; default everywhere)."""
    distance = MEASURES[measure]
    h, w = reference.shape[-2:]
    control = torch.zeros(1, 2, h // spacing + 2, w // spacing + 2, requires_grad=True)
    optimiser = torch.optim.Adam([control], lr=LEARNING_RATE)

    def flow() -> torch.Tensor:
        return start + F.interpolate(control, size=(h, w), mode="bicubic", align_corners=False)

    ones = torch.ones_like(moving)
    region = ones if region is None else region
    for scale in scales:
        target = F.avg_pool2d(reference, scale)
        for _ in range(steps):
            current = flow()
            # Only where the warped image has content: outside the thermal view there is nothing to align.
            shown = (F.avg_pool2d(warp(ones, current) * region, scale) > 0.99).float()
            smoothness = sum((control.diff(dim=d) ** 2).mean() for d in (2, 3))
            loss = distance(target, F.avg_pool2d(warp(moving, current), scale), shown)
            optimiser.zero_grad()
            (loss + SMOOTHNESS * smoothness).backward()
            optimiser.step()
    return flow().detach()


def measure_pair(network, sample, spacing: int, steps: int,
                 start_scales: tuple[int, ...] = SCALES) -> dict[str, float]:
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

    def ncc(registered: np.ndarray) -> float:
        """NCC of a registered thermal image against the aligned one over the covered pixels, as
        `skyfuse eval` scores it."""
        return registration_metrics(to_u8(registered), to_u8(aligned[0, 0].numpy()), mask=valid)["NCC"]

    fused, network_registered, network_flow = run_network(network, visible, misaligned, 16)
    start = torch.from_numpy(network_flow).permute(2, 0, 1)[None]
    flows = {
        "cross_from_network": register(visible, misaligned, start, spacing, steps, scales=start_scales),
        "mono_from_network": register(aligned, misaligned, start, spacing, steps, scales=start_scales),
        "cross_from_truth": register(visible, misaligned, truth, spacing, steps),
        "mono_from_truth": register(aligned, misaligned, truth, spacing, steps),
        "lncc_cross_from_truth": register(visible, misaligned, truth, spacing, steps, "gradient_lncc"),
        "quarter_cross_from_truth": register(visible, misaligned, truth, spacing, steps, scales=(4,)),
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
    registered = {
        "oracle": warp_numpy(image, truth_hw),
        "cross_from_truth": warp_numpy(image, as_hw(flows["cross_from_truth"])),
        "lncc_cross_from_truth": warp_numpy(image, as_hw(flows["lncc_cross_from_truth"])),
    }
    fused_scores = {"network": scores(fused)} | {k: registered_scores(r) for k, r in registered.items()}
    row |= {f"{name}_{k}": v for name, values in fused_scores.items() for k, v in values.items()}
    row |= {"network_NCC": ncc(network_registered)} | {f"{k}_NCC": ncc(r) for k, r in registered.items()}
    return row


def target_gaps(means: dict[str, float], range_name: str) -> list[tuple[str, float, float, str, str, bool]]:
    """Issue 21's targets: per measure (NGF-from-truth value, skyfuse-rt's, the gap, the target, met)."""
    ngf_ncc, ncc = means["cross_from_truth_NCC"], means["network_NCC"]
    ngf_epe, epe = means["epe_cross_from_truth"], means["epe_network"]
    rows = [("NCC, covered pixels", ngf_ncc, ncc, f"{ncc - ngf_ncc:+.3f}", f">= -{TARGET_NCC_GAP}",
             ncc >= ngf_ncc - TARGET_NCC_GAP),
            ("EPE px", ngf_epe, epe, f"{epe / ngf_epe:.2f}x", f"<= {TARGET_EPE_RATIO}x",
             epe <= TARGET_EPE_RATIO * ngf_epe)]
    for column in FUSION_COLUMNS:
        ngf, own = means[f"cross_from_truth_{column}"], means[f"network_{column}"]
        change = own / ngf - 1.0
        rows.append((f"fusion {column}", ngf, own, f"{100 * change:+.1f} %",
                     f">= -{100 * TARGET_FUSION_LOSS:.0f} %", change >= -TARGET_FUSION_LOSS))
    if range_name == "large":
        rows.append(("NCC, covered pixels (absolute)", ngf_ncc, ncc, "", f">= {TARGET_LARGE_NCC}",
                     ncc >= TARGET_LARGE_NCC))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = roadscene.parser(__doc__)
    parser.add_argument("--spacing", type=int, default=24, help="px between the optimiser's control points")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per resolution")
    parser.add_argument("--protocol", default="roadscene-misaligned", help=f"one of {', '.join(PROTOCOLS)}")
    args = parser.parse_args(argv)
    try:
        range_name = protocol_range(args.protocol)
    except SkyfuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start_scales = START_SCALES.get(range_name, SCALES)
    loaded = roadscene.network_and_test_pairs(args)
    if loaded is None:
        return 0
    network, test = loaded
    samples = protocol_samples([load_pair(p) for p in test], args.protocol)
    rows, started = [], time.perf_counter()
    for i in range(len(samples)):
        rows.append(measure_pair(network, samples[i], args.spacing, args.steps, start_scales))
        print(f"\rregistered {i + 1}/{len(samples)} pairs ({time.perf_counter() - started:.0f} s)",
              end="", flush=True)
    print()
    means = roadscene.column_means(rows)
    print(f"Registration against the ground truth, {args.protocol} ({len(rows)} pairs), EPE px")
    print(f"  {'':<44}{'cross-modal':>12}{'monomodal':>12}")
    for label, start in (("iterative NGF, from skyfuse-rt's flow", "network"),
                         ("iterative NGF, from the truth", "truth")):
        cross, mono = means[f"epe_cross_from_{start}"], means[f"epe_mono_from_{start}"]
        print(f"  {label:<44}{cross:>12.2f}{mono:>12.2f}")
    print(f"  {'iterative gradient LNCC, from the truth':<44}{means['epe_lncc_cross_from_truth']:>12.2f}")
    print(f"  {'  NGF optimum against LNCC optimum':<44}{means['ngf_vs_lncc_optimum']:>12.2f}")
    quarter = means["epe_quarter_cross_from_truth"]
    print(f"  {'iterative NGF, from the truth, 1/4 res only':<44}{quarter:>12.2f}")
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
    print(f"skyfuse-rt against the images' own optimum (iterative NGF from the truth), {args.protocol}, "
          f"issue 21's targets")
    print(f"  {'measure':<32}{'NGF':>8}{'network':>9}{'gap':>10}{'target':>10}  met")
    gaps = target_gaps(means, range_name)
    for label, ngf, own, gap, target, met in gaps:
        print(f"  {label:<32}{ngf:>8.3f}{own:>9.3f}{gap:>10}{target:>10}  {'yes' if met else 'no'}")
    print(f"  (NCC of the oracle registration itself: {means['oracle_NCC']:.3f})")
    targets = {label: {"ngf_from_truth": ngf, "network": own, "gap": gap, "target": target, "met": met}
               for label, ngf, own, gap, target, met in gaps}
    roadscene.write_json(args, means, rows, spacing=args.spacing, steps=args.steps, protocol=args.protocol,
                         start_scales=list(start_scales), targets=targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
