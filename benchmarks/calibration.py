"""Rig calibration accuracy: synthetic flights with known truth, and the WiSARD sequences.

Synthetic: for each case (seed, field-of-view ratio, roll, mounting offset, time offset, thermal rate),
`calibrate_footage` runs end to end on a synthetic flight flown at a varying speed
(calibration.synthetic_clips);
the table gives the mean corner error of the homography at 640×512 and the time-offset error in visible
frames, beside the method's own estimates of both.

Rigs from real aligned pairs (skipped when ../shared/data/roadscene is absent): 8 RoadScene pairs per
rig (day, night or a seeded mix) seen through a known rig (calibration.aligned_rig: the visible camera
sees a wider field, the thermal one is rolled and shifted) and calibrated as stills (`--time-offset 0`);
the table gives the true mean and max corner error beside the method's own estimate and confidence, and
whether `skyfuse calibrate` would write the rig or refuse it.

WiSARD (skipped when ../shared/data/wisard is absent): each sequence's frames are timed by their file
numbers at an assumed 30 fps; the table gives the edge alignment (NCC of gradient magnitudes) and the
mutual information of the thermal image and the warped visible image, before (plain resize) and after,
the estimated offset, and writes the before/after overlay PNG under --out. A second table asks whether
skyfuse-rt's learned registration still helps once the rig pre-warps the thermal frame into the visible
one: the edge NCC in the visible frame (inside the thermal view) with the rig alone, after the network's
flow, and after a control flow of the same size and the wrong pattern (the network's flow rotated by 180°);
and against the per-pair NGF registration of benchmarks.registration_floor (started at the rig and at the
network's flow), the share of the NGF optimum's edge-NCC gain over the rig that the network reaches
(issue 21's target: 80 % on every sequence).

    python -m benchmarks.calibration --json out/bench/calibration.json [--out out/calibration] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.machine import machine_line
from benchmarks.registration_floor import register
from calibration.aligned_rig import RigSpec, render_pair, true_homography
from calibration.clips import clip_from_render, clip_from_source
from calibration.features import edge_strength, mutual_information, ncc, to_float, to_gray
from calibration.footage import MIN_CONFIDENCE, FootageConfig, corner_distances, corner_error
from calibration.overlay import before_after, write_png
from calibration.solve import FootageCalibrationConfig, calibrate_footage, pick_pairs
from calibration.synthetic_clips import synthetic_clips
from core.errors import SkyfuseError
from core.rig import Rig
from core.warp import warp as warp_homography
from engines.registry import create_engine
from pipeline.agc import ThermalAGC
from pipeline.synthetic import FlightConfig
from training.data import find_pairs
from training.synth import warp

WISARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wisard"
ROADSCENE = WISARD.parent / "roadscene"
WISARD_FPS = 30.0  # assumed: the sample frames carry numbers, not times
# The per-pair NGF registration on WiSARD: at half the 1080p visible resolution (a quarter of the pixels
# keeps it to minutes on 2 cores), control points every 24 px there, 100 optimiser steps per level.
NGF_SCALE, NGF_SPACING, NGF_STEPS = 2, 24, 100

# seed, fov_ratio, rotation_deg, offset_px, time_offset_s, thermal_fps
CASES = [
    (0, 2.0, 2.0, (12.0, -8.0), 0.0, 30.0),
    (1, 1.5, -5.0, (-30.0, 20.0), 0.1, 15.0),
    (2, 3.0, 4.0, (25.0, 15.0), -0.05, 30.0),
    (3, 2.5, -3.0, (-20.0, 10.0), 0.2, 9.0),
    (4, 1.8, 5.0, (5.0, -25.0), -0.12, 30.0),
]


# name, scene subset (day: the 8 brightest visible images by median, night: the 8 darkest, mix-N: 8
# drawn with seed N), rig; thermal 320×256 is about RoadScene's own infrared resolution over the
# thermal view, the last rig upsamples it twice (detail the data does not have)
REAL_RIGS = [
    ("day-1.9x", "day", RigSpec(1.9, 3.0, (0.05, -0.03))),
    ("night-1.9x", "night", RigSpec(1.9, 3.0, (0.05, -0.03))),
    ("mix0-1.5x", "mix-0", RigSpec(1.5, -2.0, (-0.08, 0.05))),
    ("mix1-2.0x", "mix-1", RigSpec(2.0, 5.0, (0.06, 0.06), (800, 600), (384, 288))),
    ("mix2-1.7x", "mix-2", RigSpec(1.7, -4.0, (0.0, -0.06))),
    ("day-1.9x-640", "day", RigSpec(1.9, 3.0, (0.05, -0.03), (640, 480), (640, 512))),
]
REAL_PAIRS = 8


def scene_subset(root: Path, subset: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """REAL_PAIRS aligned (visible BGR, infrared gray) pairs of a subset of REAL_RIGS."""
    paths = find_pairs(root)
    if subset.startswith("mix-"):
        rng = np.random.default_rng(int(subset[4:]))
        chosen = [paths[i] for i in sorted(rng.choice(len(paths), REAL_PAIRS, replace=False))]
    else:
        brightness = [float(np.median(cv2.imread(str(p.visible), cv2.IMREAD_GRAYSCALE))) for p in paths]
        order = np.argsort(brightness)
        chosen = [paths[i] for i in (order[-REAL_PAIRS:] if subset == "day" else order[:REAL_PAIRS])]
    return [(cv2.imread(str(p.visible)), cv2.imread(str(p.thermal), cv2.IMREAD_GRAYSCALE)) for p in chosen]


def real_rig_row(name: str, subset: str, spec: RigSpec, pairs: list) -> dict:
    """Calibrate the stills of `pairs` seen through `spec`, as `skyfuse calibrate --time-offset 0` does."""
    frames = [render_pair(v, t, spec) for v, t in pairs]
    times = np.arange(len(frames)) / 30.0
    visible = clip_from_render("visible", times, lambda i: frames[i][0])
    thermal = clip_from_render("thermal", times, lambda i: frames[i][1])
    row = {"rig": name, "subset": subset, "fov_ratio": spec.fov_ratio, "roll_deg": spec.roll_deg,
           "shift": list(spec.shift), "visible_size": list(spec.visible_size),
           "thermal_size": list(spec.thermal_size)}
    start = time.perf_counter()
    try:
        rig = calibrate_footage(visible, thermal, FootageCalibrationConfig(time_offset_s=0.0))
    except SkyfuseError as exc:
        return {**row, "error": str(exc), "seconds": time.perf_counter() - start}
    distances = corner_distances(rig.visible_to_thermal, true_homography(spec), spec.thermal_size)
    estimated = rig.quality["corner_error_px"]
    return {**row, "corner_error_px": float(distances.mean()), "corner_error_max_px": float(distances.max()),
            "estimated_corner_error_px": estimated,
            "estimate_over_truth": estimated / float(distances.mean()) if estimated else None,
            "confidence": rig.quality["confidence"], "fov_ratio_found": _fov_ratio(rig),
            "written": rig.quality["confidence"] >= MIN_CONFIDENCE, "seconds": time.perf_counter() - start}


def _fov_ratio(rig: Rig) -> float:
    """The visible/thermal field-of-view width ratio a rig's homography implies (its linear part)."""
    matrix = rig.visible_to_thermal / rig.visible_to_thermal[2, 2]
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    return scale * rig.visible_size[0] / rig.thermal_size[0]


