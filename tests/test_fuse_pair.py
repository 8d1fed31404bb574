"""`skyfuse fuse-pair`: one pair of image files fused as the fuse stage fuses a pair of frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_training import scene

from core.errors import SkyfuseError
from pipeline.frame import EndOfStream, Frame
from pipeline.fuse_pair import main as fuse_pair_main
from pipeline.fuse_pair import read_frame
from pipeline.wire import BLOCK, Receiver, Sender

TESTS = Path(__file__).resolve().parent


def write_rig_pair(tmp_path: Path, thermal_bits: int = 8) -> Path:
    """v.png (88×72), t.png (80×60: rotated, zoomed and shifted against it) and rig.json mapping the one
    into the other; returns the folder."""
    visible, _ = scene(72, 88, seed=5)
    visible_u8 = (visible * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor(visible_u8, cv2.COLOR_GRAY2BGR))
    angle, zoom = np.deg2rad(4.0), 0.85
    to_thermal = np.array([[zoom * np.cos(angle), -zoom * np.sin(angle), 6.0],
                           [zoom * np.sin(angle), zoom * np.cos(angle), 2.0], [0.0, 0.0, 1.0]])
    thermal = cv2.warpPerspective(visible_u8, to_thermal, (80, 60))
    if thermal_bits == 16:  # radiometric counts around 30,000: the AGC has to stretch them
        thermal = thermal.astype(np.uint16) * 4 + 30_000
    cv2.imwrite(str(tmp_path / "t.png"), thermal)
    rig = {"visible_size": [88, 72], "thermal_size": [80, 60], "visible_to_thermal": to_thermal.tolist()}
    (tmp_path / "rig.json").write_text(json.dumps(rig))
    return tmp_path


def test_fuse_pair_writes_images_at_the_thermal_size(tmp_path, tiny_weights):
    visible, thermal = scene(72, 88, seed=3)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor((visible * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    small = cv2.resize((thermal * 255).astype(np.uint8), (44, 36))  # a thermal camera of lower resolution
    cv2.imwrite(str(tmp_path / "t.png"), small)
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png")]
    assert fuse_pair_main(args + ["--output", str(tmp_path / "f.png"), "--weights", str(tiny_weights),
                                  "--threads", "1", "--save-registered", str(tmp_path / "r.png"),
                                  "--save-flow", str(tmp_path / "f.npy")]) == 0
    assert cv2.imread(str(tmp_path / "f.png")).shape == (36, 44, 3)
    assert cv2.imread(str(tmp_path / "r.png"), cv2.IMREAD_GRAYSCALE).shape == (36, 44)
    flow = np.load(tmp_path / "f.npy")
    assert flow.shape == (36, 44, 2) and flow.dtype == np.float32
    assert fuse_pair_main(args + ["--output", str(tmp_path / "b.png"), "--engine", "blend",
                                  "--size", "88x72"]) == 0
    assert cv2.imread(str(tmp_path / "b.png")).shape == (72, 88, 3)


def test_fuse_pair_without_registration_leaves_the_thermal_image_where_it_is(tmp_path):
    visible, _ = scene(96, 128, seed=4)
    visible_u8 = (visible * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "v.png"), cv2.cvtColor(visible_u8, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(tmp_path / "t.png"), np.roll(visible_u8, 4, axis=1))  # 4 px to the right
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--threads", "1",
            "--output", str(tmp_path / "f.png"), "--save-flow", str(tmp_path / "flow.npy")]
    assert fuse_pair_main(args) == 0
    assert np.load(tmp_path / "flow.npy")[..., 0].mean() > 2.0  # the shipped network finds the shift
    assert fuse_pair_main(args + ["--no-registration"]) == 0
    assert not np.load(tmp_path / "flow.npy").any()
    with pytest.raises(SkyfuseError, match="does not register"):
        fuse_pair_main(args + ["--no-registration", "--model", "dae-fuse"])


def test_fuse_pair_reports_missing_inputs(tmp_path):
    with pytest.raises(SkyfuseError, match="visible source not found"):
        fuse_pair_main(["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"),
                        "--output", str(tmp_path / "f.png")])


def test_fuse_pair_with_a_rig_file_prewarps_the_visible_image_into_the_thermal_view(tmp_path):
    write_rig_pair(tmp_path)
    thermal = cv2.imread(str(tmp_path / "t.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    args = ["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"), "--engine", "blend",
            "--engine-options", "thermal_weight=0", "--output", str(tmp_path / "f.png")]

    def error_to_thermal(extra: list[str]) -> float:
        """Mean gray-level difference of the (pre-warped visible) output and the thermal image."""
        assert fuse_pair_main(args + extra) == 0
        fused = cv2.imread(str(tmp_path / "f.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        seen = (slice(8, 52), slice(8, 72))  # inside both views
        return float(np.abs(fused[seen] - thermal[seen]).mean())

    assert error_to_thermal(["--calibration", str(tmp_path / "rig.json")]) < 6.0
    assert error_to_thermal([]) > 20.0  # a plain resize leaves the rotation, zoom and shift
    with pytest.raises(SkyfuseError, match="calibration file not found"):
        fuse_pair_main(args + ["--calibration", str(tmp_path / "missing.json")])


def test_a_pair_fused_from_files_and_from_streams_gives_the_same_pixels(tmp_path, tiny_weights):
    """The fuse stage over real ports and `skyfuse fuse-pair` on the same images: a 16-bit thermal frame
    (the AGC), a rig (the pre-warp), a network that pads (the engine and colour): identical output."""
    write_rig_pair(tmp_path, thermal_bits=16)
    engine = ["--engine", "torch", "--engine-options", f"weights={tiny_weights},threads=1"]
    rig = ["--calibration", str(tmp_path / "rig.json")]
    assert fuse_pair_main(["--visible", str(tmp_path / "v.png"), "--thermal", str(tmp_path / "t.png"),
                           "--output", str(tmp_path / "f.png"), *engine, *rig]) == 0
    from_files = cv2.imread(str(tmp_path / "f.png"))

    ends = {name: f"ipc://{tmp_path}/{name}" for name in ("visible", "thermal", "sink")}
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    sink = Receiver(ends["sink"], stream="fused", policy=BLOCK)
    fuse = subprocess.Popen([sys.executable, "-m", "pipeline", "fuse", "--visible-in", ends["visible"],
                             "--thermal-in", ends["thermal"], "--output", ends["sink"], "--mode", "lossless",
                             "--no-thumbnails", *engine, *rig], env=env, stderr=subprocess.PIPE, text=True)
    senders = {stream: Sender(ends[stream], policy=BLOCK) for stream in ("visible", "thermal")}
    try:
        for stream, sender in senders.items():  # read as the captures read them
            sender.send(Frame(stream, 0, 0, read_frame(str(tmp_path / f"{stream[0]}.png"), stream),
                              meta={"fps": 30.0}))
            sender.send_eos(EndOfStream(stream))
        fused, end = sink.recv(60_000), sink.recv(60_000)
        assert isinstance(fused, Frame) and isinstance(end, EndOfStream), fuse.stderr.read()
        assert fuse.wait(60) == 0, fuse.stderr.read()
    finally:
        for port in (*senders.values(), sink):
            port.close()
        fuse.kill() if fuse.poll() is None else None
    assert fused.image.shape == from_files.shape == (60, 80, 3)
    assert np.array_equal(fused.image, from_files)
