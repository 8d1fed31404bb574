"""Recorder and sidecar: what a user finds in the files, including after the recorder is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.recorder
from core.errors import SkyfuseError
from pipeline.recorder import Recorder, RecorderConfig, Sidecar, iter_frames, read_video
from pipeline.sidecar import read_sidecar

REPO = Path(__file__).resolve().parents[1]
BITS = 11  # frame index encoded as black/white blocks in the top rows, robust to H.264 loss
BLOCK = 8


def pattern(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """A moving gradient with the frame index written as bits in a strip along the top."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.dstack([(xx * 2 + 3 * index) % 256, (yy * 3 + index) % 256, (xx + yy) % 256]).astype(np.uint8)
    bits = (index >> np.arange(BITS)) & 1
    image[:BLOCK, : BITS * BLOCK] = np.repeat(bits * 255, BLOCK).astype(np.uint8)[None, :, None]
    return image


def decode_index(image: np.ndarray) -> int:
    strip = image[2 : BLOCK - 2, : BITS * BLOCK].mean(axis=(0, 2)).reshape(BITS, BLOCK)[:, 2:-2].mean(axis=1)
    return int(sum(1 << i for i, level in enumerate(strip) if level > 128))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_round_trip_frames_rate_size_and_content(tmp_path, ext):
    path = tmp_path / "out" / f"video.{ext}"  # the folder does not exist yet
    with Recorder(path, 25, (96, 64)) as recorder:
        for i in range(20):
            assert recorder.write(pattern(i), i)
    info = read_video(path)
    assert (info.frames, info.fps, info.size) == (20, 25.0, (96, 64))
    assert info.duration_s == pytest.approx(20 / 25, abs=1e-3)
    decoded = list(iter_frames(path))
    assert [decode_index(image) for _, image in decoded] == list(range(20))
    error = np.abs(decoded[7][1].astype(int) - pattern(7).astype(int)).mean()
    assert error < 12  # lossy, but the picture is the one written


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_skipped_slots_leave_a_time_gap(tmp_path, ext):
    path = tmp_path / f"gap.{ext}"
    slots = [*range(100, 110), *range(120, 130)]  # the first slot written is time 0
    with Recorder(path, 30, (96, 64)) as recorder:
        for slot in slots:
            recorder.write(pattern(slot), slot)
    info = read_video(path)
    assert info.frames == 20
    assert info.times_s == pytest.approx([(s - 100) / 30 for s in slots], abs=2e-3)
    assert info.duration_s == pytest.approx(30 / 30, abs=2e-3)


def test_slot_not_after_the_last_is_refused(tmp_path):
    path = tmp_path / "v.mp4"
    with Recorder(path, 30, (96, 64)) as recorder:
        assert recorder.write(pattern(0), 5)
        assert not recorder.write(pattern(1), 5)
        assert not recorder.write(pattern(2), 3)
        assert recorder.write(pattern(3), 6)
    assert [decode_index(image) for _, image in iter_frames(path)] == [0, 3]


def test_fractional_rate_and_gray_input(tmp_path):
    path = tmp_path / "ntsc.mkv"
    with Recorder(path, 30000 / 1001, (96, 64)) as recorder:
        for i in range(6):
            recorder.write(pattern(i)[:, :, 0], i)
    info = read_video(path)
    assert info.frames == 6
    assert info.fps == pytest.approx(29.97, abs=0.01)


def test_odd_size_is_padded_to_even(tmp_path):
    path = tmp_path / "odd.mp4"
    with Recorder(path, 30, (95, 63)) as recorder:
        for i in range(3):
            recorder.write(pattern(i, 95, 63), i)
    assert read_video(path).size == (96, 64)
    assert decode_index(next(iter_frames(path))[1]) == 0


def test_bad_paths_and_images_give_clear_errors(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SkyfuseError, match="cannot write recording"):
        Recorder(blocker / "video.mp4", 30, (96, 64))
    with pytest.raises(SkyfuseError, match=r"\.mp4 or \.mkv"):
        Recorder(tmp_path / "video.avi", 30, (96, 64))
    with pytest.raises(SkyfuseError, match="frame rate"):
        Recorder(tmp_path / "video.mp4", 0, (96, 64))
    with pytest.raises(SkyfuseError, match="cannot set up the libx264 encoder"):
        Recorder(tmp_path / "video.mp4", 30, (96, 64), RecorderConfig(codec="libx264", preset="bogus"))
    with pytest.raises(SkyfuseError, match="unknown encoder 'x265'"):
        Recorder(tmp_path / "video.mp4", 30, (96, 64), RecorderConfig(codec="x265"))
    with Recorder(tmp_path / "video.mp4", 30, (96, 64)) as recorder:
        with pytest.raises(SkyfuseError, match="96x64 uint8"):
            recorder.write(np.zeros((64, 97, 3), np.uint8), 0)
    with pytest.raises(SkyfuseError, match="cannot read video"):
        read_video(blocker)


def test_sidecar_round_trip_numpy_values_and_torn_line(tmp_path):
    path = tmp_path / "side" / "frames.jsonl"
    with Sidecar(path) as sidecar:
        sidecar.write({"seq": np.int64(3), "latency_ms": np.float32(1.5), "name": "a"})
        sidecar.write({"seq": 4, "drops": {"late": 1}})
    with path.open("a") as f:
        f.write('{"seq": 5, "lat')  # what a kill mid-line leaves
    assert read_sidecar(path) == [{"seq": 3, "latency_ms": 1.5, "name": "a"},
                                  {"seq": 4, "drops": {"late": 1}}]


