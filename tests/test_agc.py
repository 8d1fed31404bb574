from dataclasses import replace

import cv2
import numpy as np
import pytest
from test_end_to_end import SMALL, skyfuse, stats_of
from test_synthetic import SMALL as SMALL_FLIGHT

from core.errors import SkyfuseError
from pipeline.agc import AGCConfig, ThermalAGC, parse_agc_options
from pipeline.synthetic import SyntheticFlight


def _scene(low: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (128, 160)).astype(np.uint16)


def test_uint8_frames_pass_through_unchanged():
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert ThermalAGC()(frame) is frame


def test_percentiles_stretch_to_the_full_8_bit_range():
    frame = _scene(29000, 31000)
    out = ThermalAGC(AGCConfig(mode="linear", high_tail_pct=1.0, smoothing=0.0, stride=1))(frame)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    lo, hi = np.percentile(frame, [1, 99])
    assert np.all(out[frame <= lo] == 0) and np.all(out[frame >= hi] == 255)
    middle = (frame > lo + 50) & (frame < hi - 50)
    expected = np.round((frame[middle].astype(float) - lo) * 255 / (hi - lo))
    assert np.abs(out[middle] - expected).max() <= 1
    order = np.argsort(frame.ravel())
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # monotonic


def test_smoothing_keeps_a_static_scene_steady_when_the_range_jumps():
    steady, hot = _scene(29000, 30000), _scene(29000, 30000, seed=1)
    hot[:40] = 33000  # a large hot object enters
    probe = steady[40:] < 29500
    changes = {}
    for smoothing in (0.0, 0.9):
        agc = ThermalAGC(AGCConfig(mode="linear", smoothing=smoothing))
        before = agc(steady)[40:][probe].mean()
        hot[40:] = steady[40:]
        changes[smoothing] = abs(agc(hot)[40:][probe].mean() - before)
    assert changes[0.9] < 0.4 * changes[0.0]
    assert changes[0.0] > 30


@pytest.mark.parametrize("mode", ["linear", "dde"])
def test_uniform_scene_is_not_amplified_into_noise(mode):
    flat = _scene(30000, 30010)
    config = AGCConfig(mode=mode, min_span=200)
    out = ThermalAGC(config)(flat)
    middle = 127.5 if mode == "linear" else config.base_levels / 2  # (dde: the base's half of its levels)
    assert out.std() < 10 and abs(out.mean() - middle) < 30


def test_reset_forgets_the_previous_range():
    agc = ThermalAGC()
    agc(_scene(20000, 21000))
    agc.reset()
    out = agc(_scene(40000, 41000))
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("frame", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint16)])
def test_other_arrays_are_rejected(frame):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ThermalAGC()(frame)


@pytest.mark.parametrize("config", [AGCConfig(low_tail_pct=60, high_tail_pct=40), AGCConfig(smoothing=1.0),
                                    AGCConfig(min_span=0), AGCConfig(mode="fancy"),
                                    AGCConfig(roi=(0.5, 0, 0.2, 1)), AGCConfig(plateau=0.5),
                                    AGCConfig(detail_gain=-1), AGCConfig(base_levels=0),
                                    AGCConfig(detail_radius=0), AGCConfig(detail_radius=2.5)])
def test_bad_configuration_is_rejected(config):
    with pytest.raises(SkyfuseError):
        ThermalAGC(config)


