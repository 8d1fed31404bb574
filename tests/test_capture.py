"""The capture stage against sources that misbehave: too slow for their frame rate, or gone for a while."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from test_end_to_end import skyfuse

from core.errors import SkyfuseError
from pipeline.capture import CaptureStage
from pipeline.frame import EndOfStream, Frame
from pipeline.sources import Source, SyntheticSource, open_source
from pipeline.stage import StopFlag
from pipeline.synthetic import FlightConfig, SyntheticFlight
from pipeline.wire import DROP_NEWEST, DROP_OLDEST, Receiver, Sender


class Drain:
    """The receiving end of a capture: takes every frame, noting the monotonic time it arrived."""

    def __init__(self, endpoint: str, stream: str):
        self.receiver = Receiver(endpoint, stream=stream, policy=DROP_OLDEST, queue_size=10_000,
                                 high_water_mark=10_000)
        self.frames: list[tuple[float, Frame]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not isinstance(message := self.receiver.recv(100), EndOfStream):
            if message is not None:
                self.frames.append((time.monotonic(), message))

    def close(self) -> None:
        self.thread.join(10)
        self.receiver.close()


def run_capture(source: Source, endpoint: str, stop: StopFlag | None = None) -> tuple[dict, list]:
    """Run a live-mode capture of `source` at its native pace until it ends or `stop` is set."""
    drain = Drain(endpoint, source.stream)
    stop = stop or StopFlag()
    sender = Sender(endpoint, policy=DROP_NEWEST, high_water_mark=10_000, stop=stop)
    try:
        summary = CaptureStage(source, sender, pace=True).run(stop)
    finally:
        sender.close()
        drain.close()
    return summary, drain.frames


class SlowFlight(SyntheticSource):
    """The synthetic flight on a machine too slow for it: every frame takes `slowdown` frame periods to
    render. Counts the frames it rendered and the time that took."""

    def __init__(self, slowdown: float, frames: int):
        flight = SyntheticFlight(FlightConfig(visible_size=(160, 120), thermal_size=(160, 128)))
        super().__init__(flight, "visible", frames)
        self.rendered, self.render_s = 0, 0.0
        render = self._render

        def slow_render(index: int) -> np.ndarray:
            started = time.monotonic()
            image = render(index)
            time.sleep(max(0.0, slowdown / self.fps - (time.monotonic() - started)))
            self.rendered += 1
            self.render_s += time.monotonic() - started
            return image

        self._render = slow_render


def test_a_live_replay_slower_than_its_rate_skips_ahead_and_delivers_what_it_can_render(tmp_path):
    source = SlowFlight(slowdown=1.3, frames=120)  # 4 s of flight at 30 fps, each frame 43 ms to render
    started = time.monotonic()
    summary, frames = run_capture(source, f"ipc://{tmp_path}/visible")
    elapsed = time.monotonic() - started
    skipped = summary["drops"].get("late_skipped", 0)
    # Nothing rendered is thrown away, and every frame of the 4 s is either sent or skipped unrendered.
    assert summary["frames"] == len(frames) == source.rendered
    assert summary["frames"] + skipped == 120 and skipped > 0
    assert "late" not in summary["drops"]
    # At least 90 % of what this source can render in the time it had (measured, so a loaded machine
    # that renders slower still passes).
    assert len(frames) >= 0.9 * elapsed / (source.render_s / source.rendered)
    # Always the newest frame: its age at arrival stays about one render, never growing with the run.
    ages = [arrived - frame.capture_ns / 1e9 for arrived, frame in frames]
    assert np.median(ages[-len(ages) // 4:]) < 0.25
    assert [f.seq for _, f in frames] == sorted({f.seq for _, f in frames})


# ------------------------------------------------------------------------------- network streams

class MjpegServer:
    """An HTTP MJPEG camera (multipart/x-mixed-replace JPEGs at `fps`) that can be switched off and on
    again on the same port, or `paused`: connections stay open but nothing is sent (a stalled stream)."""

    def __init__(self, fps: float = 30.0):
        self.fps, self.port = fps, 0
        self.jpegs = [cv2.imencode(".jpg", np.full((96, 128, 3), 20 * i, np.uint8))[1].tobytes()
                      for i in range(10)]
        self.paused = threading.Event()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        server, serving = self, threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in iter(int, 1):
                    if not serving.is_set():
                        return
                    if not server.paused.is_set():
                        jpeg = server.jpegs[i % len(server.jpegs)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        try:
                            self.wfile.write(head.encode() + jpeg + b"\r\n")
                        except OSError:
                            return
                    time.sleep(1 / server.fps)

        serving.set()
        self._serving = serving
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop listening and close every connection."""
        self._serving.clear()
        self._httpd.shutdown()
        self._httpd.server_close()


def capture_in_background(source: Source, endpoint: str) -> tuple[threading.Thread, StopFlag, dict]:
    stop, result = StopFlag(), {}
    thread = threading.Thread(target=lambda: result.update(zip(("summary", "frames"),
                                                               run_capture(source, endpoint, stop))))
    thread.start()
    return thread, stop, result


def arrivals_after(frames: list, moment: float) -> list[tuple[float, Frame]]:
    return [(arrived, frame) for arrived, frame in frames if arrived > moment]