# Records 160x128 frames at 30 fps as fast as it can, with a sidecar line per frame, printing the
# number of frames written after each one.
WRITER = """
import sys
from pipeline.recorder import Recorder, Sidecar
from tests.test_recorder import pattern
with Recorder(sys.argv[1], 30, (160, 128)) as recorder, Sidecar(sys.argv[2]) as sidecar:
    for i in range(100000):
        recorder.write(pattern(i, 160, 128), i)
        sidecar.write({"seq": i})
        print(i + 1, flush=True)
"""


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_recording_killed_mid_run_stays_playable(tmp_path, ext):
    video, side = tmp_path / f"killed.{ext}", tmp_path / "killed.jsonl"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(video), str(side)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    written = 0
    try:
        while written < 75:  # 2.5 s of video: several fragments, then a kill in the middle of one
            line = child.stdout.readline()
            assert line, "the recording process died on its own"
            written = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    info = read_video(video)  # decodes every frame; raises on a broken file
    assert info.frames >= written - 30  # at most ~1 s lost
    assert info.size == (160, 128)
    assert [decode_index(image) for _, image in iter_frames(video)] == list(range(info.frames))
    assert [r["seq"] for r in read_sidecar(side)][:written] == list(range(written))


def test_config_controls_keyframe_interval(tmp_path):
    import av

    path = tmp_path / "gop.mp4"
    with Recorder(path, 10, (96, 64), RecorderConfig(keyframe_interval_s=0.5)) as recorder:
        for i in range(12):
            recorder.write(pattern(0), i)  # a still picture: no scene-cut keyframes
    with av.open(str(path)) as container:
        keys = [i for i, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keys[:3] == [0, 5, 10]


def _slow_conversion(monkeypatch, delay_s: float, fail_at: int | None = None) -> list[int]:
    """Make the encoding thread's colour conversion slow (and fail at call `fail_at`); returns the
    thread ids it ran on."""
    convert, threads = pipeline.recorder.to_yuv420, []

    def slow(image, pad=(0, 0)):
        threads.append(threading.get_ident())
        time.sleep(delay_s)
        if fail_at is not None and len(threads) == fail_at:
            raise ValueError("converter broke")
        return convert(image, pad)

    monkeypatch.setattr(pipeline.recorder, "to_yuv420", slow)
    return threads


def test_encoding_runs_off_the_callers_thread_in_order_with_back_pressure(tmp_path, monkeypatch):
    threads = _slow_conversion(monkeypatch, 0.2)
    path = tmp_path / "order.mkv"
    config = RecorderConfig(queue_frames=2)
    with Recorder(path, 30, (96, 64), config) as recorder:
        started = time.perf_counter()
        assert recorder.write(pattern(0), 0)
        # handed over, not encoded (0.2 s), before it returns; the margin is for a loaded machine
        assert time.perf_counter() - started < 0.15
        for i in range(1, 8):
            recorder.write(pattern(i), i)
            assert recorder._queue.qsize() <= 2  # a full queue makes write wait: memory stays bounded
        assert recorder.busy
    assert threading.get_ident() not in threads
    assert [decode_index(image) for _, image in iter_frames(path)] == list(range(8))
    assert len(recorder.encode_times_ms()) == 8


def test_close_encodes_and_muxes_every_queued_frame(tmp_path, monkeypatch):
    _slow_conversion(monkeypatch, 0.01)
    path = tmp_path / "flush.mp4"
    recorder = Recorder(path, 30, (96, 64), RecorderConfig(queue_frames=64))
    for i in range(40):
        recorder.write(pattern(i), i)
    assert recorder._queue.qsize() > 10  # most frames are still waiting when close is called
    recorder.close()
    assert [decode_index(image) for _, image in iter_frames(path)] == list(range(40))


def test_a_failure_in_the_encoding_thread_reaches_the_writer_without_a_hang(tmp_path, monkeypatch):
    _slow_conversion(monkeypatch, 0.0, fail_at=3)
    path = tmp_path / "broken.mp4"
    recorder = Recorder(path, 30, (96, 64), RecorderConfig(queue_frames=1))
    with pytest.raises(SkyfuseError, match=r"encoding recording .*broken.mp4 failed: converter broke"):
        for i in range(100):  # the writer would block on the full queue if the thread had died
            recorder.write(pattern(i), i)
    recorder.close()  # finalises what was encoded; the failure was already raised
    assert [decode_index(image) for _, image in iter_frames(path)] == [0, 1]


def test_a_disk_error_in_the_encoding_thread_is_raised_by_close(tmp_path):
    path = tmp_path / "full.mp4"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    recorder = Recorder(path, 30, (96, 64))
    recorder.write(pattern(0), 0)
    with pytest.raises(SkyfuseError, match="No space left on device"):
        recorder.close()
    recorder.close()


def test_encoder_choice_falls_back_to_libx264_with_a_reason(tmp_path):
    with Recorder(tmp_path / "auto.mp4", 30, (96, 64)) as recorder:
        recorder.write(pattern(0), 0)
    if recorder.codec == "h264_nvenc":
        pytest.skip("this machine has an NVIDIA encoder")
    assert recorder.codec == "libx264"
    assert recorder.fallback.startswith("h264_nvenc did not open (")
    with pytest.raises(SkyfuseError, match="cannot set up the h264_nvenc encoder"):
        Recorder(tmp_path / "nvenc.mp4", 30, (96, 64), RecorderConfig(codec="h264_nvenc"))
    assert read_video(tmp_path / "auto.mp4").frames == 1
