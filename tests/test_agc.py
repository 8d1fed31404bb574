import numpy as np
import pytest

from pipeline.agc import AGCConfig, ThermalAGC


def _scene(low: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (128, 160)).astype(np.uint16)


def test_uint8_frames_pass_through_unchanged():
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert ThermalAGC()(frame) is frame


def test_percentiles_stretch_to_the_full_8_bit_range():
    frame = _scene(29000, 31000)
    out = ThermalAGC(AGCConfig(smoothing=0.0, stride=1))(frame)
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
        agc = ThermalAGC(AGCConfig(smoothing=smoothing))
        before = agc(steady)[40:][probe].mean()
        hot[40:] = steady[40:]
        changes[smoothing] = abs(agc(hot)[40:][probe].mean() - before)
    assert changes[0.9] < 0.4 * changes[0.0]
    assert changes[0.0] > 30


def test_uniform_scene_is_not_amplified_into_noise():
    flat = _scene(30000, 30010)
    out = ThermalAGC(AGCConfig(min_span=200))(flat)
    assert out.std() < 10 and 100 < out.mean() < 160


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


@pytest.mark.parametrize("config", [AGCConfig(low_pct=60, high_pct=40), AGCConfig(smoothing=1.0),
                                    AGCConfig(min_span=0)])
def test_bad_configuration_is_rejected(config):
    with pytest.raises(ValueError):
        ThermalAGC(config)