def test_an_http_stream_that_goes_away_is_reconnected_and_the_run_goes_on(tmp_path, capsys):
    server = MjpegServer()
    source = open_source(server.url, "visible", open_timeout=2, stall_timeout=2)
    thread, stop, result = capture_in_background(source, f"ipc://{tmp_path}/visible")
    try:
        time.sleep(1.5)
        server.stop()
        down = time.monotonic()
        time.sleep(3)
        server.start()
        back = time.monotonic()
        time.sleep(2.5)
    finally:
        stop.set()
        thread.join(20)
        server.stop()
    frames = result["frames"]
    before = [frame for arrived, frame in frames if arrived < down]
    after = arrivals_after(frames, back)
    assert len(before) >= 20 and len(after) >= 20, (len(before), len(after))
    first_arrival, first = after[0]
    assert first_arrival - back <= 2.0  # reconnected within 2 s of the server being back
    # The outage stays a gap in capture time, and the first frame after it says how long it was.
    gap_s = (first.capture_ns - before[-1].capture_ns) / 1e9
    assert gap_s >= 3 and first.meta["stalled_s"] == pytest.approx(gap_s, abs=0.5)
    assert first.meta["reconnects"] >= 1 and before[-1].meta["stalled_s"] == 0
    assert result["summary"]["reconnects"] >= 1 and result["summary"]["signal_lost_s"] >= 3
    log = capsys.readouterr().err
    assert "signal lost" in log and "signal back after" in log


def test_a_stream_that_stalls_is_noticed_within_the_stall_time_out_and_reconnected(tmp_path):
    server = MjpegServer()
    source = open_source(server.url, "thermal", open_timeout=1, stall_timeout=1)
    thread, stop, result = capture_in_background(source, f"ipc://{tmp_path}/thermal")
    try:
        time.sleep(1.5)
        server.paused.set()
        time.sleep(3)
        server.paused.clear()
        resumed = time.monotonic()
        time.sleep(2.5)
    finally:
        stop.set()
        thread.join(20)
        server.stop()
    after = arrivals_after(result["frames"], resumed)
    assert len(after) >= 20
    assert after[0][0] - resumed <= 2.5  # at most an open time-out and a back-off step
    assert result["summary"]["reconnects"] >= 1


@pytest.fixture
def silent_url():
    """A server that accepts connections (the kernel completes the handshake) but never reads or answers."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    yield f"http://127.0.0.1:{silent.getsockname()[1]}/live"
    silent.close()


def test_opening_a_server_that_never_answers_times_out(silent_url):
    started = time.monotonic()
    with pytest.raises(SkyfuseError, match="cannot open stream .* within 1 s"):
        open_source(silent_url, "visible", open_timeout=1)
    assert time.monotonic() - started < 4


def test_skyfuse_run_takes_the_open_time_out(silent_url, tmp_path):
    started = time.monotonic()
    result = skyfuse("run", "--visible", silent_url, "--thermal", "synthetic", "--open-timeout", "1",
                     "--output", str(tmp_path / "fused.mp4"), timeout=60)
    assert result.returncode == 2 and "within 1 s" in result.stderr
    assert time.monotonic() - started < 15


# ----------------------------------------------------------------------------------- damaged files

def test_a_truncated_video_is_reported_and_its_missing_frames_counted(tmp_path, capsys):
    path = tmp_path / "clip.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 64))
    for i in range(20):
        writer.write(np.full((64, 96, 3), 10 * i, np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    source = open_source(str(path), "visible")
    assert source.frame_count == 20  # what the header says
    summary, frames = run_capture(source, f"ipc://{tmp_path}/visible")
    assert 0 < len(frames) < 20
    assert summary["drops"]["ended_early"] == 20 - len(frames) - summary["drops"].get("late_skipped", 0)
    assert f"ended after {20 - summary['drops']['ended_early']} of the 20 frames" in capsys.readouterr().err


def test_files_gone_mid_run_are_counted_and_logged_once(tmp_path, capsys):
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((24, 32), i, np.uint8))
    source = open_source(str(tmp_path), "thermal", fps=60)
    for i in range(2, 6):
        (tmp_path / f"{i}.png").unlink()
    summary, frames = run_capture(source, f"ipc://{tmp_path}/thermal")
    assert len(frames) == 2 and summary["drops"]["missing_file"] == 4
    assert "ended_early" not in summary["drops"]
    log = capsys.readouterr().err
    assert log.count("file gone") == 1 and "only counted as missing_file" in log


def test_a_live_stream_that_reports_the_wrong_rate_is_recorded_at_the_rate_it_delivers(tmp_path, capsys):
    server = MjpegServer(fps=30)
    source = open_source(server.url, "visible", open_timeout=2)
    sender = Sender(f"ipc://{tmp_path}/visible", policy=DROP_NEWEST)
    try:
        reported = source.fps
        assert reported != pytest.approx(30, rel=0.1)  # FFmpeg says 25 for any HTTP MJPEG stream
        stage = CaptureStage(source, sender, pace=True)
        stage.measure_rate(StopFlag())
        assert source.fps == pytest.approx(30, rel=0.1)
        assert stage.stats.drops["warmup"] == 16  # the frames it was measured on are not sent
        assert f"reports {reported:g} fps but delivers" in capsys.readouterr().err
    finally:
        sender.close()
        source.close()
        server.stop()


def test_a_stop_wait_whose_deadline_has_already_passed_returns_at_once():
    # A paced capture computes its sleep from the clock; on a busy machine the frame's time can pass
    # between reading the clock and sleeping. That once ended a soak after 22,500 frames with
    # "ValueError: timeout must be non-negative" from select().
    stop = StopFlag()
    started = time.monotonic()
    assert stop.wait(-0.004) is False
    assert time.monotonic() - started < 1.0
    stop.set()
    assert stop.wait(-1.0) is True
