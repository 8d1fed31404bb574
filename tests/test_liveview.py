"""Live view: what a browser on the ground station gets from the HTTP server."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from core.errors import SkyfuseError
from pipeline.liveview import BOUNDARY, LiveView, LiveViewConfig, access_token

SHAPE = (64, 96, 3)


def frame(i: int) -> np.ndarray:
    image = np.zeros(SHAPE, np.uint8)
    image[:, :, 2] = 200  # red
    image[:8, : (i % 96) + 1] = 255
    return image


@pytest.fixture
def view():
    yield from publishing(LiveView(port=0, config=LiveViewConfig(max_fps=50)))


@pytest.fixture
def guarded_view():
    yield from publishing(LiveView(host="127.0.0.1", port=0, config=LiveViewConfig(max_fps=50),
                                   token="s3cret/+"))


def publishing(live: LiveView, rate_hz: float = 100):
    """`live`, fed frames at `rate_hz` by a stand-in for the sink while the test runs, closed after it."""
    stop = threading.Event()

    def publish():  # stands in for the sink
        i = 0
        while not stop.wait(1 / rate_hz):
            live.publish(frame(i), {"frames": i, "fps": np.float32(29.5)})
            i += 1

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    yield live
    stop.set()
    publisher.join()
    live.close()


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read()


def wait_until(condition, timeout_s: float = 5.0) -> None:
    """Poll `condition` until it holds; fail the test if it does not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.005)


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_snapshot_is_a_jpeg_of_the_published_frame(view):
    content_type, body = get(view.url + "snapshot.jpg")
    assert content_type == "image/jpeg"
    image = decode(body)
    assert image.shape == SHAPE
    assert abs(int(image[40:, :, 2].mean()) - 200) < 10 and image[40:, :, :2].mean() < 10


