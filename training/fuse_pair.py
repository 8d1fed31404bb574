"""`skyfuse fuse-pair`: fuse one visible/thermal image pair with a network or a classical engine.

The thermal image is resized to the visible image's size (the visible frame is the reference) or, with
`--calibration`, resampled into the visible frame by the rig's homography (cameras whose views differ, as
real rigs' do); the network registers it and fuses the luminance, and the visible chroma is re-attached.
The fused image and the optional registered image have the visible image's size; the flow (.npy) is
(H, W, 2) float32 pixels with registered(p) = thermal(p + flow(p)), `thermal` being the resized or
pre-warped thermal image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from core.errors import SkyfuseError
from core.rig import Rig
from engines.colour import merge_luma, split_luma
from engines.networks import NETWORKS, build_network, registers, spec
from engines.registry import create_engine

from .validate import run_network, to_u8


def read_image(path: str, flags: int, label: str) -> np.ndarray:
    if not Path(path).is_file():
        raise SkyfuseError(f"{label} image not found: {path}")
    image = cv2.imread(path, flags)
    if image is None:
        raise SkyfuseError(f"cannot read {label} image {path}")
    return image


def thermal_u8(image: np.ndarray, size: tuple[int, int], rig: Rig | None = None) -> np.ndarray:
    """8-bit single-channel thermal image in the visible frame of `size` (W, H): resized, or sampled
    through the rig's visible-to-thermal homography (zero where the thermal camera does not see); 16-bit
    frames are min-max stretched."""
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if rig is not None:
        visible_to_thermal = rig.homography_for(size[::-1], image.shape[::-1])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # sample the thermal image at H * visible pixel
        return cv2.warpPerspective(image, visible_to_thermal, size, flags=flags)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if image.shape[::-1] != size else image


def fuse_with_network(name: str, weights: str | None, visible: np.ndarray, thermal: np.ndarray,
                      registration: bool = True):
    network = build_network(name, weights=weights)
    if not registration and not registers(network):
        raise SkyfuseError(f"{name} does not register the thermal image: --no-registration does not apply")
    luma, ycrcb = split_luma(visible)
    to_tensor = lambda x: torch.from_numpy(x.astype(np.float32) / 255.0)[None, None]  # noqa: E731
    fused, registered, flow = run_network(
        network, to_tensor(luma), to_tensor(thermal), spec(name).size_multiple, registration
    )
    return merge_luma(fused * 255.0, ycrcb), to_u8(registered), flow


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="skyfuse fuse-pair", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--visible", required=True, help="visible (colour) image")
    p.add_argument("--thermal", required=True, help="thermal image (8- or 16-bit)")
    p.add_argument("--output", required=True, help="fused image to write")
    p.add_argument(
        "--model", default="skyfuse-rt", choices=list(NETWORKS), help="network (default skyfuse-rt)"
    )
    p.add_argument("--weights", help="network weights (default engines/weights/<model>.pt when present)")
    p.add_argument("--engine", help="use this classical engine (e.g. blend, pyramid) instead of a network")
    p.add_argument("--calibration", metavar="RIG_JSON",
                   help="rig file from `skyfuse calibrate`: pre-warp the thermal image into the visible "
                        "frame by its homography instead of resizing it")
    p.add_argument("--no-registration", action="store_true",
                   help="the pair arrives registered (e.g. by --calibration): fuse it with the network's "
                        "registration off")
    p.add_argument("--save-registered", metavar="PNG", help="write the registered thermal image")
    p.add_argument("--save-flow", metavar="NPY", help="write the flow, (H, W, 2) float32 pixels")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rig = Rig.load(args.calibration) if args.calibration else None
    visible = read_image(args.visible, cv2.IMREAD_COLOR, "visible")
    thermal = thermal_u8(read_image(args.thermal, cv2.IMREAD_UNCHANGED, "thermal"), visible.shape[1::-1], rig)
    if args.engine:
        engine = create_engine(args.engine)
        fused = engine.fuse(visible[None], thermal[None]).fused[0]
        registered, flow = thermal, np.zeros(thermal.shape + (2,), np.float32)
    else:
        fused, registered, flow = fuse_with_network(args.model, args.weights, visible, thermal,
                                                    not args.no_registration)
    for path, image in ((args.output, fused), (args.save_registered, registered)):
        if path and not cv2.imwrite(path, image):
            raise SkyfuseError(f"cannot write {path}")
    if args.save_flow:
        np.save(args.save_flow, flow.astype(np.float32))
    print(f"fused {visible.shape[1]}x{visible.shape[0]} -> {args.output}")
    return 0
