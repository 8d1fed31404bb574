"""Pairing by capture time: rate mismatch, jitter, clock offset, gaps, reuse policy, waiting."""

import numpy as np
import pytest

from pipeline.frame import RESYNC_FRAMES, Frame
from pipeline.pairing import Pairer, PairingPolicy

PIXEL = np.zeros((1, 1), np.uint8)


def frame(stream: str, seq: int, t_s: float, fps: float) -> Frame:
    return Frame(stream, seq, int(round(t_s * 1e9)), PIXEL, meta={"fps": fps})


def run(pairer: Pairer, visible_times, thermal_times, visible_fps=30.0, thermal_fps=30.0):
    """Feed both streams interleaved by time (as the lossless fuse stage reads them) and collect pairs."""
    events = [(t, "v", i) for i, t in enumerate(visible_times)]
    events += [(t, "t", i) for i, t in enumerate(thermal_times)]
    pairs = []
    for t, kind, i in sorted(events):
        if kind == "v":
            pairer.add_visible(frame("visible", i, t, visible_fps))
        else:
            pairer.add_thermal(frame("thermal", i, t, thermal_fps))
        pairs += pairer.pop_ready()
    pairer.end_thermal()
    pairer.end_visible()
    pairs += pairer.pop_ready()
    return pairs


def test_equal_rates_pair_one_to_one():
    times = [i / 30 for i in range(30)]
    pairer = Pairer(PairingPolicy())
    pairs = run(pairer, times, times)
    assert [(p.visible.seq, p.thermal.seq) for p in pairs] == [(i, i) for i in range(30)]
    assert all(p.dt_s == 0 for p in pairs) and not pairer.drops


def test_slow_thermal_is_reused_by_nearest_time():
    visible = [i / 30 for i in range(90)]
    thermal = [i / 9 for i in range(28)]
    pairer = Pairer(PairingPolicy())
    pairs = run(pairer, visible, thermal, thermal_fps=9.0)
    assert len(pairs) == 90, "every visible frame finds a thermal partner within half a thermal period"
    for p in pairs:
        nearest = min(abs(t - visible[p.visible.seq]) for t in thermal)
        assert abs(thermal[p.thermal.seq] - visible[p.visible.seq]) == pytest.approx(nearest, abs=1e-6)
        assert abs(p.dt_s) <= 0.5 / 9 + 1e-6
    assert pairer.counts["thermal_reused"] == 90 - len({p.thermal.seq for p in pairs})


def test_no_reuse_policy_drops_visible_frames_instead():
    visible = [i / 30 for i in range(90)]
    thermal = [i / 9 for i in range(28)]
    pairer = Pairer(PairingPolicy(max_reuse=0))
    pairs = run(pairer, visible, thermal, thermal_fps=9.0)
    assert len({p.thermal.seq for p in pairs}) == len(pairs), "each thermal frame used once"
    assert pairer.drops["no_thermal_in_window"] == 90 - len(pairs) > 0


def test_jitter_still_pairs_the_same_instants():
    rng = np.random.default_rng(1)
    base = np.arange(60) / 30
    visible = base + rng.uniform(-0.004, 0.004, 60)
    thermal = base + rng.uniform(-0.004, 0.004, 60)
    pairs = run(Pairer(PairingPolicy()), visible, thermal)
    assert [(p.visible.seq, p.thermal.seq) for p in pairs] == [(i, i) for i in range(60)]


def test_time_offset_corrects_a_shifted_thermal_clock():
    visible = [i / 30 for i in range(60)]
    # Thermal frame i shows the instant i/30 but is stamped 0.1 s early (time_offset_s = +0.1).
    thermal = [i / 30 - 0.1 for i in range(60)]
    naive = run(Pairer(PairingPolicy()), visible, thermal)
    assert all(p.thermal.seq == p.visible.seq + 3 for p in naive)  # wrong instants: 3 frames apart
    corrected = run(Pairer(PairingPolicy(time_offset_s=0.1)), visible, thermal)
    assert all(p.thermal.seq == p.visible.seq for p in corrected)
    assert all(abs(p.dt_s) < 1e-6 for p in corrected)


def test_gap_in_thermal_drops_only_the_frames_without_a_partner():
    visible = [i / 30 for i in range(30)]
    thermal = [i / 30 for i in range(30) if not 10 <= i < 15]
    pairer = Pairer(PairingPolicy())
    pairs = run(pairer, visible, thermal)
    paired = {p.visible.seq for p in pairs}
    assert paired == set(range(30)) - set(range(10, 15))
    assert pairer.drops["no_thermal_in_window"] == 5


