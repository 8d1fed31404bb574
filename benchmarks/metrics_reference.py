"""Fusion metrics: deviation from the shared reference fixture, and time per metric at 640x512.

    .venv/bin/python -m benchmarks.metrics_reference [--json out/bench/metrics.json]

The deviation table is the largest relative error per metric over all rows of
shared/data/metrics_reference/reference.csv (skipped when that folder is absent); NaN reference cells
are counted, not compared (see training/metrics.py for what this project returns there).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from training.metrics import FUSION_METRICS, fusion_metrics, load_gray

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REFERENCE_METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE"]


def reference_deviation(data: Path) -> dict[str, dict[str, float]]:
    """Per metric: max relative error, the row where it occurs, and how many NaN cells were skipped."""
    folder = data / "metrics_reference"
    result = {name: {"max_rel_error": 0.0, "worst": "", "nan_cells": 0} for name in REFERENCE_METRICS}
    for row in csv.DictReader((folder / "reference.csv").open()):
        thermal = load_gray(folder / "inputs_gray" / "ir" / f"{row['name']}.png")
        visible = load_gray(folder / "inputs_gray" / "vis" / f"{row['name']}.png")
        values = fusion_metrics(visible, thermal, load_gray(data / row["fused_path"]), REFERENCE_METRICS)
        for name, value in values.items():
            expected = float(row[name])
            if math.isnan(expected):
                result[name]["nan_cells"] += 1
                continue
            error = abs(value - expected) / abs(expected)
            if error >= result[name]["max_rel_error"]:
                result[name].update(max_rel_error=error, worst=f"{row['method']}/{row['name']}")
    return result


def synthetic_triple(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    visible, thermal = (np.clip(cv2.GaussianBlur(rng.uniform(0, 255, (height, width)), (0, 0), 2) * 3 - 255,
                                0, 255).round() for _ in range(2))
    return visible, thermal, np.round((visible + thermal) / 2)


def time_metrics(height: int, width: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per metric on one gray triple (conversion excluded)."""
    visible, thermal, fused = synthetic_triple(height, width)
    timings = {}
    for name, (metric, _) in FUSION_METRICS.items():
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            metric(visible, thermal, fused)
            samples.append(time.perf_counter() - start)
        timings[name] = statistics.median(samples) * 1000
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="shared data folder")
    parser.add_argument("--size", default="640x512", help="WxH for the timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    results: dict = {"size": f"{width}x{height}", "repeats": args.repeats}
    if (args.data / "metrics_reference" / "reference.csv").is_file():
        results["reference"] = reference_deviation(args.data)
        print(f"{'metric':<8} {'max rel err':>12}  {'worst row':<22} NaN cells")
        for name, entry in results["reference"].items():
            print(f"{name:<8} {entry['max_rel_error']:>12.2e}  {entry['worst']:<22} {entry['nan_cells']}")
    else:
        print(f"no reference fixture under {args.data}: deviation table skipped")
    results["timing_ms"] = time_metrics(height, width, args.repeats)
    print(f"\n{'metric':<8} {'ms @ ' + results['size']:>14}")
    for name, ms in results["timing_ms"].items():
        print(f"{name:<8} {ms:>14.1f}")
    print(f"{'all':<8} {sum(results['timing_ms'].values()):>14.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
