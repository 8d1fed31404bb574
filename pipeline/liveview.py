"""Live view for a ground station: the sink's latest frame and stats served over HTTP.

Routes: `/` (a page with the stream and the stats), `/stream.mjpg` (MJPEG, multipart/x-mixed-replace),
`/snapshot.jpg` (one fresh JPEG) and `/stats.json` (the dict the sink last published). With an access
token every route needs it, as `?token=...` (what a browser can send) or `Authorization: Bearer ...`;
anything else gets 401 and no video.

The pipeline never waits on a viewer: `publish` stores the stats and, only while someone is watching
and at most `max_fps` times a second, hands a copy of the image to an encoder thread (OpenCV releases
the GIL while it encodes). Each viewer's thread sends the newest JPEG when it is ready for one, so a
slow viewer skips frames instead of queueing them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from .errors import SkyfuseError

BOUNDARY = "skyfuseframe"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>skyfuse live view</title>
<style>body{background:#111;color:#ddd;font-family:monospace;margin:1em}img{max-width:100%}</style></head>
<body><img src="/stream.mjpg%QUERY%" alt="live stream"><pre id="stats">waiting for stats...</pre>
<script>
async function poll() {
  try { const r = await fetch("/stats.json%QUERY%", {cache: "no-store"});
        document.getElementById("stats").textContent = JSON.stringify(await r.json(), null, 2); }
  catch (e) { document.getElementById("stats").textContent = "no connection"; }
  setTimeout(poll, 1000);
}
poll();
</script></body></html>
"""


@dataclass
class LiveViewConfig:
    max_fps: float = 15.0  # JPEGs encoded per second at most, whatever the pipeline rate
    jpeg_quality: int = 80
    snapshot_wait_s: float = 1.0  # how long /snapshot.jpg waits for a fresh frame before serving the last
    snapshot_linger_s: float = 2.0  # keep encoding this long after a snapshot (a page polling snapshots)


def access_token(host: str, token: str | None) -> str | None:
    """The live view's token: `token` if given; none on a loopback address (only this machine can connect);
    a fresh random one on any other address, so a drone's video is never open to its whole network."""
    if token is not None:
        if not token:
            raise SkyfuseError("the live view token is empty; give one, or leave the option out")
        return token
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        loopback = False
    return None if loopback else secrets.token_urlsafe(16)


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


class LiveView:
    """HTTP server on `host:port` (port 0 picks a free one; `.url` says which, with the token) in background
    threads; with `token`, only requests that carry it are served."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: LiveViewConfig | None = None,
                 token: str | None = None):
        self.config = config or LiveViewConfig()
        self.token = token or None  # an empty token would admit an empty answer
        self.query = f"?token={quote(token, safe='')}" if self.token else ""
        self._cond = threading.Condition()
        self._pending: np.ndarray | None = None  # newest image waiting for the encoder
        self._jpeg: bytes | None = None
        self._jpeg_id = 0  # counts encoded JPEGs; viewers wait for it to change
        self._stats: dict = {}
        self._viewers = 0
        self._snapshot_until = 0.0
        self._next_encode = 0.0
        self._closed = False
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise SkyfuseError(f"cannot serve the live view on {host}:{port}: {exc.strerror or exc}") from exc
        self._server.live_view = self
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{host}:{self.port}/{self.query}"
        # a short poll interval lets close() stop the server within 50 ms
        self._threads = [threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                          name="liveview-http"),
                         threading.Thread(target=self._encode_loop, name="liveview-jpeg", daemon=True)]
        for thread in self._threads:
            thread.start()

    def publish(self, image: np.ndarray, stats: dict) -> None:
        """Offer the newest frame and stats; returns at once, copying the image only when it will be shown."""
        self._stats = stats
        now = time.monotonic()
        if self._closed or now < self._next_encode or not (self._viewers or now < self._snapshot_until):
            return
        self._next_encode = now + 1 / self.config.max_fps
        with self._cond:
            self._pending = image.copy()  # the caller may reuse its buffer once we return
            self._cond.notify_all()

    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                image, self._pending = self._pending, None
            ok, buffer = cv2.imencode(".jpg", image, params)
            if not ok:
                continue
            with self._cond:
                self._jpeg, self._jpeg_id = buffer.tobytes(), self._jpeg_id + 1
                self._cond.notify_all()

    def next_jpeg(self, after_id: int, timeout_s: float) -> tuple[int, bytes | None]:
        """(id, JPEG) of the first JPEG newer than `after_id`, or the newest one after `timeout_s`
        (None if there is none, or once the view is closed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._jpeg_id > after_id or self._closed, timeout_s)
            return (self._jpeg_id, None) if self._closed else (self._jpeg_id, self._jpeg)

    def snapshot(self) -> bytes | None:
        """A JPEG of a frame published from now on, or the newest one if none comes within the wait."""
        with self._cond:
            self._snapshot_until = time.monotonic() + self.config.snapshot_linger_s
            current = self._jpeg_id
        return self.next_jpeg(current, self.config.snapshot_wait_s)[1]

    def admits(self, given: str | None) -> bool:
        """Whether a request carrying `given` (None: no token) may see the view."""
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def stats_json(self) -> bytes:
        return json.dumps(self._stats, default=_json_default).encode()

    def viewer(self, delta: int) -> None:
        with self._cond:
            self._viewers += delta

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving: viewers are disconnected, the threads end and the port is free again."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer's connection must not keep the process alive
    allow_reuse_port = False  # never share the port with another process
    live_view: LiveView


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a viewer may stall a send before it is dropped

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        view = self.server.live_view
        url = urlsplit(self.path)
        route = url.path
        if not view.admits(self._token(url.query)):
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"live view: missing or wrong access token\n")
        elif route == "/":
            page = PAGE.replace("%QUERY%", view.query)  # the page's own requests carry the token too
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode())
        elif route == "/stats.json":
            self._send(HTTPStatus.OK, "application/json", view.stats_json())
        elif route == "/snapshot.jpg":
            jpeg = view.snapshot()
            if jpeg is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
            else:
                self._send(HTTPStatus.OK, "image/jpeg", jpeg)
        elif route == "/stream.mjpg":
            self._stream(view)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _token(self, query: str) -> str | None:
        """The token the request carries: `?token=` or an `Authorization: Bearer` header."""
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ").strip()
        return parse_qs(query).get("token", [None])[0]

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, view: LiveView) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        view.viewer(+1)
        try:
            sent = 0
            while not view.closed:
                jpeg_id, jpeg = view.next_jpeg(sent, timeout_s=0.5)
                if jpeg is None or jpeg_id == sent:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
                sent = jpeg_id
        except OSError:
            pass  # the viewer went away or stalled
        finally:
            view.viewer(-1)

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request would drown the pipeline's own log
