"""Rig calibration: geometry from footage and from a target, the time offset, the CLI and its refusals."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from calibration.clips import clip_from_render
from calibration.features import to_float, to_gray
from calibration.footage import FootageConfig, corner_error, estimate_geometry
from calibration.solve import calibrate_footage, pick_pairs
from calibration.synthetic_clips import synthetic_clips
from calibration.target import TargetConfig, estimate_target
from calibration.temporal import estimate_offset
from core.errors import SkyfuseError
from core.rig import Rig
from pipeline.cli import main as skyfuse
from pipeline.synthetic import FlightConfig, SyntheticFlight

THERMAL = (640, 512)


def _pairs(flight: SyntheticFlight, frames=range(0, 600, 100)):
    """Simultaneous frame pairs spread over 20 s of flight (different ground in each)."""
    return [(to_float(flight.visible_frame(i)), to_gray(flight.thermal_frame(i))) for i in frames]


@pytest.mark.parametrize("seed, fov_ratio, rotation_deg, offset_px", [(1, 1.5, -5.0, (-30.0, 20.0))])
def test_footage_homography_within_a_pixel(seed, fov_ratio, rotation_deg, offset_px):
    flight = SyntheticFlight(
        FlightConfig(seed=seed, fov_ratio=fov_ratio, rotation_deg=rotation_deg, offset_px=offset_px)
    )
    estimate = estimate_geometry(_pairs(flight))
    assert corner_error(estimate.visible_to_thermal, flight.visible_to_thermal, THERMAL) <= 1.0
    assert estimate.score_after > estimate.score_before + 0.2
    assert 0 < estimate.confidence <= 1


def test_footage_refuses_blank_and_unrelated_footage():
    flight = SyntheticFlight(FlightConfig(seed=4))
    pairs = _pairs(flight, range(0, 300, 150))
    blank = [(v, np.zeros_like(t)) for v, t in pairs]
    two_pairs = FootageConfig(min_pairs=2)  # enough to refuse, and quicker
    with pytest.raises(SkyfuseError, match="thermal frames are blank"):
        estimate_geometry(blank, two_pairs)
    # thermal frames of another flight: no placement of one view in the other fits all pairs
    other = SyntheticFlight(FlightConfig(seed=5))
    unrelated = [(v, to_gray(other.thermal_frame(i))) for (v, _), i in zip(pairs, (400, 800))]
    with pytest.raises(SkyfuseError, match="does not constrain the geometry"):
        estimate_geometry(unrelated, two_pairs)
    with pytest.raises(SkyfuseError, match="at least 3 frame pairs"):
        estimate_geometry(pairs)
    with pytest.raises(SkyfuseError, match="unknown geometric model"):
        estimate_geometry(pairs, FootageConfig(model="spline"))


@pytest.mark.parametrize("seed, thermal_fps, offset_s", [(2, 15.0, -0.07), (4, 9.0, 0.05)])
def test_time_offset_within_a_frame(seed, thermal_fps, offset_s):
    flight = FlightConfig(seed=seed, visible_size=(640, 360), thermal_size=(320, 256), speed_px_s=150.0)
    visible, thermal, _ = synthetic_clips(flight, 4.0, thermal_fps=thermal_fps, time_offset_s=offset_s)
    estimate = estimate_offset(visible.times, visible.track, thermal.times, thermal.track)
    assert abs(estimate.time_offset_s - offset_s) <= 1 / 30
    assert 0 < estimate.uncertainty_s < 0.1


def test_footage_calibration_end_to_end():
    """Offset from motion, pairs picked and motion-compensated by it, geometry, offset refined by the
    geometry: a small flight (thermal 320×256, so 0.5 px here is 1 px at 640×512)."""
    config = FlightConfig(seed=3, visible_size=(640, 360), thermal_size=(320, 256), fov_ratio=2.0,
                          rotation_deg=-3.0, offset_px=(-10.0, 5.0), speed_px_s=150.0)
    visible, thermal, flight = synthetic_clips(config, 4.0, thermal_fps=15.0, time_offset_s=0.1)
    rig = calibrate_footage(visible, thermal)
    assert corner_error(rig.visible_to_thermal, flight.visible_to_thermal, (320, 256)) <= 0.5
    assert abs(rig.time_offset_s - 0.1) <= 1 / 30
    assert rig.method == "footage" and rig.visible_size == (640, 360) and rig.thermal_size == (320, 256)
    assert rig.quality["time_offset_uncertainty_s"] > 0 and rig.quality["confidence"] > 0


def test_time_offset_refuses_single_frames_and_unrelated_motion():
    with pytest.raises(SkyfuseError, match="at least 4 frames"):
        estimate_offset(np.array([0.0]), np.zeros((1, 2)), np.arange(10) / 9, np.zeros((10, 2)))
    rng = np.random.default_rng(0)
    times = np.arange(60) / 30
    with pytest.raises(SkyfuseError, match="does not match"):
        estimate_offset(
            times, np.cumsum(rng.normal(size=(60, 2)), 0), times, np.cumsum(rng.normal(size=(60, 2)), 0)
        )


def test_pairs_need_overlapping_times():
    frames = [np.zeros((8, 8), np.uint8)] * 5
    visible = clip_from_render("visible", np.arange(5) / 30, lambda i: frames[i])
    thermal = clip_from_render("thermal", 100 + np.arange(5) / 30, lambda i: frames[i])
    with pytest.raises(SkyfuseError, match="do not overlap in time"):
        pick_pairs(visible, thermal, 0.0, 4)
    pairs = pick_pairs(visible, thermal, -100.0, 2)  # one pair from each half, same instants
    assert len(pairs) == 2 and all(v == t for v, t in pairs) and pairs[0][1] < 3 <= pairs[1][1]


def _board(size, board_to_image, inverted, blur, rng, pattern="checkerboard"):
    """A target drawn through a homography: a 10×7-square checkerboard (9×6 inner corners) or a 9×6
    grid of dark circles, 40 board units apart, on a white margin."""
    if pattern == "checkerboard":
        squares = np.indices((7, 10)).sum(axis=0) % 2
        canvas = np.kron(squares, np.ones((40, 40))).astype(np.float32)
    else:
        canvas = np.ones((280, 400), np.float32)
        for row in range(6):
            for col in range(9):
                cv2.circle(canvas, (40 + 40 * col, 40 + 40 * row), 12, 0.0, -1, cv2.LINE_AA)
    canvas = cv2.copyMakeBorder(canvas, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=1.0)
    shift = np.array([[1, 0, -40], [0, 1, -40], [0, 0, 1.0]])
    image = cv2.warpPerspective(canvas, board_to_image @ shift, size, borderValue=0.5)
    image = 1 - image if inverted else image
    image = cv2.GaussianBlur(image, (0, 0), blur) + rng.normal(0, 0.02, image.shape)
    return np.clip(image * 200 + 30, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pattern", ["checkerboard", "circles"])
def test_target_finds_inverted_board_and_reports_reprojection(pattern):
    rng = np.random.default_rng(1)
    truth = Rig.identity((960, 540), (480, 384)).visible_to_thermal
    angle = np.radians(3.0)
    truth = (
        np.array([[np.cos(angle), -np.sin(angle), 30], [np.sin(angle), np.cos(angle), -10], [0, 0, 1]])
        @ truth
    )
    pairs = []
    for k in range(3):
        board = np.array([[0.9, 0.05 * k, 200 + 60 * k], [-0.04, 0.9, 120 + 20 * k], [1e-5 * k, 0, 1]])
        visible = cv2.cvtColor(_board((960, 540), board, False, 0.8, rng, pattern), cv2.COLOR_GRAY2BGR)
        pairs.append((visible, _board((480, 384), truth @ board, True, 1.5, rng, pattern)))
    estimate = estimate_target(pairs, TargetConfig(pattern, (9, 6)))
    assert estimate.pairs_used == 3
    assert corner_error(estimate.visible_to_thermal, truth, (480, 384)) <= 1.0
    assert estimate.reprojection_rms_px < 0.5
    with pytest.raises(SkyfuseError, match="was not found in both views"):
        estimate_target([(v, np.full_like(t, 128)) for v, t in pairs], TargetConfig(pattern, (9, 6)))


def test_cli_target_writes_rig_and_overlay(tmp_path, capsys):
    rng = np.random.default_rng(2)
    truth = np.array([[0.5, 0.0, 20.0], [0.0, 0.5, -30.0], [0.0, 0.0, 1.0]])
    for name in ("visible", "thermal"):
        (tmp_path / name).mkdir()
    for k in range(4):
        board = np.array([[0.8, 0.0, 250 + 30 * k], [0.0, 0.8, 150 + 10 * k], [0, 0, 1.0]])
        cv2.imwrite(str(tmp_path / "visible" / f"{k:03d}.png"), _board((960, 720), board, False, 0.8, rng))
        cv2.imwrite(
            str(tmp_path / "thermal" / f"{k:03d}.png"), _board((480, 384), truth @ board, True, 1.2, rng)
        )
    output = tmp_path / "rig.json"
    code = skyfuse(
        [
            "calibrate",
            "--visible",
            str(tmp_path / "visible"),
            "--thermal",
            str(tmp_path / "thermal"),
            "--output",
            str(output),
            "--method",
            "target",
            "--time-offset",
            "0",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rig = Rig.load(output)
    assert rig.method == "target" and rig.visible_size == (960, 720) and rig.thermal_size == (480, 384)
    assert corner_error(rig.visible_to_thermal, truth, (480, 384)) <= 1.0
    quality = json.loads(output.read_text())["quality"]
    assert {"reprojection_rms_px", "corner_error_px", "time_offset_uncertainty_s"} <= quality.keys()
    picture = cv2.imread(str(tmp_path / "rig.png"))
    assert picture is not None and picture.shape[0] == 384 and picture.shape[1] > 2 * 480
    assert "reprojection RMS" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    (tmp_path / "blank").mkdir()
    for k in range(5):
        cv2.imwrite(str(tmp_path / "blank" / f"{k}.png"), np.zeros((64, 80), np.uint8))
    (tmp_path / "one").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, (64, 80), np.uint8)
    cv2.imwrite(str(tmp_path / "one" / "0.png"), noise)
    blank, one = str(tmp_path / "blank"), str(tmp_path / "one")
    cases = [
        (["--visible", str(tmp_path / "missing"), "--thermal", blank], "not found"),
        (["--visible", blank, "--thermal", blank], "does not"),
        (["--visible", blank, "--thermal", blank, "--time-offset", "0"], "blank"),
        (["--visible", blank, "--thermal", blank, "--fov-ratio", "3:2"], "fov-ratio"),
        (["--visible", one, "--thermal", one], "at least 4 frames"),
        (["--visible", one, "--thermal", one, "--time-offset", "0"], "at least 3 frame pairs"),
    ]
    for args, message in cases:
        code = skyfuse(["calibrate", *args, "--output", str(tmp_path / "rig.json")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "rig.json").exists()