def test_stream_sends_successive_jpeg_parts(view):
    with urllib.request.urlopen(view.url + "stream.mjpg", timeout=5) as response:
        assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        parts = []
        for _ in range(3):
            assert response.readline() == f"--{BOUNDARY}\r\n".encode()
            headers = {}
            while (line := response.readline()) != b"\r\n":
                key, value = line.decode().split(":", 1)
                headers[key.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            parts.append(response.read(int(headers["content-length"])))
            assert response.read(2) == b"\r\n"
    images = [decode(part) for part in parts]
    assert all(image.shape == SHAPE for image in images)
    assert len(set(parts)) == 3  # each part is a newer frame


def test_stats_json_and_page(view):
    def stats() -> dict:
        content_type, body = get(view.url + "stats.json")
        assert content_type == "application/json"
        return json.loads(body)

    wait_until(lambda: stats())  # {} until the publisher's first frame
    first = stats()
    assert first["fps"] == 29.5
    wait_until(lambda: stats()["frames"] > first["frames"])  # the newest stats, not the first ones
    content_type, page = get(view.url)
    assert content_type.startswith("text/html") and b"/stream.mjpg" in page and b"/stats.json" in page
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(view.url + "nothing")


def test_nothing_is_encoded_without_viewers_and_rate_is_capped():
    with LiveView(port=0, config=LiveViewConfig(max_fps=5, snapshot_wait_s=0.2)) as live:
        for i in range(20):
            live.publish(frame(i), {})
        time.sleep(0.1)  # the encoder would have had time for a JPEG
        assert live.stats()["jpegs"] == 0  # nobody watching: no JPEG work
        with pytest.raises(urllib.error.HTTPError, match="503"):
            get(live.url + "snapshot.jpg")  # nothing published since the request
        started = time.monotonic()
        for i in range(50):  # a snapshot was asked for: encoding runs for a while
            live.publish(frame(i), {})
            time.sleep(0.002)
        wait_until(lambda: live.stats()["jpegs"] >= 1)
        assert live.stats()["jpegs"] <= 1 + (time.monotonic() - started) * 5


def test_port_in_use_and_close_frees_it():
    first = LiveView(port=0)
    with pytest.raises(SkyfuseError, match=f"cannot serve the live view on 127.0.0.1:{first.port}"):
        LiveView(port=first.port)
    first.close()
    with pytest.raises(urllib.error.URLError):
        get(first.url + "stats.json")
    second = LiveView(port=first.port)  # the port is free again
    assert second.port == first.port
    second.close()


def test_close_ends_open_streams_at_any_moment_of_a_busy_stream():
    # Closing while a frame is being sent once hung close() for good (on Python 3.11, asyncio.wait_for
    # could swallow the cancel); a few hundred closes at varied moments catch that race most runs.
    for attempt in range(200):
        live = LiveView(port=0, config=LiveViewConfig(max_fps=1000))
        publisher = publishing(live, rate_hz=1000)
        next(publisher)
        response = urllib.request.urlopen(live.url + "stream.mjpg", timeout=5)
        assert response.readline() == f"--{BOUNDARY}\r\n".encode()
        time.sleep(0.002 * (attempt % 5))
        closing = threading.Thread(target=live.close, daemon=True)
        closing.start()
        closing.join(timeout=10)
        assert not closing.is_alive(), f"close() hung on attempt {attempt}"
        response.read()  # returns at the end of the response; a stream left hanging would time out
        response.close()
        next(publisher, None)  # stops the publisher; closing again is a no-op


def test_with_a_token_only_requests_that_carry_it_get_video_or_stats(guarded_view):
    live = guarded_view
    bare = f"http://127.0.0.1:{live.port}/"
    for route in ("", "stream.mjpg", "snapshot.jpg", "stats.json"):
        for query in ("", "?token=wrong", "?token="):
            with pytest.raises(urllib.error.HTTPError, match="401"):
                get(bare + route + query)
    assert live.url == bare + "?token=s3cret%2F%2B", "the logged URL opens the page"
    content_type, page = get(live.url)
    assert content_type.startswith("text/html")
    assert b"/stream.mjpg?token=s3cret%2F%2B" in page and b"/stats.json?token=s3cret%2F%2B" in page
    content_type, body = get(bare + "snapshot.jpg" + live.query)
    assert content_type == "image/jpeg" and decode(body).shape == SHAPE
    with urllib.request.urlopen(bare + "stream.mjpg" + live.query, timeout=5) as stream:
        assert stream.readline() == f"--{BOUNDARY}\r\n".encode()
    request = urllib.request.Request(bare + "stats.json", headers={"Authorization": "Bearer s3cret/+"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert "fps" in json.loads(response.read())


def test_a_token_is_made_up_for_any_address_but_loopback():
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert access_token(loopback, None) is None
    first, second = access_token("0.0.0.0", None), access_token("192.168.1.20", None)
    assert first and second and first != second and len(first) >= 16
    assert access_token("ground-station.local", None), "a host name may resolve to any interface"
    assert access_token("0.0.0.0", "chosen") == "chosen" and access_token("127.0.0.1", "chosen") == "chosen"
    with pytest.raises(SkyfuseError, match="live view token is empty"):
        access_token("0.0.0.0", "")


def connect(live: LiveView, request: bytes = b"") -> socket.socket:
    """A raw client socket to `live` that has sent `request` (maybe only part of one)."""
    client = socket.create_connection(("127.0.0.1", live.port), timeout=5)
    client.sendall(request)
    return client


def test_connections_over_the_cap_get_503_with_retry_after():
    with LiveView(port=0, config=LiveViewConfig(max_connections=2, retry_after_s=7)) as live:
        held = [connect(live) for _ in range(2)]  # connected, no request yet: they count
        wait_until(lambda: live.stats()["connections"] == 2)
        with pytest.raises(urllib.error.HTTPError, match="503") as refused:
            get(live.url + "stats.json")
        assert refused.value.headers["Retry-After"] == "7"
        assert live.stats()["rejected"] == 1
        held.pop().close()
        wait_until(lambda: live.stats()["connections"] == 1)
        assert get(live.url + "stats.json") == ("application/json", b"{}")  # a freed slot is served
        held.pop().close()


def test_a_request_that_trickles_in_is_dropped_at_the_time_out():
    with LiveView(port=0, config=LiveViewConfig(request_timeout_s=0.5)) as live:
        client = connect(live, b"GET /stream.mjpg HTTP/1.1\r\n")
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - started < 5:  # a header line every 50 ms: each read gets something
                client.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.05)
        assert time.monotonic() - started < 2
        assert live.stats()["timed_out"] == 1 and live.stats()["connections"] == 0
        client.close()


def test_publish_stays_fast_with_viewers_that_never_read():
    config = LiveViewConfig(max_fps=100, max_connections=64, send_timeout_s=30)
    noise = np.random.default_rng(0).integers(0, 256, (256, 320, 3), np.uint8)  # large JPEGs fill buffers
    with LiveView(port=0, config=config) as live:
        stalled = [connect(live, b"GET /stream.mjpg HTTP/1.1\r\n\r\n") for _ in range(50)]
        wait_until(lambda: live.stats()["viewers"] == 50)
        times = []
        with urllib.request.urlopen(live.url + "stream.mjpg", timeout=5) as watching:
            for i in range(100):
                noise[0, 0] = i  # a new frame each time
                started = time.perf_counter()
                live.publish(noise, {})
                times.append(time.perf_counter() - started)
                time.sleep(0.01)
            assert watching.readline() == f"--{BOUNDARY}\r\n".encode()  # a viewer that reads is served
        # A publish that waited on a stalled viewer would wait out its 30 s send time-out; the bounds leave
        # room for a loaded 2-core machine, where a thread can wait several ms for the GIL or a core.
        assert max(times) < 1.0 and statistics.median(times) < 0.01
        assert live.stats()["jpegs"] >= 10 and live.stats()["viewers"] == 50
        for client in stalled:
            client.close()


def test_a_viewer_that_takes_no_frame_for_the_send_time_out_is_dropped():
    noise = np.random.default_rng(0).integers(0, 256, (256, 320, 3), np.uint8)
    with LiveView(port=0, config=LiveViewConfig(max_fps=100, send_timeout_s=0.3)) as live:
        client = connect(live, b"GET /stream.mjpg HTTP/1.1\r\n\r\n")
        wait_until(lambda: live.stats()["viewers"] == 1)

        def dropped() -> bool:
            noise[0, 0] += 1
            live.publish(noise, {})
            return live.stats()["stalled"] == 1

        wait_until(dropped)  # once the socket buffers are full, within the time-out
        assert live.stats()["viewers"] == 0 and live.stats()["connections"] == 0
        client.close()
