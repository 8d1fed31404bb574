"""Raw thermal recording (`--record-thermal`): what a reviewer finds in the file and its sidecar, after a
normal end and after a kill, and the recording replayed as a thermal source."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from test_end_to_end import SMALL, alive, children_of, command_of, skyfuse, start_run, stats_of

from core.errors import SkyfuseError
from pipeline.recorder import read_video
from pipeline.sidecar import load_sidecar, read_sidecar
from pipeline.sources import RawRecordingSource, open_source, parse_synthetic_options
from pipeline.synthetic import FlightConfig, SyntheticFlight
from pipeline.thermal_recorder import RawThermalRecorder

THERMAL16 = f"{SMALL},thermal_bits=16"


def flight16() -> SyntheticFlight:
    return SyntheticFlight(parse_synthetic_options(THERMAL16, FlightConfig()))


def replay(path) -> list:
    """Every frame of a raw recording, read as `skyfuse run --thermal PATH` reads it."""
    source = open_source(str(path), "thermal")
    assert isinstance(source, RawRecordingSource), "recognised as a raw recording, not a video for OpenCV"
    with source:
        return list(iter(source.read, None))


def test_a_run_keeps_every_16_bit_thermal_frame_bit_exactly_and_pairs_it_with_the_fused_frames(tmp_path):
    output, raw = tmp_path / "fused.mp4", tmp_path / "raw" / "thermal.mkv"  # its folder does not exist yet
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal", f"synthetic:{THERMAL16}",
                     "--frames", "30", "--mode", "lossless", "--engine", "blend", "--output", str(output),
                     "--record-thermal", str(raw))
    assert result.returncode == 0, result.stderr
    records = read_sidecar(raw.with_name("thermal.mkv.frames.jsonl"))
    frames = replay(raw)
    assert len(frames) == len(records) == stats_of(output)["stages"]["capture.thermal"]["raw_recorded"] >= 30
    assert [r["frame"] for r in records] == [r["seq"] for r in records] == list(range(len(records)))
    flight = flight16()
    for record, frame in zip(records, frames):
        assert frame.image.dtype == np.uint16
        assert np.array_equal(frame.image, flight.thermal_frame(record["seq"])), f"frame {record['seq']}"
        assert frame.time_s == pytest.approx(flight.thermal_time(record["seq"]), abs=1e-3)
    # A reviewer pairs each fused frame with its raw frame through the thermal seq in both sidecars.
    by_seq = {r["seq"]: r for r in records}
    fused = read_sidecar(output.with_name("fused.mp4.frames.jsonl"))
    assert len(fused) == 30
    for record in fused:
        raw_record = by_seq[record["thermal"]["seq"]]
        assert raw_record["capture_ns"] == record["thermal"]["capture_ns"]


def test_a_thermal_capture_killed_mid_recording_leaves_every_frame_up_to_near_the_kill(tmp_path):
    output, raw = tmp_path / "fused.mp4", tmp_path / "thermal.mkv"
    process = start_run("--thermal", f"synthetic:{THERMAL16}", "--frames", "600", "--mode", "lossless",
                        "--pace", "native", "--engine", "blend", "--output", str(output),
                        "--record-thermal", str(raw))
    sidecar = raw.with_name("thermal.mkv.frames.jsonl")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 45:
        time.sleep(0.1)
    capture = next(pid for pid in children_of(process.pid)
                   if "capture" in command_of(pid).split() and "thermal" in command_of(pid).split())
    os.kill(capture, signal.SIGKILL)
    listed = len(read_sidecar(sidecar))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "stage capture.thermal killed by SIGKILL" in stderr
    frames = replay(raw)
    # Lost at most the cluster being built (0.5 s = 15 frames) and the frame being muxed.
    assert listed >= 45 and len(frames) >= listed - 16
    flight = flight16()
    assert all(np.array_equal(frame.image, flight.thermal_frame(i)) for i, frame in enumerate(frames))
    assert read_video(output).frames >= 30, "the fused recording is finalised as before"


def kill_every_process_at_once(launcher: int) -> list[int]:
    """What a power cut or the OOM killer does to a run: every process of it dies at the same instant, so
    no stage gets to finish a file (each stage is its own session, so killing the launcher's group would
    only stop the launcher, and its stages would then end cleanly). All are stopped first, so none can
    react to another's death, then killed. Returns the stage pids."""
    stages = children_of(launcher)
    for pid in (launcher, *stages):
        os.kill(pid, signal.SIGSTOP)
    stages = children_of(launcher)  # one started meanwhile is stopped too
    for pid in (launcher, *stages):
        os.kill(pid, signal.SIGSTOP)
    for pid in (*stages, launcher):
        os.kill(pid, signal.SIGKILL)
    return stages


