from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from pipeline.sources import CorruptFrame, MissingFile, open_source
from pipeline.synthetic import FlightConfig

SMALL = "synthetic:visible_size=320x180,thermal_size=160x128"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _read_all(source) -> list:
    frames = []
    while (item := source.read()) is not None:
        frames.append(item)
    return frames


def _gradient(width: int, height: int, value: int, dtype=np.uint8) -> np.ndarray:
    return (np.add.outer(np.arange(height), np.arange(width)) % 200 + value).astype(dtype)


# ------------------------------------------------------------------------------------------ synthetic

def test_synthetic_source_gives_both_cameras_with_their_rates():
    with open_source(SMALL + ",thermal_fps=9", "thermal", frames=4) as thermal:
        frames = _read_all(thermal)
        assert thermal.fps == 9 and thermal.frame_count == 4 and not thermal.live
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[3].time_s == pytest.approx(3 / 9)
    assert frames[0].image.shape == (128, 160) and frames[0].image.dtype == np.uint8
    with open_source(SMALL, "visible", frames=2) as visible:
        first = visible.read()
        assert first.image.shape == (180, 320, 3) and visible.fps == 30


def test_synthetic_options_override_the_given_flight_config():
    base = FlightConfig(visible_size=(320, 180), thermal_size=(160, 128), thermal_bits=16)
    source = open_source("synthetic:seed=7,time_offset_s=0.25", "thermal", flight=base, frames=1)
    assert source.flight.config.seed == 7 and source.flight.config.time_offset_s == 0.25
    assert source.read().image.dtype == np.uint16


def test_synthetic_is_unlimited_without_frames():
    source = open_source(SMALL, "visible")
    assert source.frame_count is None
    for _ in range(3):
        assert source.read() is not None


@pytest.mark.parametrize("spec,message", [("synthetic:altitude=3", "unknown synthetic option 'altitude'"),
                                          ("synthetic:seed=abc", "seed='abc' is not a valid value"),
                                          ("synthetic:visible_size=640", "640x512"),
                                          ("synthetic:thermal_bits=10", "thermal_bits must be 8 or 16")])
def test_bad_synthetic_options_are_clear_errors(spec, message):
    with pytest.raises(SkyfuseError, match=message):
        open_source(spec, "thermal")


# -------------------------------------------------------------------------------------------- video

def test_video_file_frames_and_times(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (96, 64))
    for i in range(6):
        writer.write(cv2.cvtColor(_gradient(96, 64, i * 5), cv2.COLOR_GRAY2BGR))
    writer.release()
    with open_source(str(path), "visible") as source:
        assert source.fps == pytest.approx(15.0) and source.frame_count == 6 and not source.live
        frames = _read_all(source)
    assert len(frames) == 6 and frames[5].time_s == pytest.approx(5 / 15)
    assert frames[0].image.shape == (64, 96, 3) and frames[0].image.dtype == np.uint8
    thermal = open_source(str(path), "thermal", frames=2)
    assert thermal.frame_count == 2
    assert [f.image.shape for f in _read_all(thermal)] == [(64, 96), (64, 96)]


def test_file_that_is_not_a_video_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all\n" * 50)
    with pytest.raises(SkyfuseError, match="cannot read video file .*notes.mp4"):
        open_source(str(path), "visible")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SkyfuseError, match="thermal source not found: .*gone.mp4"):
        open_source(str(tmp_path / "gone.mp4"), "thermal")


# -------------------------------------------------------------------------------- image sequences

def test_folder_of_16_bit_pngs_in_natural_order(tmp_path):
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"ir_{i}.png"), _gradient(40, 30, 30000 + i, np.uint16))
    source = open_source(str(tmp_path), "thermal", fps=9)
    frames = _read_all(source)
    assert source.frame_count == 3 and source.fps == 9
    assert [int(f.image[0, 0]) for f in frames] == [30001, 30002, 30010]
    assert frames[2].image.dtype == np.uint16 and frames[2].time_s == pytest.approx(2 / 9)