def real_rig_rows(root: Path = ROADSCENE) -> list[dict]:
    """A row per REAL_RIGS entry; none without the data (said so)."""
    if not root.is_dir():
        print(f"skipped the rigs from real aligned pairs: no RoadScene folder at {root}")
        return []
    subsets = {subset: scene_subset(root, subset) for subset in dict.fromkeys(r[1] for r in REAL_RIGS)}
    return [real_rig_row(name, subset, spec, subsets[subset]) for name, subset, spec in REAL_RIGS]


def synthetic_row(case, seconds: float) -> dict:
    seed, fov, rot, offset_px, offset_s, thermal_fps = case
    config = FlightConfig(seed=seed, fov_ratio=fov, rotation_deg=rot, offset_px=offset_px, speed_px_s=150.0)
    visible, thermal, flight = synthetic_clips(
        config, seconds, thermal_fps=thermal_fps, time_offset_s=offset_s
    )
    start = time.perf_counter()
    row = {
        "seed": seed,
        "fov_ratio": fov,
        "rotation_deg": rot,
        "offset_px": list(offset_px),
        "time_offset_s": offset_s,
        "thermal_fps": thermal_fps,
    }
    try:
        rig = calibrate_footage(visible, thermal)
    except SkyfuseError as exc:
        return {**row, "error": str(exc)}
    row.update(
        {
            "corner_error_px": corner_error(
                rig.visible_to_thermal, flight.visible_to_thermal, rig.thermal_size
            ),
            "offset_error_frames": (rig.time_offset_s - offset_s) * visible.fps,
            "estimated_corner_error_px": rig.quality["corner_error_px"],
            "estimated_offset_uncertainty_s": rig.quality["time_offset_uncertainty_s"],
            "confidence": rig.quality["confidence"],
            "seconds": time.perf_counter() - start,
        }
    )
    return row


