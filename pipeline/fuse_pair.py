"""`skyfuse fuse-pair` (also spelled `skyfuse fuse --visible V --thermal T`): fuse one visible/thermal
image pair exactly as the fuse stage fuses a pair of frames, so a pair gives the same pixels from files
and from streams (tests/test_fuse_pair.py).

Each image is read as a capture reads it (pipeline/sources.py: the visible one as BGR, the thermal one as
8- or 16-bit gray), the thermal one goes through the AGC (pipeline/agc.py; `--agc` as for the fuse stage,
a fresh one: a stream's first frame), and the engine pre-warps the visible one into the thermal camera's
view by the rig (`--calibration`; without it only a resize), fuses the luminance and keeps the visible
chroma. The outputs have the thermal image's size (or `--size`); the flow (.npy) is (H, W, 2) float32
pixels with registered(p) = thermal(p + flow(p)).
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from core.errors import SkyfuseError
from core.rig import Rig
from core.sizes import parse_size
from engines.base import FusionResult
from engines.registry import create_engine

from .agc import AGCConfig, ThermalAGC, parse_agc_options
from .fuse import prepare_pair
from .sources import CorruptFrame, open_source
from .stage import parse_options


def read_frame(spec: str, stream: str) -> np.ndarray:
    """The first frame of the source `spec` (an image file, usually) as the `stream` capture sends it."""
    with open_source(spec, stream) as source:
        try:
            item = source.read()
        except CorruptFrame as exc:
            raise SkyfuseError(f"cannot read the {stream} image: {exc}") from None
    if item is None:
        raise SkyfuseError(f"the {stream} source {spec} has no frame")
    return item.image


def fuse_pair(engine, visible: np.ndarray, thermal: np.ndarray, rig: Rig | None = None,
              output_size: tuple[int, int] | None = None, agc: AGCConfig | None = None) -> FusionResult:
    """One pair through `engine` as the fuse stage sends it (a fresh AGC with the options `agc`: the
    stream's first frame). An engine that does not register (classical) leaves the thermal frame where it
    is: it is returned as the registered one, with zero flow."""
    thermal8, homography = prepare_pair(visible, thermal, ThermalAGC(agc), rig, output_size)
    result = engine.fuse_unwarped(visible[None], thermal8[None], homography[None])
    if result.registered is None:
        result = FusionResult(result.fused, thermal8[None], np.zeros((1, *thermal8.shape, 2), np.float32))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyfuse fuse-pair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visible", required=True, help="visible (colour) image")
    parser.add_argument("--thermal", required=True, help="thermal image (8- or 16-bit)")
    parser.add_argument("--output", required=True, help="fused image to write")
    parser.add_argument("--engine", default="torch",
                        help="fusion engine, as for the fuse stage (default torch: the network in PyTorch)")
    parser.add_argument("--engine-options", default="", help="engine options KEY=VALUE,...")
    parser.add_argument("--model", help="network of a learned engine (engine option model=; default "
                                        "skyfuse-rt)")
    parser.add_argument("--weights", help="network weights (engine option weights=)")
    parser.add_argument("--no-registration", action="store_true",
                        help="the pair arrives registered: the network's registration off (engine option "
                             "registration=false)")
    parser.add_argument("--threads", type=int, help="CPU threads of the engine (engine option threads=)")
    parser.add_argument("--calibration", metavar="RIG_JSON",
                        help="rig file from `skyfuse calibrate`: pre-warp the visible image into the thermal "
                             "view by its homography instead of resizing it")
    parser.add_argument("--size", help="output WIDTHxHEIGHT (default: the thermal size)")
    parser.add_argument("--agc", default="", metavar="KEY=VALUE,...",
                        help="16-bit thermal AGC, as for the fuse stage: mode=dde|linear|plateau, "
                             "detail_gain, base_levels, detail_radius, low_tail_pct, high_tail_pct, "
                             "roi=x0,y0,x1,y1, ... (default: dde; see README)")
    parser.add_argument("--save-registered", metavar="PNG", help="write the registered thermal image")
    parser.add_argument("--save-flow", metavar="NPY", help="write the flow, (H, W, 2) float32 pixels")
    return parser


def engine_options(args: argparse.Namespace) -> dict:
    """--engine-options with the network flags folded in (an engine that takes none of them says so)."""
    options = parse_options(args.engine_options, "--engine-options")
    shorthands = {"model": args.model, "weights": args.weights, "threads": args.threads,
                  "registration": False if args.no_registration else None}
    options.update({key: value for key, value in shorthands.items() if value is not None})
    return options


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rig = Rig.load(args.calibration) if args.calibration else None
    size = parse_size(args.size) if args.size else None
    agc = parse_agc_options(args.agc)
    visible, thermal = read_frame(args.visible, "visible"), read_frame(args.thermal, "thermal")
    engine = create_engine(args.engine, **engine_options(args))
    try:
        result, described = fuse_pair(engine, visible, thermal, rig, size, agc), engine.describe()
    finally:
        engine.close()
    for path, image in ((args.output, result.fused[0]), (args.save_registered, result.registered[0])):
        if path and not cv2.imwrite(path, image):
            raise SkyfuseError(f"cannot write {path}")
    if args.save_flow:
        np.save(args.save_flow, result.flow[0].astype(np.float32))
    height, width = result.fused.shape[1:3]
    print(f"fused {width}x{height} with {described} -> {args.output}")
    return 0