def test_8_bit_gray_images_become_bgr_for_visible_and_colour_becomes_gray_for_thermal(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _gradient(40, 30, 10))
    visible = open_source(str(tmp_path / "*.png"), "visible").read().image
    assert visible.shape == (30, 40, 3) and np.array_equal(visible[..., 0], visible[..., 2])
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((30, 40, 3), (200, 100, 50), np.uint8))
    thermal = open_source(str(tmp_path / "b.jpg"), "thermal").read().image
    assert thermal.shape == (30, 40) and thermal.dtype == np.uint8


def test_corrupt_or_odd_sized_frame_mid_stream_is_skipped(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), _gradient(40, 30, i))
    (tmp_path / "f1.png").write_bytes(b"\x89PNG garbage")
    cv2.imwrite(str(tmp_path / "f2.png"), _gradient(50, 30, 2))
    source = open_source(str(tmp_path), "visible")
    assert source.read().index == 0
    with pytest.raises(CorruptFrame, match="f1.png"):
        source.read()
    with pytest.raises(CorruptFrame, match="size 50x30"):
        source.read()
    assert source.read().index == 3
    assert source.read() is None


def test_csv_with_blanks_and_times(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), _gradient(20, 10, i))
    (tmp_path / "frames.csv").write_text("path,time_s\nimg/0.png,0.0\n,0.1\nimg/1.png,0.2\nimg/2.png,0.3\n")
    source = open_source(str(tmp_path / "frames.csv"), "thermal")
    frames = _read_all(source)
    assert source.frame_count == 3 and source.fps == pytest.approx(10)
    assert [(f.index, f.time_s) for f in frames] == [(0, 0.0), (2, 0.2), (3, 0.3)]


def test_csv_column_pick_and_times_from_rate(tmp_path):
    cv2.imwrite(str(tmp_path / "v.png"), _gradient(20, 10, 0))
    (tmp_path / "pairs.csv").write_text("thermal,visible\nx.png,v.png\nx.png,\nx.png,v.png\n")
    cv2.imwrite(str(tmp_path / "x.png"), _gradient(20, 10, 0))
    frames = _read_all(open_source(str(tmp_path / "pairs.csv") + "#visible", "visible", fps=5))
    assert [(f.index, f.time_s) for f in frames] == [(0, 0.0), (2, 0.4)]


@pytest.mark.parametrize("content,spec_suffix,message", [
    ("path\nnothere.png\n", "", "line 2: file not found"),
    ("frame\na.png\n", "", "no column 'path' \\(columns: frame\\)"),
    ("path,time_s\na.png,soon\n", "", "time_s 'soon' is not a number"),
    ("path\n\n", "", "lists no frames|no rows"),
    ("thermal\na.png\n", "#visible", "no column 'visible'"),
])
def test_bad_csv_is_a_clear_error(tmp_path, content, spec_suffix, message):
    cv2.imwrite(str(tmp_path / "a.png"), _gradient(20, 10, 0))
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(SkyfuseError, match=message):
        open_source(str(tmp_path / "list.csv") + spec_suffix, "thermal")


def test_empty_folder_and_unmatched_glob_are_clear_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SkyfuseError, match="has no image files"):
        open_source(str(tmp_path), "visible")
    with pytest.raises(SkyfuseError, match="no files match"):
        open_source(str(tmp_path / "*.png"), "visible")


# ---------------------------------------------------------------------------------- cameras, misc

def test_camera_that_does_not_open_is_a_clear_error():
    with pytest.raises(SkyfuseError, match="camera 63 not found or busy"):
        open_source("camera:63", "visible")


def test_unreachable_stream_is_a_clear_error():
    with pytest.raises(SkyfuseError, match="cannot open stream rtsp://127.0.0.1:1/live"):
        open_source("rtsp://127.0.0.1:1/live", "thermal")


def test_gstreamer_pipeline_that_cannot_start_is_a_clear_error():
    with pytest.raises(SkyfuseError, match="GStreamer"):
        open_source("videotestsrc ! nosuchelement ! appsink", "visible")


