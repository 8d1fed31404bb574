"""What the RoadScene registration benchmarks share: their command line, the network and test pairs they
score, the split of a flow error into its affine part and the rest, and their JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from engines.networks import build_network
from training.data import PairPaths, find_pairs, split

ROADSCENE = Path(__file__).resolve().parents[2] / "shared" / "data" / "roadscene"


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every RoadScene benchmark takes; a benchmark adds its own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROADSCENE), help="RoadScene folder")
    p.add_argument("--weights", help="skyfuse-rt weights (default: the shipped ones)")
    p.add_argument("--pairs", type=int, default=100, help="first N test pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    return p


def network_and_test_pairs(args: argparse.Namespace) -> tuple[torch.nn.Module, list[PairPaths]] | None:
    """skyfuse-rt (eval mode) and the first `--pairs` test pairs; None, after saying so, without the data."""
    if not Path(args.data).is_dir():
        print(f"skipped: no RoadScene folder at {args.data}")
        return None
    torch.set_num_threads(args.threads)
    network = build_network("skyfuse-rt", weights=args.weights).eval()
    return network, split(find_pairs(args.data))[1][: args.pairs]


def affine_split(error: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Mean length of the least-squares affine part of a flow error (H, W, 2) over `valid`, and of the
    rest."""
    ys, xs = np.nonzero(valid)
    design = np.stack((xs, ys, np.ones_like(xs)), axis=1).astype(np.float64)
    samples = error[valid].astype(np.float64)
    affine = design @ np.linalg.lstsq(design, samples, rcond=None)[0]
    return (float(np.linalg.norm(affine, axis=1).mean()),
            float(np.linalg.norm(samples - affine, axis=1).mean()))


def column_means(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def write_json(args: argparse.Namespace, means: dict, rows: list[dict], **meta) -> None:
    """The means and per-pair rows, with what produced them, to `--json` (if given)."""
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"pairs": len(rows), "weights": args.weights or "shipped"} | meta
        Path(args.json).write_text(json.dumps({"meta": meta, "means": means, "rows": rows}, indent=1))
