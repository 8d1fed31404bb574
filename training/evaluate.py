"""`skyfuse eval`: score networks and classical baselines on a fixed benchmark protocol.

Protocols: the 100 RoadScene test pairs of training.data.split, each thermal image deformed by its fixed
seeded deformation (training.dataset.FixedMisaligned) from one of training.synth's MISALIGN_RANGES:
- `roadscene-misaligned`: the `default` range (mean displacement 7.8 px), the shipped weights' range;
- `roadscene-misaligned-large`: the `large` range, an uncalibrated pair (mean 16.1 px, p95 29 px);
- `roadscene-misaligned-rig`: the `rig` range, a calibrated rig's residual (mean 1.1 px, at most 4 px).
Rows, per network:
- `NAME`: fed the misaligned pair (the network registers and fuses);
- `NAME oracle-reg`: fed the thermal image registered with the ground-truth flow (same resampling and
  missing border as the misaligned input), its own registration off: the gap to it is the registration
  error alone;
- `NAME aligned`: fed the original aligned pair, its registration off: its fusion alone (upper bound);
- `NAME aligned, registration on` (networks that register): the aligned pair, registered as any input;
  its registration metrics are against zero flow: what the network moves a pair that needs no move;
and per classical baseline: the misaligned pair fused with no registration, and the oracle registration.
Registration metrics (MSE, NCC, MI, EPE) are over the pixels the warped image shows; fusion metrics compare
the fused image with the visible image and the *aligned* thermal image (a ghost costs score), with the
conventions of training.metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from core.errors import SkyfuseError
from engines.classical import BlendEngine, PyramidEngine
from engines.networks import NETWORKS, build_network, registers, spec

from . import synth
from .data import find_pairs, load_pair, split
from .dataset import FixedMisaligned
from .metrics import fusion_metrics, registration_metrics
from .plot import picture_grid
from .validate import run_network, to_u8

FUSION_COLUMNS = ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC"]
REGISTRATION_COLUMNS = ["reg_MSE", "reg_NCC", "reg_MI", "reg_EPE"]
BASELINES = {"blend": BlendEngine(), "pyramid": PyramidEngine()}
GRID_PAIRS = 3
PROTOCOLS = {  # protocol -> misalignment range (training.synth.MISALIGN_RANGES)
    "roadscene-misaligned": "default",
    "roadscene-misaligned-large": "large",
    "roadscene-misaligned-rig": "rig",
}


def protocol_range(protocol: str) -> str:
    """The misalignment range of a protocol; a one-line error naming the choices otherwise."""
    if protocol not in PROTOCOLS:
        raise SkyfuseError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def protocol_samples(pairs: list, protocol: str) -> FixedMisaligned:
    """The protocol's fixed misaligned samples of `pairs` (training.data.Pair)."""
    return FixedMisaligned.of_range(pairs, protocol_range(protocol))


def classical(engine, visible: np.ndarray, thermal: np.ndarray) -> np.ndarray:
    return engine.fuse_luma(to_u8(visible), to_u8(thermal)).astype(np.float32) / 255.0


class Result(NamedTuple):
    """One row's output for one pair; the registration, when the row registers, with its ground truth."""

    fused: np.ndarray
    registered: np.ndarray | None = None
    flow: np.ndarray | None = None
    true_flow: np.ndarray | None = None
    shown: np.ndarray | None = None  # the pixels the registration is scored over (None: all)


def rows_for_pair(sample, networks: dict, baselines: list[str]) -> dict[str, Result]:
    """row name -> result for one test pair."""
    visible, misaligned = sample["visible"][0].numpy(), sample["thermal"][0].numpy()
    aligned, true_flow = sample["aligned"][0].numpy(), sample["flow"].permute(1, 2, 0).numpy()
    shown, oracle = sample["valid"][0].numpy(), synth.warp(misaligned, true_flow)
    zero_flow = np.zeros_like(true_flow)
    visible_t = torch.from_numpy(visible)[None, None]
    results = {}
    for name, network in networks.items():
        multiple = spec(name).size_multiple

        def run(thermal: np.ndarray, register: bool, network=network, multiple=multiple):
            return run_network(network, visible_t, torch.from_numpy(thermal)[None, None], multiple, register)

        results[name] = Result(*run(misaligned, True), true_flow, shown)
        results[f"{name} oracle-reg"] = Result(run(oracle, False)[0])
        results[f"{name} aligned"] = Result(run(aligned, False)[0])
        if registers(network):
            results[f"{name} aligned, registration on"] = Result(*run(aligned, True), zero_flow)
    for name in baselines:
        results[f"{name} (no registration)"] = Result(
            classical(BASELINES[name], visible, misaligned), misaligned, zero_flow, true_flow, shown
        )
        results[f"{name} oracle-reg"] = Result(classical(BASELINES[name], visible, oracle))
    return results