def test_faster_thermal_leaves_unused_frames_counted_not_dropped():
    visible = [i / 30 for i in range(30)]
    thermal = [i / 60 for i in range(60)]
    pairer = Pairer(PairingPolicy())
    pairs = run(pairer, visible, thermal, thermal_fps=60.0)
    assert [p.thermal.seq for p in pairs] == [2 * i for i in range(30)]
    assert pairer.counts["thermal_unused"] == 30 and not pairer.drops


def test_nearest_waits_for_a_later_thermal_frame_and_latest_does_not():
    nearest, latest = Pairer(PairingPolicy(max_wait_s=None)), Pairer(PairingPolicy(strategy="latest"))
    for pairer in (nearest, latest):
        pairer.add_thermal(frame("thermal", 0, 0.0, 30))
        pairer.add_visible(frame("visible", 0, 0.030, 30))
    assert nearest.pop_ready() == []
    nearest.add_thermal(frame("thermal", 1, 1 / 30, 30))
    assert [p.thermal.seq for p in nearest.pop_ready()] == [1]
    assert [p.thermal.seq for p in latest.pop_ready()] == [0]


def test_nearest_gives_up_waiting_after_max_wait():
    now = [0.0]
    pairer = Pairer(PairingPolicy(max_wait_s=0.2), clock=lambda: now[0])
    pairer.add_thermal(frame("thermal", 0, 0.0, 30))
    pairer.add_visible(frame("visible", 0, 0.010, 30))
    assert pairer.pop_ready() == []
    now[0] = 0.25
    assert [p.thermal.seq for p in pairer.pop_ready()] == [0]


def test_out_of_order_thermal_is_counted():
    pairer = Pairer(PairingPolicy())
    pairer.add_thermal(frame("thermal", 1, 0.1, 30))
    pairer.add_thermal(frame("thermal", 0, 0.0, 30))
    assert pairer.drops["thermal_out_of_order"] == 1


def test_bad_policy_is_refused():
    with pytest.raises(ValueError):
        PairingPolicy(strategy="closest")
    with pytest.raises(ValueError):
        PairingPolicy(window_s=0)


def test_one_thermal_frame_dated_in_the_future_is_dropped_not_every_later_one():
    """A single far-future stamp used to make every later thermal frame 'out of order'."""
    times = [i / 30 for i in range(60)]
    pairer = Pairer(PairingPolicy())
    pairs = []
    for i, t in enumerate(times):
        pairer.add_thermal(frame("thermal", i, t, 30))
        if i == 10:
            pairer.add_thermal(frame("thermal", 999, 31 * 365 * 86400.0, 30))  # 31 years ahead
        pairer.add_visible(frame("visible", i, t, 30))
        pairs += pairer.pop_ready()
    assert [(p.visible.seq, p.thermal.seq) for p in pairs] == [(i, i) for i in range(60)]
    assert pairer.drops == {"thermal_time_jump": 1}


def test_a_real_clock_step_is_followed_after_a_few_frames():
    pairer = Pairer(PairingPolicy())
    step = 3600.0  # the drone's clock jumps an hour: both streams move
    times = [i / 30 for i in range(30)] + [step + i / 30 for i in range(30, 60)]
    pairs = run(pairer, times, times)
    resync = RESYNC_FRAMES - 1  # frames refused before the new time base is believed
    assert pairer.drops == {"visible_time_jump": resync, "thermal_time_jump": resync}
    assert pairer.counts["visible_time_resync"] == pairer.counts["thermal_time_resync"] == 1
    assert len(pairs) == 60 - resync
    assert all(p.visible.seq == p.thermal.seq for p in pairs)


def test_a_stalled_visible_camera_leaves_the_thermal_buffer_bounded():
    pairer = Pairer(PairingPolicy(max_buffered=8))
    for i in range(100):
        pairer.add_thermal(frame("thermal", i, i / 30, 30))
        assert len(pairer.thermal) <= 8
    assert pairer.thermal_full and pairer.drops == {"thermal_buffer_full": 92}
    pairer.add_visible(frame("visible", 0, 99 / 30, 30))
    assert [p.thermal.seq for p in pairer.pop_ready()] == [99]


def test_a_timeline_takes_a_silence_as_a_gap_but_refuses_a_date_no_time_explains():
    from pipeline.frame import Timeline

    period, second = 33_333_333, 1_000_000_000
    timeline = Timeline()
    for i in range(3):
        assert timeline.admit(i * period, 30.0, arrival_ns=i * period) == "ok"
    # Ten seconds later by its date, arriving at once: forged (or a clock step) -> refused.
    assert timeline.admit(2 * period + 10 * second, 30.0, arrival_ns=3 * period) == "time_jump"
    # Ten seconds later by its date, after ten seconds of silence here: a lost signal -> a gap.
    assert timeline.admit(2 * period + 10 * second, 30.0, arrival_ns=2 * period + 10 * second) == "ok"
    assert timeline.admit(2 * period, 30.0, arrival_ns=2 * period + 11 * second) == "out_of_order"