def test_a_whole_run_killed_at_once_leaves_a_raw_recording_bit_exact_to_the_captured_frames(tmp_path):
    output, raw = tmp_path / "fused.mkv", tmp_path / "thermal.mkv"
    process = start_run("--thermal", f"synthetic:{THERMAL16}", "--frames", "900", "--mode", "live",
                        "--engine", "blend", "--output", str(output), "--record-thermal", str(raw))
    sidecar = raw.with_name("thermal.mkv.frames.jsonl")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(read_sidecar(sidecar) if sidecar.exists() else []) < 60:
        time.sleep(0.1)
    stages = kill_every_process_at_once(process.pid)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL and len(stages) == 4
    for pid in stages:
        while alive(pid):  # reaped by init once the launcher is gone
            time.sleep(0.05)
    records = read_sidecar(sidecar)
    frames = replay(raw)
    # Lost: at most the cluster being built (0.5 s = 15 frames) and the frame being muxed.
    assert len(records) >= 60 and len(records) - 16 <= len(frames) <= len(records)
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert load_sidecar(sidecar)[1] <= 1, "at most the line being written is torn"
    flight = flight16()
    for record, frame in zip(records, frames):
        assert np.array_equal(frame.image, flight.thermal_frame(record["seq"])), f"seq {record['seq']}"
        assert (frame.index, frame.capture_ns) == (record["seq"], record["capture_ns"]), "identity kept"
    assert read_video(output).frames >= 30, "the fused recording survives the same kill"
    # The killed recording replays through a run; each fused frame names its raw frame's identity.
    replayed = tmp_path / "replayed.mkv"
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal", str(raw), "--frames", "30",
                     "--mode", "lossless", "--engine", "blend", "--output", str(replayed))
    assert result.returncode == 0, result.stderr
    by_seq = {r["seq"]: r for r in records[:len(frames)]}
    fused = read_sidecar(replayed.with_name("replayed.mkv.frames.jsonl"))
    assert len(fused) == 30
    for record in fused:
        assert record["thermal"]["recorded_capture_ns"] == by_seq[record["thermal"]["seq"]]["capture_ns"]


def test_a_raw_recording_replays_as_the_thermal_source_of_a_run(tmp_path):
    flight, raw = flight16(), tmp_path / "thermal.mkv"
    recorder = RawThermalRecorder(raw, 30, flight.thermal_frame(0))
    recorded = {1000 + i: 5_000_000_000_000 + int(flight.thermal_time(i) * 1e9) for i in range(20)}
    with recorder:
        for i, (seq, capture_ns) in enumerate(recorded.items()):
            recorder.record(flight.thermal_frame(i), seq, capture_ns)
    output = tmp_path / "fused.mkv"
    result = skyfuse("run", "--visible", f"synthetic:{SMALL}", "--thermal", str(raw), "--frames", "20",
                     "--mode", "lossless", "--engine", "blend", "--output", str(output))
    assert result.returncode == 0, result.stderr
    video = read_video(output)
    assert video.frames == 20 and video.size == (320, 256)
    stats = stats_of(output)
    assert stats["stages"]["capture.thermal"]["frames"] == 20 and stats["drops_total"] == 0
    fused = read_sidecar(output.with_name("fused.mkv.frames.jsonl"))
    # Each visible frame met its thermal frame, which kept the seq and capture time it was recorded with.
    assert [r["thermal"]["seq"] for r in fused] == list(recorded)
    assert all(r["thermal"]["recorded_capture_ns"] == recorded[r["thermal"]["seq"]] for r in fused)
    assert "renumbered" not in result.stderr


def test_a_replay_without_its_sidecar_renumbers_the_frames_with_one_line_of_warning(tmp_path, capsys):
    flight, raw = flight16(), tmp_path / "thermal.mkv"
    with RawThermalRecorder(raw, 30, flight.thermal_frame(0)) as recorder:
        for i in range(5):
            recorder.record(flight.thermal_frame(i), 70 + 2 * i, 10**12 + i * 33_333_333)
    raw.with_name("thermal.mkv.frames.jsonl").unlink()
    frames = replay(raw)
    assert [(f.index, f.capture_ns) for f in frames] == [(i, None) for i in range(5)]
    assert all(np.array_equal(f.image, flight.thermal_frame(i)) for i, f in enumerate(frames))
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "renumbered from 0" in warning[0] and "no sidecar" in warning[0]