def test_unknown_stream_is_a_clear_error():
    with pytest.raises(SkyfuseError, match="unknown stream 'infrared'"):
        open_source("synthetic", "infrared")


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "wisard" / "pairs.csv").is_file(), reason="../shared/data/wisard absent")
def test_wisard_pairs_csv_columns():
    pairs = str(DATA / "wisard" / "pairs.csv")
    thermal = open_source(pairs + "#thermal", "thermal", frames=3)
    first = thermal.read()
    assert first.image.shape == (512, 640) and first.image.dtype in (np.uint8, np.uint16)
    visible = open_source(pairs + "#visible", "visible", frames=2)
    assert visible.frame_count == 2
    assert visible.read().image.shape == (1080, 1920, 3)


# ------------------------------------------------------------------------ skipping frames when late

def test_skip_late_jumps_the_synthetic_flight_to_the_frame_due_without_rendering(monkeypatch):
    source = open_source(SMALL, "visible", frames=10)
    monkeypatch.setattr(source, "_render", lambda i: pytest.fail(f"rendered skipped frame {i}"))
    assert source.skip_late(now_s=0.2) == 6  # frames 0..5 replaced by frame 6, due at 0.2 s
    monkeypatch.undo()
    assert source.read().index == 6
    assert source.skip_late(now_s=0.21) == 0  # frame 7 (0.233 s) is not due yet
    assert source.skip_late(now_s=5.0) == 2  # the limit keeps the last frame to read
    assert source.read().index == 9 and source.read() is None


def test_skip_late_follows_a_csvs_times_and_missing_rows(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _gradient(20, 10, i))
    (tmp_path / "frames.csv").write_text("path,time_s\n0.png,0.0\n,0.1\n1.png,0.2\n2.png,0.3\n3.png,0.4\n")
    source = open_source(str(tmp_path / "frames.csv"), "thermal")
    assert source.skip_late(now_s=0.25) == 1  # 0.png is replaced by 1.png at 0.2 s; 2.png is not due
    assert source.read().time_s == 0.2
    assert source.skip_late(now_s=1.0) == 1
    assert source.read().time_s == 0.4 and source.read() is None


def test_skip_late_grabs_video_frames_without_retrieving_them(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(6):
        writer.write(cv2.cvtColor(_gradient(96, 64, i * 10), cv2.COLOR_GRAY2BGR))
    writer.release()
    source = open_source(str(path), "thermal")
    assert source.skip_late(now_s=0.3) == 3
    frame = source.read()
    assert frame.index == 3 and frame.time_s == pytest.approx(0.3)
    assert int(frame.image[0, 0]) == pytest.approx(30, abs=3)
    assert source.skip_late(now_s=10.0) == 1  # frame 5 is the last one: it is read, not skipped
    assert source.read().index == 5 and source.read() is None


# --------------------------------------------------------------------------- damaged or vanished files

def test_truncated_jpeg_is_a_corrupt_frame_not_a_grey_half_image(tmp_path):
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    (tmp_path / "0.jpg").write_bytes(jpeg.tobytes())
    (tmp_path / "1.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    source = open_source(str(tmp_path), "visible")
    assert source.read().image.shape == (60, 80, 3)
    with pytest.raises(CorruptFrame, match="truncated JPEG .*1.jpg") as caught:
        source.read()
    assert caught.value.reason == "corrupt_frame"
    assert source.read() is None and source.position == 2


def test_files_deleted_mid_run_are_missing_not_the_end(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), _gradient(20, 10, i))
    source = open_source(str(tmp_path), "thermal")
    assert source.read().index == 0
    for i in (1, 2):
        (tmp_path / f"{i}.png").unlink()
    for i in (1, 2):
        with pytest.raises(MissingFile, match=f"file gone: .*{i}.png") as caught:
            source.read()
        assert caught.value.reason == "missing_file"
    assert source.read() is None
