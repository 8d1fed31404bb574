"""The live H.264 stream (pipeline/streamout.py): viewers on loopback receive the recording's own bitstream.

Each viewer is PyAV in a thread (or, for RTSP, a process: PyAV writes an RTSP header holding the GIL) that
decodes every frame it gets; the frames are compared with the recording's, which come from the same
encoder, so they are identical to the pixel. Nothing here asserts a duration: a loaded 2-core machine only
makes the viewers wait longer (their time-outs are generous)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_end_to_end import SMALL, skyfuse
from test_recorder import pattern

from core.errors import SkyfuseError
from pipeline.recorder import Recorder, RecorderConfig, iter_frames, read_video
from pipeline.streamout import (
    StreamConfig,
    annexb,
    nal_types,
    parse_bitrate,
    parse_keyframe_interval,
    parse_stream_url,
)

SIZE = (96, 64)
NOISE = np.random.default_rng(0).integers(0, 256, (SIZE[1], SIZE[0] * 2, 3), dtype=np.uint8)


def panning(index: int, width: int = SIZE[0], height: int = SIZE[1]) -> np.ndarray:
    """Noise panning a pixel per frame: only motion from the frames before predicts it, so a frame cannot
    be decoded without its references (a gradient like `pattern`'s can be, from intra prediction)."""
    return np.ascontiguousarray(NOISE[:height, index % width:index % width + width])


def free_udp_port(pair: bool = False) -> int:
    """A free UDP port on 127.0.0.1 (an even one with the next also free, for RTP + RTCP, if `pair`)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not pair:
            return port
        if port % 2 or port + 1 > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair")


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bound(port: int, proto: str = "udp") -> bool:
    """Whether something listens on `port` (UDP bound, or TCP in LISTEN state), from /proc/net."""
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and (proto == "udp" or state == "0A"):
                return True
    return False


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Viewer(threading.Thread):
    """Decodes a stream as a viewer does: every decodable frame as (pts seconds, BGR image). Packets that
    cannot be decoded (before the first keyframe a late viewer sees) are skipped, as players do."""

    def __init__(self, url: str, fmt: str, options: dict | None = None, read_timeout_s: float = 5.0):
        super().__init__(daemon=True)
        self.url, self.fmt, self.options, self.read_timeout_s = url, fmt, options or {}, read_timeout_s
        self.frames: list[tuple[float | None, np.ndarray]] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with av.open(self.url, format=self.fmt, options=self.options,
                         timeout=(120.0, self.read_timeout_s)) as container:
                stream = container.streams.video[0]
                for packet in container.demux(stream):
                    try:
                        decoded = packet.decode()
                    except av.InvalidDataError:
                        continue
                    for frame in decoded:  # (RTP knows no time for the first frame: None)
                        time_s = None if frame.pts is None else float(frame.pts * frame.time_base)
                        self.frames.append((time_s, frame.to_ndarray(format="bgr24")))
        except (av.FFmpegError, OSError) as exc:  # the read time-out after the stream ends
            self.error = exc

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[tuple[float, np.ndarray]]:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < count and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.frames


def mpegts_viewer(port: int) -> Viewer:
    viewer = Viewer(f"udp://127.0.0.1:{port}", "mpegts")
    viewer.start()
    wait_until(lambda: bound(port))
    return viewer


def record(path: Path, config: RecorderConfig, frames: range, *, paced: bool = True, before=None,
           image=pattern) -> Recorder:
    """Write `image(i)` at 30 fps (`before(i, recorder)` called first for each); the recorder, closed."""
    with Recorder(path, 30, SIZE, config) as recorder:
        for i in frames:
            if before:
                before(i, recorder)
            recorder.write(image(i), i)
            if paced:
                time.sleep(1 / 30)
    return recorder


def assert_identical(received: list[tuple[float, np.ndarray]], recorded: list[tuple[float, np.ndarray]]):
    assert len(received) == len(recorded)
    for (_, got), (_, want) in zip(received, recorded):
        assert np.array_equal(got, want), "the viewer decodes the recording's own bitstream"
    timed = [i for i, (t, _) in enumerate(received) if t is not None]
    assert len(timed) >= len(received) - 1
    start, start_recorded = received[timed[0]][0], recorded[timed[0]][0]
    assert [received[i][0] - start for i in timed] == pytest.approx(
        [recorded[i][0] - start_recorded for i in timed], abs=2e-3), "at the source rate"


def test_rtp_viewer_reads_the_sdp_and_decodes_every_frame_sent(tmp_path):
    port = free_udp_port(pair=True)
    sdp = tmp_path / "fused.mp4.sdp"
    config = RecorderConfig(stream=StreamConfig(f"udp://127.0.0.1:{port}", "rtp", sdp_path=sdp))
    viewer = None

    def start_viewer(i, recorder):
        nonlocal viewer
        if i == 0:  # the SDP exists once the recorder is open, before any frame
            text = sdp.read_text()
            assert f"m=video {port} RTP/AVP 96" in text and "a=rtpmap:96 H264/90000" in text
            assert "sprop-parameter-sets=" in text and "profile-level-id=" in text
            viewer = Viewer(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp"})
            viewer.start()
            wait_until(lambda: bound(port))

    recorder = record(tmp_path / "fused.mp4", config, range(40), before=start_viewer)
    recorded = list(iter_frames(tmp_path / "fused.mp4"))
    assert len(recorded) == 40
    assert_identical(viewer.wait_for(40), recorded)
    stats = recorder.stream_stats()
    assert stats["packets_sent"] == 40 and stats["failures"] == 0 and stats["dropped_queue_full"] == 0


def test_a_late_mpegts_viewer_starts_at_the_next_keyframe(tmp_path):
    port = free_udp_port()
    config = RecorderConfig(keyframe_interval_frames=10,
                            stream=StreamConfig(f"udp://127.0.0.1:{port}", "mpegts"))
    viewer = None

    def join_late(i, recorder):
        nonlocal viewer
        if i == 15:  # frames 0-14 are on the wire; the next keyframe is frame 20
            wait_until(lambda: recorder.stream_stats()["packets_sent"] == 15)
            viewer = mpegts_viewer(port)

    record(tmp_path / "fused.mkv", config, range(50), before=join_late, image=panning)
    recorded = list(iter_frames(tmp_path / "fused.mkv"))
    assert len(recorded) == 50
    # MPEG-TS carries no out-of-band headers: the picture parameters come in-band with the keyframe.
    received = viewer.wait_for(30)
    time.sleep(0.5)  # (nothing more arrives)
    assert_identical(received[-30:], recorded[20:])
    before_keyframe = received[:-30]
    assert len(before_keyframe) <= 5 and not any(np.array_equal(image, want) for (_, image), (_, want)
                                                 in zip(before_keyframe, recorded[15:20])), \
        "frames 15-19 lack their references: a player shows at best a damaged picture until frame 20"


def test_an_unreachable_rtsp_server_is_counted_and_the_recording_stays_complete(tmp_path):
    port = free_tcp_port()  # nobody listens there
    config = RecorderConfig(stream=StreamConfig(f"rtsp://127.0.0.1:{port}/live", timeout_s=1.0))
    recorder = record(tmp_path / "fused.mp4", config, range(45), paced=False)
    assert read_video(tmp_path / "fused.mp4").frames == 45
    stats = recorder.stream_stats()
    assert stats["packets_sent"] == 0 and stats["failures"] >= 1 and stats["reconnects"] == 0
    assert stats["skipped"] + stats["dropped_queue_full"] == 45
    assert "refused" in stats["last_error"].lower()


class NotAnRtspServer(threading.Thread):
    """Accepts every connection on a loopback port and answers the first bytes of each with `reply`, or,
    with None, never answers (a hung server, or a port that swallows what it is sent)."""

    def __init__(self, reply: bytes | None):
        super().__init__(daemon=True)
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            if self.reply is not None and connection.recv(4096):
                connection.sendall(self.reply)

    def close(self) -> None:
        self.listener.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.parametrize("reply, message", [(None, "did not answer an rtsp options request"),
                                            (b"HTTP/1.1 400 Bad Request\r\n\r\n", "is not an rtsp server")])
def test_a_port_that_does_not_answer_rtsp_never_pauses_the_sink(tmp_path, reply, message):
    """FFmpeg's own RTSP handshake holds the GIL while it waits (1.5 s here): every thread of the sink
    would stop. The stream output asks the server itself first, so the sink's threads keep running."""
    server = NotAnRtspServer(reply)
    server.start()
    gaps, recording = [], threading.Event()

    def heartbeat() -> None:
        last = time.monotonic()
        while recording.is_set():
            time.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    def start_heartbeat(i: int, _recorder: Recorder) -> None:
        if i == 0:
            recording.set()
            threading.Thread(target=heartbeat, daemon=True).start()

    config = RecorderConfig(stream=StreamConfig(f"rtsp://127.0.0.1:{server.port}/live", timeout_s=1.5))
    try:
        recorder = record(tmp_path / "fused.mp4", config, range(75), before=start_heartbeat)
    finally:
        recording.clear()
        server.close()
    assert read_video(tmp_path / "fused.mp4").frames == 75
    stats = recorder.stream_stats()
    assert stats["packets_sent"] == 0 and stats["failures"] >= 1
    assert max(gaps) < 0.75, f"the sink stood still for {max(gaps):.2f} s"
    assert message in stats["last_error"].lower()


RTSP_RECEIVER = """
import av, hashlib, json, sys
url = sys.argv[1]
options = {"rtsp_flags": "listen", "rtsp_transport": "tcp", "listen_timeout": "120"}
frames = []
try:
    with av.open(url, format="rtsp", options=options, timeout=(120, 10)) as container:
        for frame in container.decode(video=0):
            frames.append(hashlib.sha1(frame.to_ndarray(format="bgr24").tobytes()).hexdigest())
except av.FFmpegError:
    pass
print(json.dumps(frames))
"""


def test_rtsp_publishes_to_a_server(tmp_path):
    """FFmpeg's RTSP demuxer in listen mode stands in for MediaMTX: it takes one publisher's ANNOUNCE and
    RECORD as a server does, but only one connection, so the reachability check (a connection of its own)
    is left out here."""
    port = free_tcp_port()
    receiver = subprocess.Popen([sys.executable, "-c", RTSP_RECEIVER, f"rtsp://127.0.0.1:{port}/live"],
                                stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: bound(port, "tcp"))
        config = RecorderConfig(stream=StreamConfig(f"rtsp://127.0.0.1:{port}/live", timeout_s=5.0,
                                                    check_server=False))
        recorder = record(tmp_path / "fused.mp4", config, range(30))
        out, _ = receiver.communicate(timeout=120)
    finally:
        receiver.kill() if receiver.poll() is None else None
    recorded = [hashlib.sha1(image.tobytes()).hexdigest() for _, image in iter_frames(tmp_path / "fused.mp4")]
    assert json.loads(out) == recorded and len(recorded) == 30
    stats = recorder.stream_stats()
    assert stats["packets_sent"] == 30 and stats["failures"] == 0


def test_a_run_streams_mpegts_from_its_yaml_config_and_every_frame_matches_the_recording(tmp_path):
    port = free_udp_port()
    output = tmp_path / "fused.mp4"
    config = tmp_path / "run.yaml"
    config.write_text(f"stream: udp://127.0.0.1:{port}\nstream_format: mpegts\nstream_bitrate: 1M\n"
                      "keyframe_interval: 15\n")
    viewer = mpegts_viewer(port)
    result = skyfuse("run", "--config", str(config), "--visible", f"synthetic:{SMALL}", "--thermal",
                     f"synthetic:{SMALL}", "--frames", "60", "--mode", "lossless", "--pace", "native",
                     "--engine", "blend", "--output", str(output), timeout=180)
    assert result.returncode == 0, result.stderr
    recorded = list(iter_frames(output))
    assert len(recorded) == 60
    assert_identical(viewer.wait_for(60), recorded)
    stream = json.loads(output.with_name("stats.json").read_text())["stages"]["sink"]["stream"]
    assert stream["url"] == f"udp://127.0.0.1:{port}" and stream["format"] == "mpegts"
    assert stream["packets_sent"] == 60 and stream["keyframes_sent"] == 4 and stream["failures"] == 0
    assert "stream to udp://127.0.0.1" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--stream", "udp://127.0.0.1"], "needs a host and a port"),
    (["--stream", "http://example.com/x"], "must be udp://HOST:PORT"),
    (["--stream", "rtsp://server"], "needs a server and a path"),
    (["--stream", "rtsp://server/live", "--stream-format", "mpegts"], "carries RTP"),
    (["--stream-bitrate", "2M"], "needs a stream: add --stream URL"),
    (["--stream", "udp://127.0.0.1:5600", "--stream-bitrate", "fast"], "bits/s such as 2M"),
    (["--keyframe-interval", "1 min"], "keyframe interval must be"),
])
def test_bad_stream_options_give_one_line_before_anything_starts(tmp_path, args, message):
    result = skyfuse("run", "--output", str(tmp_path / "out.mp4"), *args, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skyfuse run: error:"), result.stderr
    assert message in lines[0]


def test_option_parsing_and_parameter_sets():
    assert parse_bitrate("2M") == 2_000_000 and parse_bitrate("800k") == 800_000
    assert parse_keyframe_interval("30") == (30, None) and parse_keyframe_interval("0.5s") == (None, 0.5)
    assert parse_stream_url("udp://10.0.0.2:5600").muxer_url() == "rtp://10.0.0.2:5600?pkt_size=1200"
    assert parse_stream_url("udp://10.0.0.2:5600", "mpegts").muxer_url() == "udp://10.0.0.2:5600?pkt_size=1316"
    assert parse_stream_url("rtsp://user:pw@srv:8554/live").shown == "rtsp://srv:8554/live"
    with pytest.raises(SkyfuseError):
        parse_stream_url("udp://10.0.0.2:5600", "webrtc")
    sps, pps = b"\x67\x64\x00\x1f\xac", b"\x68\xee\x3c\x80"
    avcc = bytes([1, 0x64, 0, 0x1F, 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps + b"\x01" + \
        len(pps).to_bytes(2, "big") + pps
    assert annexb(avcc) == b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    assert nal_types(annexb(avcc)) == {7, 8}


def test_a_recorder_without_a_stream_is_unchanged(tmp_path):
    with Recorder(tmp_path / "v.mp4", Fraction(30), SIZE) as recorder:
        recorder.write(pattern(0, *SIZE), 0)
    assert recorder.stream_out is None and recorder.stream_stats() is None
