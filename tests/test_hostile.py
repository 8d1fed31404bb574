"""Hostile input against real stage processes: well-formed messages with contents that used to kill a
stage, hostile headers, an oversized message, a frame dated decades ahead and an end-of-stream from a
stranger. Every one is dropped and counted by reason; the run goes on, the recording plays, stats.json
is written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from test_end_to_end import _env

from pipeline.frame import EndOfStream, Frame
from pipeline.recorder import read_video
from pipeline.sidecar import read_sidecar
from pipeline.wire import BLOCK, Receiver, encode

PERIOD_NS = 33_333_333
BASE_NS = 10_000_000_000
YEARS_31_NS = 31 * 365 * 86400 * 10**9


def parts(message: Frame | EndOfStream, **header) -> list[bytes]:
    """The message as a sender puts it on the wire, with header fields replaced by `header`."""
    encoded = [bytes(p) for p in encode(message)]
    if header:
        fields = json.loads(encoded[0])
        fields.update(header)
        encoded[0] = json.dumps(fields).encode()
    return encoded


def frame(stream: str, seq: int, image: np.ndarray, *, t_ns: int | None = None, **meta) -> Frame:
    return Frame(stream, seq, BASE_NS + seq * PERIOD_NS if t_ns is None else t_ns, image,
                 stamps={"capture": time.time_ns()}, meta={"fps": 30.0, **meta})


def with_long_number(message: Frame) -> list[bytes]:
    """A header whose seq has 5000 digits (json.dumps itself refuses to write one)."""
    encoded = parts(message, seq=123456789)
    encoded[0] = encoded[0].replace(b"123456789", b"9" * 5000)
    return encoded


def nested(message: Frame) -> list[bytes]:
    return [b"[" * 60_000, *parts(message)[1:]]


def dealer(endpoint: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(endpoint)
    return socket


def stage(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], env=_env(), stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


RNG = np.random.default_rng(0)
COLOUR = RNG.integers(0, 255, (64, 80, 3), dtype=np.uint8)


def fused(seq: int, image: np.ndarray = COLOUR, **meta) -> Frame:
    return frame("fused", seq, image, **meta)


# What used to kill the sink, and the reason it is now counted under.
SINK_HOSTILE = [
    (lambda i: parts(fused(i, drops="lots")), "sink:invalid:meta.drops"),
    (lambda i: parts(fused(i, thermal=5)), "sink:invalid:meta.thermal"),
    (lambda i: parts(fused(i, fps=float("inf"))), "sink:malformed:bad_header"),  # Infinity in the JSON
    (lambda i: parts(fused(i, fps=1e-9)), "sink:invalid:meta.fps"),
    (lambda i: parts(fused(i), capture_ns=10**400), "sink:malformed:bad_header"),
    (lambda i: parts(fused(i), stamps={"capture": 10**400}), "sink:malformed:bad_header"),
    (lambda i: parts(fused(i, np.zeros((64, 80), np.uint16))), "sink:invalid:format"),
    (lambda i: parts(Frame("fused", i, BASE_NS + i * PERIOD_NS, COLOUR, meta={"fps": 30.0},
                           extras={"visible": np.zeros((16, 20, 2), np.float32)})), "sink:invalid:extras"),
    (lambda i: parts(fused(i, np.zeros((96, 120, 3), np.uint8))), "sink:invalid:size_changed"),
    (lambda i: parts(EndOfStream("fused", {"stats": [1, 2]})), "sink:invalid:end.stats"),
    (lambda i: parts(EndOfStream("fused", {"stats": {"fuse": {"drops": "x"}}})), "sink:invalid:end.stats"),
    (lambda i: nested(fused(i)), "sink:malformed:bad_header"),
    (lambda i: with_long_number(fused(i)), "sink:malformed:bad_header"),
    (lambda i: parts(frame("fused", i, COLOUR, t_ns=BASE_NS + YEARS_31_NS)), "sink:time_jump"),
    (lambda i: parts(fused(i, np.zeros((4, 4, 3), np.uint8))), "sink:invalid:size"),
    (lambda i: parts(frame("thermal", i, np.zeros((64, 80), np.uint8))), "sink:invalid:stream"),
]


def test_the_sink_drops_and_counts_hostile_frames_and_its_recording_plays(tmp_path):
    endpoint, output = f"ipc://{tmp_path}/sink", tmp_path / "fused.mp4"
    sink = stage("sink", "--input", endpoint, "--output", str(output), "--stats",
                 str(tmp_path / "stats.json"), "--mode", "lossless", "--progress", "0")
    sender, stranger = dealer(endpoint), dealer(endpoint)
    sidecar = output.with_name("fused.mp4.frames.jsonl")
    try:
        sender.send_multipart(parts(fused(0)))
        wait_for(lambda: sidecar.exists() and read_sidecar(sidecar))  # the sink knows its sender now
        stranger.send_multipart(parts(EndOfStream("fused", {"complete": True})))
        time.sleep(0.5)  # its own connection: let it arrive before the rest
        for i, (hostile, _) in enumerate(SINK_HOSTILE, start=1):
            sender.send_multipart(hostile(i))
            sender.send_multipart(parts(fused(i)))
        sender.send_multipart(parts(EndOfStream("fused", {"stats": {}, "complete": True})))
        assert sink.wait(60) == 0
    finally:
        for socket in (sender, stranger):
            socket.close(0)
        if sink.poll() is None:
            sink.kill()
    assert "Traceback" not in sink.stderr.read()
    stats = json.loads((tmp_path / "stats.json").read_text())
    expected = {"sink:invalid:eos_from_stranger": 1}
    for _, reason in SINK_HOSTILE:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats["drops"] == expected
    good = len(SINK_HOSTILE) + 1
    assert stats["frames_recorded"] == good and stats["complete"] and "incomplete" not in stats
    video = read_video(output)
    assert video.frames == good and video.size == (80, 64)
    assert video.duration_s == pytest.approx(good / 30, abs=0.1), "no frame was pushed out of place"
    assert [r["seq"] for r in read_sidecar(sidecar)] == list(range(good))


def test_a_sink_stopped_before_the_end_of_its_stream_says_so_in_stats_json(tmp_path):
    endpoint, output = f"ipc://{tmp_path}/sink", tmp_path / "fused.mkv"
    sink = stage("sink", "--input", endpoint, "--output", str(output), "--stats",
                 str(tmp_path / "stats.json"), "--mode", "lossless", "--progress", "0")
    sender = dealer(endpoint)
    try:
        for i in range(5):
            sender.send_multipart(parts(fused(i)))
        sidecar = output.with_name("fused.mkv.frames.jsonl")
        wait_for(lambda: sidecar.exists() and len(read_sidecar(sidecar)) == 5)
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
    finally:
        sender.close(0)
        if sink.poll() is None:
            sink.kill()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["complete"] is False and stats["incomplete"] == "stopped before the end of the stream"
    assert read_video(output).frames == 5


def vm_peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


VISIBLE = RNG.integers(0, 255, (96, 120, 3), dtype=np.uint8)
THERMAL = RNG.integers(0, 255, (64, 80), dtype=np.uint8)


def test_the_fuse_stage_drops_and_counts_hostile_input_and_fuses_every_good_pair(tmp_path):
    ends = {name: f"ipc://{tmp_path}/{name}" for name in ("visible", "thermal", "sink")}
    output = Receiver(ends["sink"], stream="fused", policy=BLOCK)
    fuse = stage("fuse", "--visible-in", ends["visible"], "--thermal-in", ends["thermal"], "--output",
                 ends["sink"], "--mode", "lossless", "--engine", "blend", "--warm-up", "120x96,80x64")
    visible, thermal, stranger, big = (dealer(ends[s]) for s in ("visible", "thermal", "visible", "visible"))
    hostile_visible = {  # frame index -> message sent before it on the visible input
        2: parts(frame("visible", 2, np.zeros((4, 4), np.uint8))),              # the one that stopped runs
        3: parts(frame("visible", 3, np.zeros((4, 4, 3), np.uint8))),
        4: parts(frame("visible", 4, np.zeros((96, 120), np.uint8))),
        5: parts(frame("visible", 5, np.zeros((48, 64, 3), np.uint8))),          # not the cameras' size
        6: nested(frame("visible", 6, VISIBLE)),
        7: with_long_number(frame("visible", 7, VISIBLE)),
    }
    hostile_thermal = {
        3: parts(frame("thermal", 3, THERMAL, t_ns=BASE_NS + YEARS_31_NS)),
        6: parts(frame("thermal", 6, THERMAL, t_ns=BASE_NS + 6 * PERIOD_NS + 10**10)),  # 10 s ahead
        8: parts(frame("thermal", 8, THERMAL, fps="30")),
    }
    count, received = 20, []
    try:
        thermal.send_multipart(parts(frame("thermal", 0, THERMAL)))
        visible.send_multipart(parts(frame("visible", 0, VISIBLE)))
        received.append(output.recv(60_000))
        assert isinstance(received[0], Frame), "the first pair is fused"
        # A message of 3 x 8 MB parts: each far over the per-part limit the cameras' size sets.
        before = vm_peak_kb(fuse.pid)
        big.send_multipart([parts(frame("visible", 1, VISIBLE))[0]] + [bytes(8_000_000)] * 3)
        time.sleep(1.0)
        assert vm_peak_kb(fuse.pid) - before < 12_000, "the oversized parts were never buffered"
        stranger.send_multipart(parts(EndOfStream("visible")))  # after the real sender's first frame
        time.sleep(0.5)  # its own connection: let it arrive before the rest
        for i in range(1, count):
            if i in hostile_thermal:
                thermal.send_multipart(hostile_thermal[i])
            thermal.send_multipart(parts(frame("thermal", i, THERMAL)))
            if i in hostile_visible:
                visible.send_multipart(hostile_visible[i])
            visible.send_multipart(parts(frame("visible", i, VISIBLE)))
        for stream, socket in (("visible", visible), ("thermal", thermal)):
            socket.send_multipart(parts(EndOfStream(stream)))
        while not isinstance(received[-1], EndOfStream):
            message = output.recv(30_000)
            assert message is not None, "the fuse stage went on to its end-of-stream"
            received.append(message)
        assert fuse.wait(30) == 0
    finally:
        for socket in (visible, thermal, stranger, big):
            socket.close(0)
        output.close()
        if fuse.poll() is None:
            fuse.kill()
    assert "Traceback" not in fuse.stderr.read()
    frames, eos = received[:-1], received[-1]
    assert [f.seq for f in frames] == list(range(count)), "every good pair was fused, in order"
    assert eos.meta["complete"] is True and "why" not in eos.meta
    assert eos.meta["stats"]["fuse"]["drops"] == {
        "invalid:format": 2, "invalid:size": 1, "invalid:size_changed": 1, "malformed:bad_header": 2,
        "invalid:eos_from_stranger": 1, "thermal_time_jump": 2, "invalid:meta.fps": 1}


def test_the_live_view_says_no_signal_when_frames_stop_and_the_recording_keeps_the_gap(tmp_path):
    endpoint, output = f"ipc://{tmp_path}/sink", tmp_path / "fused.mp4"
    sink = stage("sink", "--input", endpoint, "--output", str(output), "--stats",
                 str(tmp_path / "stats.json"), "--live-view", "0", "--progress", "0", "--mode", "lossless")
    sender = dealer(endpoint)
    try:
        for i in range(5):
            sender.send_multipart(parts(fused(i)))
        started = time.monotonic()
        url = None
        while url is None:  # the sink logs its live view's address first
            line = sink.stderr.readline()
            assert line, "the sink ended without a live view"
            url = line.split("live view on ")[1].strip() if "live view on " in line else None
        stats: dict = {}

        def silent_for_a_second() -> bool:
            stats.update(json.loads(urllib.request.urlopen(url + "stats.json", timeout=5).read()))
            return stats.get("no_signal_s", 0) >= 1

        wait_for(silent_for_a_second, timeout_s=30)
        assert stats["frames"] == 5
        silence_s = time.monotonic() - started
        # The next frame is dated as long after the last as the silence lasted: a gap, not a forged date.
        after = BASE_NS + 4 * PERIOD_NS + int(silence_s * 1e9)
        sender.send_multipart(parts(frame("fused", 5, COLOUR, t_ns=after)))
        sender.send_multipart(parts(EndOfStream("fused", {"stats": {}, "complete": True})))
        assert sink.wait(60) == 0
    finally:
        sender.close(0)
        if sink.poll() is None:
            sink.kill()
    times = read_video(output).times_s
    assert len(times) == 6 and times[-1] - times[-2] > 1, "the silence is a gap in the recording"
