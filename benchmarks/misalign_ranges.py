"""The displacement each named misalignment range (training.synth.MISALIGN_RANGES) puts on the RoadScene
test split: per range, over the 100 test pairs, each at its own size and with the fixed deformation its
protocol gives it (training.dataset.FixedMisaligned.of_range), the displacement |f| of the ground-truth
flow — the mean of the per-pair means, the 95th and 99th percentile and the maximum over all pixels — and
the share of pixels the deformed thermal image still covers, with the mean displacement over them (the EPE
of no registration in `skyfuse eval`).

    .venv/bin/python -m benchmarks.misalign_ranges [--pairs 100] [--json out/bench/misalign_ranges.json]

Flows only (no image is resampled): a few seconds. Skipped (exit 0, with a message) when the RoadScene
folder is absent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.roadscene import ROADSCENE
from training.data import find_pairs, read_luma, split
from training.dataset import FixedMisaligned
from training.synth import MISALIGN_RANGES, displacement_stats, inside, random_flow


def range_flows(sizes: dict[str, tuple[int, int]], name: str) -> list[np.ndarray]:
    """The range's fixed ground-truth flows of the named pairs (the flow is the first draw of a pair's
    deformation, so it equals FixedMisaligned's without resampling any image)."""
    fixed = FixedMisaligned.of_range([], name)
    return [random_flow(h, w, np.random.default_rng(fixed.seed(pair)), fixed.config)
            for pair, (h, w) in sizes.items()]


def measure(sizes: dict[str, tuple[int, int]]) -> dict[str, dict[str, float]]:
    table = {}
    for name in MISALIGN_RANGES:
        flows = range_flows(sizes, name)
        covered = [inside(f) for f in flows]
        there = [np.linalg.norm(f, axis=2)[c].mean() for f, c in zip(flows, covered)]
        table[name] = displacement_stats(flows) | {
            "covered": float(np.mean([c.mean() for c in covered])),
            "mean_covered": float(np.mean(there)),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROADSCENE), help="RoadScene folder")
    p.add_argument("--pairs", type=int, default=100, help="first N test pairs")
    p.add_argument("--json", help="write the table here")
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"skipped: no RoadScene folder at {args.data}")
        return 0
    test = split(find_pairs(args.data))[1][: args.pairs]
    sizes = {pair.name: read_luma(pair.thermal).shape for pair in test}
    table = measure(sizes)
    print(f"Displacement |f| px of each range's fixed deformations, RoadScene test split "
          f"({len(sizes)} pairs)")
    print(f"  {'range':<9}{'mean':>8}{'p95':>8}{'p99':>8}{'max':>8}{'covered':>9}{'mean there':>12}")
    for name, s in table.items():
        print(f"  {name:<9}{s['mean']:>8.2f}{s['p95']:>8.2f}{s['p99']:>8.2f}{s['max']:>8.2f}"
              f"{s['covered']:>9.3f}{s['mean_covered']:>12.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"pairs": len(sizes), "ranges": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
