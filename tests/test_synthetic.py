import hashlib
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from pipeline.synthetic import FlightConfig, SyntheticFlight

# small frames keep the ground map (and the test) small
SMALL = FlightConfig(seed=4, visible_size=(320, 180), thermal_size=(160, 128))


@pytest.fixture(scope="module")
def flight() -> SyntheticFlight:
    return SyntheticFlight(SMALL)


def test_frames_have_the_configured_shapes_and_types(flight):
    visible, thermal = flight.visible_frame(0), flight.thermal_frame(0)
    assert visible.shape == (180, 320, 3) and visible.dtype == np.uint8
    assert thermal.shape == (128, 160) and thermal.dtype == np.uint8
    assert visible.std() > 5 and thermal.std() > 3  # a scene, not a flat image


def test_same_seed_gives_same_frames_in_any_order(flight):
    other = SyntheticFlight(SMALL)
    late_first = [other.visible_frame(i) for i in (17, 3, 0)]
    for image, i in zip(late_first, (17, 3, 0)):
        assert np.array_equal(image, flight.visible_frame(i))
    assert np.array_equal(other.thermal_frame(9), flight.thermal_frame(9))


def test_another_process_renders_the_same_frames(flight):
    code = ("import hashlib; from pipeline.synthetic import FlightConfig, SyntheticFlight; "
            f"f = SyntheticFlight({SMALL!r}); "
            "print(hashlib.sha1(f.visible_frame(6).tobytes() + f.thermal_frame(6).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    here = hashlib.sha1(flight.visible_frame(6).tobytes() + flight.thermal_frame(6).tobytes()).hexdigest()
    assert out.stdout.strip() == here


def test_different_seed_gives_a_different_scene(flight):
    other = SyntheticFlight(replace(SMALL, seed=5))
    assert np.abs(other.visible_frame(0).astype(int) - flight.visible_frame(0)).mean() > 10


def test_consecutive_frames_move_a_few_pixels(flight):
    a, b = (cv2.cvtColor(flight.visible_frame(i), cv2.COLOR_BGR2GRAY).astype(np.float32) for i in (10, 11))
    (dx, dy), _ = cv2.phaseCorrelate(a, b)
    assert 0.5 < math.hypot(dx, dy) < 6


def _edges(image: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    gray = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.5)
    return cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))


def _edge_agreement(visible: np.ndarray, thermal: np.ndarray, homography: np.ndarray) -> float:
    warped = cv2.warpPerspective(_edges(visible), homography, thermal.shape[::-1])
    return float(np.corrcoef(warped.ravel(), _edges(thermal).ravel())[0, 1])


def test_visible_to_thermal_lines_up_the_edges_of_both_cameras(flight):
    h = flight.visible_to_thermal
    moves = [(3, 0), (-3, 0), (0, 3), (0, -3)]
    shifts = [np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]]) @ h for dx, dy in moves]
    for i in (0, 40):
        visible, thermal = flight.visible_frame(i), flight.thermal_frame(i)
        true = _edge_agreement(visible, thermal, h)
        assert true > 0.2
        assert all(true > _edge_agreement(visible, thermal, wrong) + 0.05 for wrong in shifts)


def _contrast(image: np.ndarray, points: np.ndarray) -> float:
    """Median over points of |pixel - median of its 15×15 neighbourhood|."""
    h, w = image.shape
    values = []
    for x, y in np.round(points).astype(int):
        if 7 <= x < w - 7 and 7 <= y < h - 7:
            values.append(abs(image[y, x] - np.median(image[y - 7:y + 8, x - 7:x + 8])))
    assert len(values) >= 3, "too few people in view to judge"
    return float(np.median(values))


def test_people_are_hot_where_the_mapping_puts_them_and_hard_to_see_in_visible():
    flight = SyntheticFlight(replace(SMALL, people=300, vehicles=0, time_offset_s=0.4))
    t = flight.thermal_time(3) + 0.4
    to_visible = flight.world_to_visible(t)
    people = flight.movers_at(t)[None]
    thermal_points = cv2.perspectiveTransform(people, flight.visible_to_thermal @ to_visible)[0]
    visible_points = cv2.perspectiveTransform(people, to_visible)[0]
    thermal = flight.thermal_frame(3).astype(float)
    # thermal frame 3 (30 fps) with the 0.4 s offset shows t = 0.5 s, the instant of visible frame 15
    visible = cv2.cvtColor(flight.visible_frame(15), cv2.COLOR_BGR2GRAY).astype(float)
    # people are 12+ K above the ground: tens of levels at 6.4 levels per kelvin (8-bit, 5..45 °C)
    assert _contrast(thermal, thermal_points) > 40
    assert _contrast(visible, visible_points) < 20


def test_timestamps_follow_each_camera_rate():
    flight = SyntheticFlight(replace(SMALL, visible_fps=30.0, thermal_fps=9.0))
    assert flight.visible_time(30) == pytest.approx(1.0)
    assert flight.thermal_time(9) == pytest.approx(1.0)
    assert flight.thermal_time(4) == pytest.approx(4 / 9)


def test_thermal_time_offset_shows_a_later_instant():
    late = SyntheticFlight(replace(SMALL, thermal_fps=10.0, time_offset_s=0.5))
    plain = SyntheticFlight(replace(SMALL, thermal_fps=10.0))
    same_instant = np.abs(late.thermal_frame(0).astype(int) - plain.thermal_frame(5)).mean()
    other_instant = np.abs(late.thermal_frame(0).astype(int) - plain.thermal_frame(0)).mean()
    assert same_instant < 2 < other_instant
    assert late.rig().time_offset_s == 0.5