def score_row(sample, result: Result) -> dict[str, float]:
    visible, aligned = sample["visible"][0].numpy(), sample["aligned"][0].numpy()
    scores = fusion_metrics(to_u8(visible), to_u8(aligned), to_u8(result.fused), FUSION_COLUMNS)
    if result.registered is not None:
        reg = registration_metrics(
            to_u8(result.registered),
            to_u8(aligned),
            flow=result.flow,
            true_flow=result.true_flow,
            mask=result.shown,
        )
        scores |= {f"reg_{k}": v for k, v in reg.items()}
    return scores


def grid_row(sample, results: dict, networks: list[str]) -> list[tuple[str, np.ndarray]]:
    """One example of the picture grid: the inputs, the first baseline and each network's outputs."""
    row = [("visible", sample["visible"][0].numpy()), ("thermal (misaligned)", sample["thermal"][0].numpy())]
    first_baseline = next((k for k in results if k.endswith("(no registration)")), None)
    if first_baseline:
        row.append((first_baseline, results[first_baseline].fused))
    for name in networks:
        row += [(f"{name} registered", results[name].registered), (f"{name} fused", results[name].fused)]
    return row


def format_table(table: dict[str, dict[str, float]]) -> str:
    columns = REGISTRATION_COLUMNS + FUSION_COLUMNS
    width = max(map(len, table)) + 2
    lines = [f"{'model':<{width}}" + "".join(f"{c:>9}" for c in columns)]
    for row, values in table.items():
        cells = "".join(f"{values[c]:>9.4f}" if c in values else f"{'-':>9}" for c in columns)
        lines.append(f"{row:<{width}}" + cells)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="skyfuse eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--protocol", default="roadscene-misaligned", help=f"one of {', '.join(PROTOCOLS)}")
    p.add_argument("--data", default="../shared/data/roadscene", help="RoadScene folder")
    p.add_argument(
        "--models", nargs="*", default=["skyfuse-rt"], help=f"networks among {', '.join(NETWORKS)}"
    )
    p.add_argument(
        "--weights", nargs="*", default=[], metavar="MODEL=PATH", help="weights other than the default"
    )
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--limit", type=int, help="score only the first N test pairs")
    p.add_argument("--json", help="write the table as JSON")
    p.add_argument("--grid", default="out/eval/grid.png", help="PNG grid of example results")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    protocol_range(args.protocol)  # an unknown protocol fails before anything loads
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.models if m not in NETWORKS]
    if unknown:
        raise SkyfuseError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(NETWORKS)}")
    weights = dict(item.split("=", 1) for item in args.weights if "=" in item)
    networks = {m: build_network(m, weights=weights.get(m)) for m in args.models}
    _, test = split(find_pairs(args.data))
    samples = protocol_samples([load_pair(p) for p in test[: args.limit]], args.protocol)
    sums: dict[str, dict[str, list[float]]] = {}
    grid = []
    for i in tqdm(range(len(samples)), desc="scoring pairs", unit="pair"):
        sample = samples[i]
        results = rows_for_pair(sample, networks, args.baselines)
        for row, result in results.items():
            for k, v in score_row(sample, result).items():
                sums.setdefault(row, {}).setdefault(k, []).append(v)
        if i < GRID_PAIRS:
            grid.append(grid_row(sample, results, list(networks)))
    table = {row: {k: float(np.mean(v)) for k, v in values.items()} for row, values in sums.items()}
    print(f"{args.protocol}: {len(samples)} pairs")
    print(format_table(table))
    if grid:
        picture_grid(grid, args.grid)
        print(f"example grid: {args.grid}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"protocol": args.protocol, "pairs": len(samples), "rows": table}, indent=2)
        )
    return 0
