"""Footage calibration on rigs with known truth made from aligned pairs (calibration.aligned_rig), the
error it says it has, and `skyfuse calibrate` refusing what the footage does not support."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from benchmarks.calibration import ROADSCENE, real_rig_row, scene_subset
from calibration.aligned_rig import RigSpec, render_pair, true_homography
from calibration.footage import corner_error
from core.errors import SkyfuseError
from core.rig import Rig
from pipeline.cli import main as skyfuse
from pipeline.synthetic import FlightConfig, SyntheticFlight

# A synthetic flight whose two cameras coincide: each frame pair is aligned, as RoadScene's are.
ALIGNED = FlightConfig(seed=0, visible_size=(480, 384), thermal_size=(480, 384), fov_ratio=1.0,
                       rotation_deg=0.0, offset_px=(0.0, 0.0), tilt_deg=0.0)
SPEC = RigSpec(1.8, 3.0, (0.04, -0.05), (320, 240), (160, 128))


def _stills(tmp_path, seed: int = 0, thermal_seed: int | None = None) -> list[str]:
    """Eight pairs over different ground seen through SPEC, written as two folders of stills; with
    `thermal_seed`, the thermal frames come from another flight (nothing in common)."""
    flight = SyntheticFlight(replace(ALIGNED, seed=seed))
    other = SyntheticFlight(replace(ALIGNED, seed=thermal_seed)) if thermal_seed is not None else flight
    for name in ("visible", "thermal"):
        (tmp_path / name).mkdir()
    for k, i in enumerate(range(0, 600, 75)):
        visible, thermal = render_pair(flight.visible_frame(i), other.thermal_frame(i), SPEC)
        cv2.imwrite(str(tmp_path / "visible" / f"{k:03d}.png"), visible)
        cv2.imwrite(str(tmp_path / "thermal" / f"{k:03d}.png"), thermal)
    return ["calibrate", "--visible", str(tmp_path / "visible"), "--thermal", str(tmp_path / "thermal"),
            "--time-offset", "0", "--output", str(tmp_path / "rig.json")]


def test_aligned_rig_maps_the_visible_frame_onto_the_thermal_one():
    flight = SyntheticFlight(ALIGNED)
    visible = flight.visible_frame(0)
    frame, thermal = render_pair(visible, cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY), SPEC)
    warped = cv2.warpPerspective(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), true_homography(SPEC),
                                 SPEC.thermal_size, flags=cv2.INTER_LINEAR)
    inner = (slice(4, -4), slice(4, -4))
    assert np.corrcoef(warped[inner].ravel(), thermal[inner].ravel())[0, 1] > 0.95
    with pytest.raises(SkyfuseError, match="leaves the visible frame"):
        render_pair(visible, visible, replace(SPEC, shift=(0.3, 0.0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibrate_stills_of_an_aligned_rig_and_says_how_far_off_it_is(tmp_path, capsys, seed):
    assert skyfuse(_stills(tmp_path, seed=seed)) == 0, capsys.readouterr().err
    rig = Rig.load(tmp_path / "rig.json")
    error = corner_error(rig.visible_to_thermal, true_homography(SPEC), SPEC.thermal_size)
    assert error <= 1.0  # thermal 160 px wide: 4 px at 640
    # Never optimistic; when the true error is a fraction of a pixel the estimate may exceed 1.5x of it (it
    # over-estimates by up to 0.4 px on seeds 0-5 of this rig), so its upper bound is absolute there.
    assert error / 1.5 <= rig.quality["corner_error_px"] <= max(1.5 * error, error + 0.5)
    assert rig.quality["confidence"] >= 0.3 and "confidence" in capsys.readouterr().out


def test_calibrate_refuses_pairs_with_nothing_in_common(tmp_path, capsys):
    assert skyfuse(_stills(tmp_path, seed=0, thermal_seed=5)) == 2
    err = capsys.readouterr().err
    assert "does not constrain the geometry" in err and "confidence" in err and "Traceback" not in err
    assert not (tmp_path / "rig.json").exists() and not (tmp_path / "rig.png").exists()


def test_calibrate_refuses_below_the_confidence_asked_for_unless_forced(tmp_path, capsys):
    args = [*_stills(tmp_path), "--min-confidence", "0.99"]
    assert skyfuse(args) == 2
    err = capsys.readouterr().err
    assert "confidence" in err and "below 0.99" in err and "--force" in err
    assert not (tmp_path / "rig.json").exists()
    assert skyfuse([*args, "--force"]) == 0
    assert "warning" in capsys.readouterr().err and Rig.load(tmp_path / "rig.json").method == "footage"


@pytest.mark.skipif(not ROADSCENE.is_dir(), reason="needs ../shared/data/roadscene")
def test_rig_from_real_day_pairs_within_two_pixels_and_estimate_honest():
    row = real_rig_row("day", "day", RigSpec(), scene_subset(ROADSCENE, "day"))
    assert row["corner_error_px"] <= 2.0
    assert 1 / 1.5 <= row["estimate_over_truth"] <= 1.5 and row["written"]
