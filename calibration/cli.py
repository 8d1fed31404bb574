"""`skyfuse calibrate`: estimate the rig file (visible→thermal homography and time offset) from footage
or from a target, and write a before/after overlay PNG beside it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import SkyfuseError
from core.rig import Rig

from .clips import clip_from_source
from .footage import MIN_CONFIDENCE, MODELS, FootageConfig
from .overlay import before_after, write_png
from .solve import FootageCalibrationConfig, calibrate_footage, calibrate_target, pick_pairs
from .target import PATTERNS, TargetConfig
from .temporal import TemporalConfig


def _pair_of_numbers(text: str, separator: str, kind: type) -> tuple:
    parts = text.lower().split(separator)
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(kind(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers as A{separator}B, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skyfuse calibrate",
        description="Estimate the rig file: the homography mapping visible pixels to thermal pixels and the "
        "time offset between the streams. Writes OUTPUT (JSON) and OUTPUT with .png (the thermal "
        "image with the visible edges before and after calibration).",
    )
    p.add_argument(
        "--visible", required=True, help="visible source (video, folder, glob, CSV#column, synthetic:...)"
    )
    p.add_argument("--thermal", required=True, help="thermal source, same forms")
    p.add_argument("--output", required=True, help="rig file to write (JSON)")
    p.add_argument(
        "--method",
        choices=("footage", "target"),
        default="footage",
        help="footage: match edges of ordinary flight footage (default); target: a heated board",
    )
    p.add_argument("--model", choices=MODELS, default="homography", help="footage: transform to fit")
    p.add_argument(
        "--fov-ratio",
        type=lambda t: _pair_of_numbers(t, ":", float),
        default=(1.2, 4.0),
        metavar="MIN:MAX",
        help="footage: visible/thermal field-of-view width ratios searched (default 1.2:4)",
    )
    p.add_argument(
        "--max-rotation",
        type=float,
        default=6.0,
        metavar="DEG",
        help="footage: roll between the cameras searched, ± degrees (default 6)",
    )
    p.add_argument(
        "--pairs", type=int, default=8, help="footage: frame pairs used for the geometry (default 8)"
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=MIN_CONFIDENCE,
        metavar="C",
        help=f"footage: refuse to write a rig whose confidence is below C (default {MIN_CONFIDENCE})",
    )
    p.add_argument(
        "--force", action="store_true", help="footage: write the rig even below --min-confidence"
    )
    p.add_argument("--pattern", choices=PATTERNS, default="checkerboard", help="target: board type")
    p.add_argument(
        "--grid",
        type=lambda t: _pair_of_numbers(t, "x", int),
        default=(9, 6),
        metavar="COLSxROWS",
        help="target: inner corners (checkerboard) or circles per row and column (default 9x6)",
    )
    p.add_argument(
        "--time-offset",
        type=float,
        default=None,
        metavar="S",
        help="use this thermal→visible offset (s) instead of estimating it from the motion",
    )
    p.add_argument(
        "--max-offset",
        type=float,
        default=1.0,
        metavar="S",
        help="largest time offset searched, ± seconds (default 1)",
    )
    p.add_argument(
        "--frames", type=int, default=300, help="read at most this many frames per stream (default 300)"
    )
    p.add_argument("--visible-fps", type=float, default=None, help="frame rate of a visible image sequence")
    p.add_argument("--thermal-fps", type=float, default=None, help="frame rate of a thermal image sequence")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.pairs < 1 or args.frames < 1 or args.max_offset <= 0:
        raise SkyfuseError("--pairs, --frames and --max-offset must be positive")
    if not 0 <= args.min_confidence <= 1:
        raise SkyfuseError(f"--min-confidence must be within 0..1, got {args.min_confidence}")
    low, high = args.fov_ratio
    if not 0 < low < high:
        raise SkyfuseError(f"--fov-ratio needs 0 < MIN < MAX, got {low}:{high}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise SkyfuseError(f"the folder of --output does not exist: {output.parent}")
    visible = clip_from_source(args.visible, "visible", fps=args.visible_fps, frames=args.frames)
    thermal = clip_from_source(args.thermal, "thermal", fps=args.thermal_fps, frames=args.frames)
    if args.method == "footage":
        config = FootageCalibrationConfig(
            pairs=args.pairs,
            time_offset_s=args.time_offset,
            geometry=FootageConfig(
                model=args.model, fov_ratio=(low, high), max_rotation_deg=args.max_rotation
            ),
            temporal=TemporalConfig(max_offset_s=args.max_offset),
        )
        rig = calibrate_footage(visible, thermal, config)
        _check_confidence(rig, args.min_confidence, args.force)
    else:
        rig = calibrate_target(visible, thermal, TargetConfig(args.pattern, args.grid), args.time_offset)
    rig.save(output)
    picture = output.with_suffix(".png")
    write_png(picture, _overlay(visible, thermal, rig))
    print(_summary(rig, output, picture))
    return 0


def _check_confidence(rig: Rig, minimum: float, force: bool) -> None:
    """Refuse a footage rig below `minimum` confidence (no file is written), or warn when forced."""
    q = rig.quality
    if q["confidence"] >= minimum:
        return
    problem = (
        f"calibration confidence {q['confidence']} is below {minimum} (estimated corner error "
        f"{q['corner_error_px']} px, edge NCC {q['edge_ncc_after']}, best/runner-up match "
        f"{q.get('search_contrast')}): the footage barely constrains the geometry"
    )
    if not force:
        raise SkyfuseError(f"{problem}; no rig written. Use footage with more shared texture (more pairs, "
                           "daylight), or --force to write it anyway")
    print(f"warning: {problem}; written anyway (--force)", file=sys.stderr)


def _overlay(visible, thermal, rig: Rig):
    """The before/after picture of the middle frame pair."""
    pairs = pick_pairs(visible, thermal, rig.time_offset_s, 3)
    v, t = pairs[len(pairs) // 2]
    return before_after(visible.load([v])[0], thermal.load([t])[0], rig)


def _summary(rig: Rig, output: Path, picture: Path) -> str:
    q = rig.quality
    lines = [f"wrote {output} ({rig.method}) and {picture}"]
    if rig.method == "footage":
        lines.append(
            f"  geometry: edge NCC {q['edge_ncc_before']} -> {q['edge_ncc_after']}, estimated corner "
            f"error {q['corner_error_px']} px, confidence {q['confidence']}"
        )
    else:
        lines.append(f"  geometry: reprojection RMS {q['reprojection_rms_px']} px over {q['pairs']} pairs")
    lines.append(
        f"  time offset: {rig.time_offset_s:+.4f} s ({q['time_offset_visible_frames']:+} visible frames) "
        f"± {q['time_offset_uncertainty_s']} s [{q['time_offset_source']}]"
    )
    return "\n".join(lines)