def test_a_recording_cut_mid_frame_with_a_torn_sidecar_line_replays_up_to_the_cut(tmp_path, capsys):
    """What a kill can leave, made exactly: the file cut inside a frame and half a sidecar line."""
    flight, raw = flight16(), tmp_path / "thermal.mkv"
    sidecar = raw.with_name("thermal.mkv.frames.jsonl")
    with RawThermalRecorder(raw, 30, flight.thermal_frame(0)) as recorder:
        for i in range(8):
            recorder.record(flight.thermal_frame(i), 3 * i, 7 * 10**9 + i * 33_333_333)
    with raw.open("r+b") as file:
        file.truncate(raw.stat().st_size * 5 // 8)  # inside the 6th frame (each frame is about an eighth)
    with sidecar.open("a") as file:
        file.write('{"frame":8,"seq":24,"capt')
    assert load_sidecar(sidecar) == (read_sidecar(sidecar), 1)
    frames = replay(raw)
    assert 4 <= len(frames) <= 5
    for i, frame in enumerate(frames):
        assert np.array_equal(frame.image, flight.thermal_frame(i))
        assert (frame.index, frame.capture_ns) == (3 * i, 7 * 10**9 + i * 33_333_333)
    said = capsys.readouterr().err
    assert "left out 1 torn last line" in said and f"lists {8 - len(frames)} more" in said
    assert "Traceback" not in said


@pytest.mark.parametrize("cut", [300, 700])  # inside the header; inside the first frame
def test_a_recording_cut_before_its_first_frame_is_refused_with_one_clear_line(tmp_path, cut):
    flight, raw = flight16(), tmp_path / "thermal.mkv"
    with RawThermalRecorder(raw, 30, flight.thermal_frame(0)) as recorder:
        recorder.record(flight.thermal_frame(0), 0, 0)
    with raw.open("r+b") as file:
        file.truncate(cut)  # what a kill as the recording starts leaves
    with pytest.raises(SkyfuseError, match="holds no whole frame"):
        open_source(str(raw), "thermal")


def test_an_8_bit_camera_is_recorded_as_8_bit_and_frames_captured_in_one_millisecond_are_all_kept(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (31, 47), dtype=np.uint8) for _ in range(4)]  # odd sizes are fine
    with RawThermalRecorder(tmp_path / "t.mkv", 9, images[0]) as recorder:
        for i, image in enumerate(images):
            recorder.record(image, 10 + i, 2_000_000_000 + (i // 2) * 111_111_111)  # two by two at once
    frames = replay(tmp_path / "t.mkv")
    assert [f.image.dtype for f in frames] == [np.uint8] * 4
    assert all(np.array_equal(f.image, image) for f, image in zip(frames, images))
    assert [round(f.time_s, 3) for f in frames] == [0, 0.001, 0.111, 0.112]
    assert [r["seq"] for r in read_sidecar(tmp_path / "t.mkv.frames.jsonl")] == [10, 11, 12, 13]


@pytest.mark.parametrize("target, message", [
    ("{tmp}/folder.mkv", "Is a directory"),
    ("{tmp}/a_file/raw.mkv", "cannot write recording"),
    ("{tmp}/raw.mp4", "use a .mkv file name"),
    ("{tmp}/out.mp4", "would overwrite the fused recording"),
    ("{tmp}/replayed.mkv", "would overwrite the thermal source"),
])
def test_a_bad_raw_recording_path_is_one_clear_line_before_the_run_starts(tmp_path, target, message):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "folder.mkv").mkdir()
    output = tmp_path / "out.mp4"
    replayed = tmp_path / "replayed.mkv"
    with RawThermalRecorder(replayed, 30, np.zeros((16, 16), np.uint16)) as recorder:
        recorder.record(np.full((16, 16), 29315, np.uint16), 0, 0)
    kept = replayed.read_bytes()
    result = skyfuse("run", "--output", str(output), "--thermal", str(replayed),
                     "--record-thermal", target.format(tmp=tmp_path), timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skyfuse run: error:"), result.stderr
    assert message in lines[0]
    assert not output.exists(), "nothing started"
    assert replayed.read_bytes() == kept, "what was recorded is never lost"