def _wisard_csvs(sequence: Path, folder: Path) -> dict[str, Path]:
    """Per stream, a frame list timed by the file numbers (so missing frames keep their time slot)."""
    lists = {}
    for stream, sub in (("visible", "visible"), ("thermal", "thermal")):
        path = folder / f"{sequence.name}_{stream}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "time_s"])
            for image in sorted((sequence / sub).iterdir()):
                writer.writerow([str(image), int(image.stem.rsplit("_", 1)[1]) / WISARD_FPS])
        lists[stream] = path
    return lists


def _alignment(visible: np.ndarray, thermal: np.ndarray, rig: Rig) -> tuple[float, float]:
    """(NCC of gradient magnitudes, mutual information) of thermal vs the visible frame warped by the rig."""
    size = (thermal.shape[1], thermal.shape[0])
    matrix = rig.homography_for(visible.shape, size)
    warped = warp_homography(to_float(visible), matrix, size)
    mask = warp_homography(np.ones(visible.shape[:2], np.uint8), matrix, size)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8))
    gray_t = to_gray(thermal)
    gray_v = cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY)
    return ncc(edge_strength(warped) ** 2, edge_strength(gray_t) ** 2, mask), mutual_information(
        gray_v, gray_t, mask
    )


def ngf_flow(visible: np.ndarray, thermal: np.ndarray, view: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The per-pair NGF registration (benchmarks.registration_floor.register: no learned part, no time
    limit) of the pre-warped thermal image onto the visible frame's luminance inside the thermal `view`,
    from the flow `start` (H, W, 2) px, at 1/NGF_SCALE of the visible resolution; the flow at full
    resolution."""
    h, w = thermal.shape
    size = (w // NGF_SCALE, h // NGF_SCALE)

    def small(image: np.ndarray) -> torch.Tensor:
        """A (1, 1, h, w) tensor of an image in [0, 1] at the registration's resolution."""
        return torch.from_numpy(cv2.resize(image, size, interpolation=cv2.INTER_AREA))[None, None]

    begin = torch.from_numpy(cv2.resize(start, size, interpolation=cv2.INTER_AREA) / NGF_SCALE)
    flow = register(small(to_gray(visible)), small(thermal.astype(np.float32) / 255),
                    begin.permute(2, 0, 1)[None].contiguous(), NGF_SPACING, NGF_STEPS,
                    region=(small(view.astype(np.float32) / 255) > 0.99).float())
    return cv2.resize(flow[0].permute(1, 2, 0).numpy(), (w, h), interpolation=cv2.INTER_LINEAR) * NGF_SCALE


def network_residual(frames: list[tuple[np.ndarray, np.ndarray]], rig: Rig, engine) -> dict:
    """Edge NCC (visible frame, inside the thermal view) of the rig pre-warp alone, after the network's
    flow, after the control flow, and after the per-pair NGF registration started at the rig and at the
    network's flow; the network's mean flow length; and the share of the NGF optimum's edge-NCC gain over
    the rig that the network reaches (the optimum: the better of the two NGF starts)."""
    scores = []
    for visible, thermal in frames:
        size = visible.shape[1::-1]
        to_visible = np.linalg.inv(rig.homography_for(visible.shape, thermal.shape[1::-1]))
        prewarped = warp_homography(ThermalAGC()(thermal), to_visible, size)  # a source's gray8 or gray16
        view = warp_homography(np.full(thermal.shape[:2], 255, np.uint8), to_visible, size)
        view = cv2.erode(view, np.ones((41, 41), np.uint8))  # away from the view's edge and its zeros
        flow = engine.fuse(visible[None], prewarped[None]).flow[0]
        control = np.ascontiguousarray(-flow[::-1, ::-1])
        flows = [np.zeros_like(flow), flow, control, ngf_flow(visible, prewarped, view, np.zeros_like(flow)),
                 ngf_flow(visible, prewarped, view, flow)]
        edges = edge_strength(to_gray(visible)) ** 2
        thermal_float = prewarped.astype(np.float32)
        scores.append([ncc(edges, edge_strength(warp(thermal_float, f)) ** 2, view) for f in flows]
                      + [float(np.linalg.norm(flow, axis=2)[view > 0].mean())])
    rig_only, network, control, ngf_from_rig, ngf_from_network, flow_px = np.array(scores).mean(axis=0)
    ngf_best = max(ngf_from_rig, ngf_from_network)
    return {
        "edge_ncc_rig": float(rig_only),
        "edge_ncc_network": float(network),
        "edge_ncc_control": float(control),
        "edge_ncc_ngf_from_rig": float(ngf_from_rig),
        "edge_ncc_ngf_from_network": float(ngf_from_network),
        "share_of_ngf_gain": float((network - rig_only) / (ngf_best - rig_only)),
        "frames_improved_by_network": int(sum(s[1] > s[0] for s in scores)),
        "frames_improved_by_control": int(sum(s[2] > s[0] for s in scores)),
        "frames": len(scores),
        "network_flow_px": float(flow_px),
    }


def wisard_row(sequence: Path, out: Path, fov_ratio: tuple[float, float] | None, engine) -> dict:
    """Calibrate one sequence. `fov_ratio`: the search range, when a longer sequence of the same rig
    has already fixed it (the ratio of the fields of view is a property of the cameras)."""
    lists = _wisard_csvs(sequence, out)
    visible = clip_from_source(str(lists["visible"]), "visible")
    thermal = clip_from_source(str(lists["thermal"]), "thermal")
    row = {
        "sequence": sequence.name,
        "visible_frames": len(visible.times),
        "thermal_frames": len(thermal.times),
    }
    geometry = FootageConfig(fov_ratio=fov_ratio) if fov_ratio else FootageConfig()
    row["fov_ratio_searched"] = list(geometry.fov_ratio)
    start = time.perf_counter()
    try:
        rig = calibrate_footage(visible, thermal, FootageCalibrationConfig(geometry=geometry))
    except SkyfuseError as exc:
        row["first_attempt_error"] = str(exc)
        try:
            rig = calibrate_footage(
                visible, thermal, FootageCalibrationConfig(time_offset_s=0.0, geometry=geometry)
            )
        except SkyfuseError as again:
            return {**row, "error": str(again)}
    row["seconds"] = time.perf_counter() - start
    rig.save(out / f"{sequence.name}_rig.json")
    pairs = pick_pairs(visible, thermal, rig.time_offset_s, 8)
    frames = list(zip(visible.load([v for v, _ in pairs]), thermal.load([t for _, t in pairs])))
    naive = Rig.identity(rig.visible_size, rig.thermal_size)
    before = np.array([_alignment(v, t, naive) for v, t in frames])
    after = np.array([_alignment(v, t, rig) for v, t in frames])
    picture = out / f"{sequence.name}_overlay.png"
    write_png(picture, before_after(*frames[len(frames) // 2], rig))
    row.update(network_residual(frames, rig, engine))
    row.update(
        {
            "edge_ncc_before": float(before[:, 0].mean()),
            "edge_ncc_after": float(after[:, 0].mean()),
            "mi_before": float(before[:, 1].mean()),
            "mi_after": float(after[:, 1].mean()),
            "time_offset_s": rig.time_offset_s,
            "time_offset_visible_frames": rig.quality["time_offset_visible_frames"],
            "time_offset_uncertainty_s": rig.quality["time_offset_uncertainty_s"],
            "estimated_corner_error_px": rig.quality["corner_error_px"],
            "confidence": rig.quality["confidence"],
            "fov_ratio": rig.quality.get("fov_ratio"),
            "overlay": str(picture),
        }
    )
    return row


def _print_real(rows: list[dict]) -> None:
    print(f"\nrigs from real aligned pairs (RoadScene, {REAL_PAIRS} stills each; min confidence "
          f"{MIN_CONFIDENCE})")
    print(f"{'rig':<13} {'subset':<6} {'thermal':>8} {'fov':>4} {'found':>6} | {'true mean':>9} {'max':>5} "
          f"{'estimated':>9} {'est/true':>8} {'conf':>5} {'rig file':>8} {'time s':>6}")
    for r in rows:
        size = "x".join(map(str, r["thermal_size"]))
        head = f"{r['rig']:<13} {r['subset']:<6} {size:>8} {r['fov_ratio']:>4}"
        if "error" in r:
            print(f"{head} {'':>6} | refused: {r['error']}")
            continue
        nan = float("nan")
        print(f"{head} {r['fov_ratio_found']:>6.3f} | {r['corner_error_px']:>9.2f} "
              f"{r['corner_error_max_px']:>5.2f} {r['estimated_corner_error_px'] or nan:>9.2f} "
              f"{r['estimate_over_truth'] or nan:>8.2f} {r['confidence']:>5.2f} "
              f"{'written' if r['written'] else 'refused':>8} {r['seconds']:>6.1f}")


def _print_tables(synthetic: list[dict], wisard: list[dict]) -> None:
    if synthetic:
        _print_synthetic(synthetic)
    if wisard:
        _print_wisard(wisard)


def _print_synthetic(synthetic: list[dict]) -> None:
    print("synthetic flights (thermal 640x512)")
    print(
        f"{'seed':>4} {'fov':>4} {'roll':>5} {'dt s':>6} {'th fps':>6} | {'corner px':>9} {'est px':>6} "
        f"{'dt err fr':>9} {'est unc s':>9} {'conf':>5} {'time s':>6}"
    )
    for r in synthetic:
        head = f"{r['seed']:>4} {r['fov_ratio']:>4} {r['rotation_deg']:>5} {r['time_offset_s']:>6} "
        head += f"{r['thermal_fps']:>6}"
        if "error" in r:
            print(f"{head} | refused: {r['error']}")
            continue
        print(
            f"{head} | {r['corner_error_px']:>9.3f} {r['estimated_corner_error_px'] or float('nan'):>6.3f} "
            f"{r['offset_error_frames']:>+9.2f} {r['estimated_offset_uncertainty_s'] or float('nan'):>9.4f} "
            f"{r['confidence']:>5.2f} {r['seconds']:>6.1f}"
        )


def _print_wisard(wisard: list[dict]) -> None:
    print("\nWiSARD (frames timed by file number at 30 fps)")
    print(f"{'sequence':<36} {'edge NCC':>15} {'MI':>13} {'offset fr':>9} {'± s':>6} {'conf':>5}")
    for r in wisard:
        if "error" in r:
            print(f"{r['sequence']:<36} refused: {r['error']}")
            continue
        print(
            f"{r['sequence']:<36} {r['edge_ncc_before']:>6.3f} -> {r['edge_ncc_after']:<5.3f} "
            f"{r['mi_before']:>5.3f} -> {r['mi_after']:<5.3f} {r['time_offset_visible_frames']:>+9.2f} "
            f"{r['time_offset_uncertainty_s'] or float('nan'):>6.3f} {r['confidence']:>5.2f}"
        )
        if "first_attempt_error" in r:
            print(f"    first attempt refused ({r['first_attempt_error']}); offset 0 used")
    print("\nWiSARD, skyfuse-rt after the rig pre-warp (edge NCC in the visible frame; NGF: per-pair "
          "registration from the rig / from the network's flow; share: of the NGF optimum's gain)")
    print(f"{'sequence':<36} {'rig':>6} {'network':>8} {'control':>8} {'NGF rig':>8} {'NGF net':>8} "
          f"{'share':>6} {'better':>7} {'flow px':>8}")
    for r in wisard:
        if "error" not in r:
            better = f"{r['frames_improved_by_network']}/{r['frames']}"
            print(f"{r['sequence']:<36} {r['edge_ncc_rig']:>6.3f} {r['edge_ncc_network']:>8.3f} "
                  f"{r['edge_ncc_control']:>8.3f} {r['edge_ncc_ngf_from_rig']:>8.3f} "
                  f"{r['edge_ncc_ngf_from_network']:>8.3f} {r['share_of_ngf_gain']:>6.0%} {better:>7} "
                  f"{r['network_flow_px']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--out", type=Path, default=Path("out/calibration"), help="overlay PNGs and rig files"
    )
    parser.add_argument("--quick", action="store_true", help="two synthetic cases, shorter clips")
    parser.add_argument("--seconds", type=float, default=8.0, help="synthetic clip length")
    parser.add_argument("--only", choices=("synthetic", "real", "wisard"), help="run one part only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    cases = CASES[:2] if args.quick else CASES
    run = {args.only} if args.only else {"synthetic", "real", "wisard"}
    seconds = 4.0 if args.quick else args.seconds
    synthetic = [synthetic_row(case, seconds) for case in cases] if "synthetic" in run else []
    real = real_rig_rows() if "real" in run else []
    wisard_on = "wisard" in run and WISARD.is_dir()
    sequences = sorted(p for p in WISARD.iterdir() if p.is_dir()) if wisard_on else []
    wisard, fov_ratio = [], None
    engine = create_engine("onnxruntime", model="skyfuse-rt", threads=2) if sequences else None
    for sequence in sorted(sequences, key=lambda p: -len(list((p / "thermal").iterdir()))):
        row = wisard_row(sequence, args.out, fov_ratio, engine)
        if fov_ratio is None and row.get("fov_ratio"):
            fov_ratio = (0.85 * row["fov_ratio"], 1.15 * row["fov_ratio"])
        wisard.append(row)
    _print_tables(synthetic, wisard)
    if real:
        _print_real(real)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"synthetic": synthetic, "real_rigs": real, "wisard": wisard, "machine": machine_line()}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