@pytest.mark.parametrize("fov_ratio,rotation,offset", [(2.0, 0.0, (0.0, 0.0)), (3.0, 5.0, (20.0, -10.0)),
                                                        (1.5, -3.0, (-7.0, 4.0))])
def test_homography_reflects_fov_ratio_rotation_and_offset(fov_ratio, rotation, offset):
    cfg = replace(SMALL, fov_ratio=fov_ratio, rotation_deg=rotation, offset_px=offset, tilt_deg=0.0)
    h = SyntheticFlight(cfg).visible_to_thermal
    centre = cv2.perspectiveTransform(np.array([[[160.0, 90.0]]]), h)[0, 0]
    assert centre == pytest.approx([80 - offset[0], 64 - offset[1]], abs=1e-6)
    assert math.hypot(h[0, 0], h[1, 0]) == pytest.approx(fov_ratio * 160 / 320)
    assert math.degrees(math.atan2(h[1, 0], h[0, 0])) == pytest.approx(rotation)
    assert np.allclose(h[2, :2], 0)


def test_tilt_makes_the_mapping_projective():
    h = SyntheticFlight(replace(SMALL, tilt_deg=3.0)).visible_to_thermal
    assert abs(h[2, 1]) > 1e-5


def test_rig_carries_the_truth(flight):
    rig = flight.rig()
    assert rig.method == "synthetic-truth"
    assert np.allclose(rig.visible_to_thermal, flight.visible_to_thermal)
    assert rig.visible_size == (320, 180) and rig.thermal_size == (160, 128)


def test_16_bit_thermal_is_centikelvin_of_an_outdoor_scene():
    thermal = SyntheticFlight(replace(SMALL, thermal_bits=16)).thermal_frame(2)
    assert thermal.dtype == np.uint16
    low, high = np.percentile(thermal, [1, 99])
    assert 273_15 + 0 < low < high < 273_15 + 5000  # between 0 °C and 50 °C
    assert high - low > 255  # more levels than 8 bits hold: AGC needed


def test_thermal_targets_label_the_warm_people_and_vehicles_in_view():
    night = SyntheticFlight(replace(SMALL, thermal_bits=16, time_of_day="night", people=60, vehicles=12))
    index = next(i for i in range(0, 900, 10) if len(np.unique(night.thermal_targets(i))) > 2)
    labels, frame = night.thermal_targets(index), night.thermal_frame(index).astype(float) / 100 - 273.15
    assert labels.shape == frame.shape and labels.dtype == np.int32
    numbers = np.unique(labels[labels > 0])
    assert numbers.max() <= 72 and labels.sum() > 0
    for number in numbers:  # every labelled mover is warmer than the night ground around it
        assert frame[labels == number].mean() > 24
    assert frame[labels == 0].max() < 20 and np.percentile(frame[labels == 0], 50) < 12


def test_by_day_sunlit_asphalt_and_roofs_are_as_hot_as_people():
    day = SyntheticFlight(replace(SMALL, thermal_bits=16, thermal_size=(320, 256)))
    frames = [day.thermal_frame(i).astype(float) / 100 - 273.15 for i in range(0, 900, 90)]
    ground = np.concatenate([f[day.thermal_targets(i * 90) == 0] for i, f in enumerate(frames)])
    assert np.percentile(ground, 99.5) > 31  # the ground's hottest half percent: a person's temperature


@pytest.mark.parametrize("change,message", [({"thermal_bits": 12}, "thermal_bits"),
                                            ({"visible_fps": 0.0}, "visible_fps"),
                                            ({"thermal_size": (8, 8)}, "thermal_size"),
                                            ({"people": -1}, "negative"),
                                            ({"time_of_day": "dusk"}, "time_of_day")])
def test_bad_configuration_is_a_clear_error(change, message):
    with pytest.raises(SkyfuseError, match=message):
        SyntheticFlight(replace(SMALL, **change))


def _ground_motion(flight: SyntheticFlight, index: int) -> float:
    """Pixels the ground under the visible image centre moves between frames index and index + 1."""
    centre = np.array([SMALL.visible_size[0] / 2, SMALL.visible_size[1] / 2, 1.0])
    ground = np.linalg.solve(flight.world_to_visible(flight.visible_time(index)), centre)
    moved = flight.world_to_visible(flight.visible_time(index + 1)) @ ground
    return float(np.hypot(*(moved - centre)[:2]))


def test_speed_variation_makes_the_drone_speed_up_and_brake(flight):
    varied = SyntheticFlight(replace(SMALL, speed_variation=0.6))
    steady = [_ground_motion(flight, i) for i in range(0, 300, 10)]
    swinging = [_ground_motion(varied, i) for i in range(0, 300, 10)]
    assert max(steady) / min(steady) < 2  # only the loop's shape changes the speed
    assert max(swinging) / min(swinging) > 3
    assert 0.7 < np.mean(swinging) / np.mean(steady) < 1.3  # same average speed
    again = SyntheticFlight(replace(SMALL, speed_variation=0.6))
    assert np.array_equal(again.visible_frame(40), varied.visible_frame(40))
    assert np.array_equal(again.thermal_frame(40), varied.thermal_frame(40))
    assert not np.array_equal(varied.visible_frame(40), flight.visible_frame(40))


@pytest.mark.parametrize("variation", [-0.1, 0.95])
def test_speed_variation_outside_its_range_is_refused(variation):
    with pytest.raises(SkyfuseError, match="speed_variation"):
        SyntheticFlight(replace(SMALL, speed_variation=variation))