def _ground_with_a_hot_target(hot_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground at 10..20 °C (centikelvin), its hottest 2 % at 25 °C (sunlit asphalt), and a square target at
    35 °C covering `hot_fraction` of the frame; returns the frame and the target's mask."""
    frame = _scene(28315, 29315)
    frame[:, :3] = 29815  # 480 of 20 480 px: about 2 % of hot background
    side = round((hot_fraction * frame.size) ** 0.5)
    target = np.zeros(frame.shape, bool)
    target[60:60 + side, 80:80 + side] = True
    frame[target] = 30815
    return frame, target


def test_the_hot_tail_clips_only_what_it_says_so_a_small_target_stays_above_the_hot_background():
    frame, target = _ground_with_a_hot_target(0.003)  # a car: 0.3 % of the frame
    asphalt = np.zeros(frame.shape, bool)
    asphalt[:, :3] = True
    old = ThermalAGC(AGCConfig(mode="linear", high_tail_pct=1.0, stride=1))(frame)
    new = ThermalAGC(AGCConfig(mode="linear", high_tail_pct=0.2, stride=1))(frame)
    # 1-99: the target is clipped to the same white as the background's hottest pixels
    assert old[target].min() == 255 and old[asphalt].mean() > 250
    # 0.2 %: the tail is smaller than the target, so the target sets white and the asphalt stays below
    assert new[target].min() == 255 and new[asphalt].max() < 200
    ground = ~target & ~asphalt
    assert new[target].mean() - new[ground].mean() > old[target].mean() - old[ground].mean()


def _sunny_ground(sky: bool = False, person: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 320×256 centikelvin view of a sunny afternoon: textured ground at 24 ± 3 °C, dark roofs at 43 °C
    (6 % of the frame), a sunlit road at 36 °C, sensor noise 0.15 K, and a person at 32 °C covering 32 px
    (0.04 %) on open ground; `sky` makes the top third a -40 °C clear sky. (frame, the person's mask)."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.normal(0, 1, (256, 320)).astype(np.float32), (0, 0), 6)
    temp = 24 + 3 * texture / texture.std()
    temp[:, :20] = 43.0
    temp[100:104] = np.maximum(temp[100:104], 36.0)
    if sky:
        temp[:85] = -40.0
    mask = np.zeros(temp.shape, bool)
    mask[150:158, 200:204] = True
    if person:
        temp[mask] = 32.0
    counts = (temp + 273.15) * 100 + rng.normal(0, 15, temp.shape)
    return np.clip(counts, 0, 65535).astype(np.uint16), mask


@pytest.mark.parametrize("sky", [False, True], ids=["hot roofs", "hot roofs and a cold sky"])
def test_by_default_a_small_warm_target_keeps_twice_the_contrast_of_the_1_99_mapping(sky):
    """The issue's target, on a view whose hot clutter (and sky) takes the 1-99 mapping's gray levels: the
    person's contrast against the ground 2-8 px around it at least doubles, its contrast-to-noise ratio
    (against that ground's spread) does not drop, and the person hardly darkens that ground (halo)."""
    frame, person = _sunny_ground(sky)
    bare, _ = _sunny_ground(sky, person=False)
    grown = [cv2.dilate(person.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
             for r in (2, 8)]
    ring = grown[1] & ~grown[0]
    measured = {}
    for name, config in (("old", AGCConfig(mode="linear", high_tail_pct=1.0)), ("default", AGCConfig())):
        out = ThermalAGC(config)(frame).astype(float)
        contrast = out[person].mean() - out[ring].mean()
        halo = out[ring].mean() - ThermalAGC(config)(bare)[ring].mean()
        measured[name] = contrast, contrast / out[ring].std(), halo
    (old, old_cnr, _), (new, new_cnr, halo) = measured["old"], measured["default"]
    assert new >= 2 * old, measured
    assert new_cnr >= old_cnr and abs(halo) < 10, measured


def test_plateau_mode_is_monotonic_bounded_and_gives_a_crowded_range_more_levels():
    rng = np.random.default_rng(3)
    frame = np.clip(rng.normal(29000, 60, (128, 160)), 0, 65535).astype(np.uint16)  # a narrow crowd
    frame[:, :16] = rng.integers(29500, 33000, (128, 16))  # a sparse hot tenth
    linear = ThermalAGC(AGCConfig(mode="linear", smoothing=0.0, stride=1))(frame)
    plateau = ThermalAGC(AGCConfig(mode="plateau", smoothing=0.0, stride=1))(frame)
    assert plateau.dtype == np.uint8 and plateau.min() == 0 and plateau.max() == 255
    order = np.argsort(frame.ravel(), kind="stable")
    assert np.all(np.diff(plateau.ravel()[order].astype(int)) >= 0)
    crowd = frame[:, 16:]
    assert np.ptp(plateau[:, 16:][crowd < 29100]) > 2 * np.ptp(linear[:, 16:][crowd < 29100])


@pytest.mark.parametrize("mode", ["linear", "plateau"])
def test_the_region_of_interest_keeps_a_sky_out_of_the_mapping(mode):
    ground = _scene(28315, 29315)
    config = AGCConfig(mode=mode, roi=(0.0, 1 / 3, 1.0, 1.0), smoothing=0.0)
    reference = ThermalAGC(config)(ground)[50:]
    for sky in (23315, 35315):  # -40 °C clear sky, 60 °C sunlit cloud
        frame = ground.copy()
        frame[:42] = sky  # the top third (the region of interest starts at row 42)
        with_roi = ThermalAGC(config)(frame)
        without = ThermalAGC(replace(config, roi=(0.0, 0.0, 1.0, 1.0)))(frame)
        assert np.abs(with_roi[50:].astype(int) - reference).max() <= 1
        assert np.abs(without[50:].astype(int) - reference).mean() > 30  # the sky would take the levels
        assert with_roi[:42].min() in (0, 255) and with_roi[:42].min() == with_roi[:42].max()


@pytest.mark.parametrize("mode", ["dde", "linear", "plateau"])
@pytest.mark.parametrize("time_of_day", ["day", "night"])
def test_a_static_view_does_not_flicker_while_people_and_cars_move(mode, time_of_day):
    flight = SyntheticFlight(replace(SMALL_FLIGHT, thermal_bits=16, time_of_day=time_of_day,
                                     speed_px_s=0.0, people=30, vehicles=6))
    agc = ThermalAGC(AGCConfig(mode=mode))
    means = [agc(flight.thermal_frame(i)).mean() for i in range(40)]
    assert np.abs(np.diff(means)).mean() < 1.0


def test_options_read_from_text_and_yaml_alike():
    text = parse_agc_options("mode=plateau,roi=0,0.33,1,1,high_tail_pct=0.1,stride=2")
    assert text == AGCConfig(mode="plateau", roi=(0, 0.33, 1, 1), high_tail_pct=0.1, stride=2)
    assert parse_agc_options({"mode": "plateau", "roi": [0, 0.33, 1, 1], "high_tail_pct": 0.1,
                              "stride": 2}) == text
    assert parse_agc_options(text.to_options()) == text and parse_agc_options("") == AGCConfig()
    dde = parse_agc_options("detail_gain=1.5,base_levels=100,detail_radius=20")
    assert dde == AGCConfig(mode="dde", detail_gain=1.5, base_levels=100, detail_radius=20)
    assert parse_agc_options(dde.to_options()) == dde


@pytest.mark.parametrize("options, message", [
    ("mode=fancy", "AGC mode must be one of dde, linear, plateau, got 'fancy'"),
    ("detail_gain=-2", "AGC detail_gain must be 0..64"),
    ("detail_radius=3.5", "AGC option detail_radius='3.5' is not a valid value (int)"),
    ("roi=0,0.5,1", "AGC roi must be x0,y0,x1,y1"),
    ("high_tail_pct=-1", "AGC tails must be >= 0 %"),
    ("high_tail_pct=lots", "AGC option high_tail_pct='lots' is not a valid value (float)"),
    ("gain=2", "unknown AGC option 'gain'"),
    ("plateau", "--agc: expected KEY=VALUE, got 'plateau'"),
])
def test_bad_agc_options_give_one_clear_line_through_skyfuse_run(tmp_path, options, message):
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal",
                     f"synthetic:{SMALL},thermal_bits=16", "--output", str(tmp_path / "out.mp4"),
                     "--agc", options, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skyfuse run: error:"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out.mp4").exists()


def test_a_run_fuses_16_bit_thermal_with_the_agc_options_from_its_yaml(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("agc: {mode: plateau, roi: [0, 0.33, 1, 1]}\n")
    output = tmp_path / "fused.mp4"
    result = skyfuse("run", "--config", str(config), "--visible", f"synthetic:{SMALL}", "--thermal",
                     f"synthetic:{SMALL},thermal_bits=16", "--frames", "15", "--mode", "lossless",
                     "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "AGC mode=plateau,roi=0.0,0.33,1.0,1.0" in result.stderr
    assert stats_of(output)["frames_recorded"] == 15


def test_fuse_pair_takes_the_agc_options_and_refuses_a_bad_one_in_one_line(tmp_path):
    frame, _ = _sunny_ground()
    cv2.imwrite(str(tmp_path / "t.png"), frame)
    cv2.imwrite(str(tmp_path / "v.png"), np.full((256, 320, 3), 128, np.uint8))
    pair = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--engine", "blend"]
    shown = {}
    for options in ("", "mode=linear,high_tail_pct=1"):
        registered = tmp_path / f"r{len(shown)}.png"
        result = skyfuse("fuse-pair", *pair, "--output", str(tmp_path / "f.png"), "--agc", options,
                         "--save-registered", str(registered), timeout=60)
        assert result.returncode == 0, result.stderr
        shown[options] = cv2.imread(str(registered), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(shown[options], ThermalAGC(parse_agc_options(options))(frame))
    assert not np.array_equal(*shown.values())
    for command in (["fuse-pair"], ["fuse"]):  # (`skyfuse fuse --visible V --thermal T` is fuse-pair)
        result = skyfuse(*command, *pair, "--output", str(tmp_path / "bad.png"), "--agc", "base_levels=300",
                         timeout=60)
        assert result.returncode == 2
        assert result.stderr.strip() == (f"skyfuse {command[0]}: error: AGC base_levels must be 1..255 gray "
                                          "levels, got 300.0")
        assert not (tmp_path / "bad.png").exists()
