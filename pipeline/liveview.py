"""Live view for a ground station: the sink's latest frame and stats served over HTTP.

Routes: `/` (a page with the stream and the stats), `/stream.mjpg` (MJPEG, multipart/x-mixed-replace),
`/snapshot.jpg` (one fresh JPEG) and `/stats.json` (the dict the sink last published). With an access
token every route needs it, as `?token=...` (what a browser can send) or `Authorization: Bearer ...`;
anything else gets 401 and no video.

Viewers must never slow the recording, whatever they do, so what they cost the sink is bounded:
- `publish` never waits: it stores the stats and, only while someone is watching and at most `max_fps`
  times a second, hands a copy of the image to an encoder thread (OpenCV releases the GIL while it
  encodes). Each frame is encoded once, and that JPEG is shared by every viewer.
- One thread serves every connection (asyncio), at most `max_connections` at once; the next one gets 503
  with Retry-After. A client that has not sent its whole request head within `request_timeout_s` is
  dropped (slowloris), as is a viewer that takes no frame for `send_timeout_s`.
- A viewer is sent the newest JPEG once it has taken the previous one, so a slow viewer skips frames
  instead of queueing them.
`stats()` says how many connections and viewers there are, and how many were refused or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from core.errors import SkyfuseError

BOUNDARY = "skyfuseframe"
HEAD_LIMIT = 16384  # bytes of request line and headers; a longer head gets 431
REFUSE_LINGER_S = 1.0  # a refused client may still be sending its request: read it so that it gets the 503
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
    max_connections: int = 32  # open at once (a page holds its stream and polls the stats); more get 503
    retry_after_s: int = 5  # what a refused client is told to wait before it tries again
    request_timeout_s: float = 5.0  # for the whole request head, however slowly it trickles in
    send_timeout_s: float = 10.0  # a viewer that takes no frame for this long is dropped


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


def _response_head(status: HTTPStatus, content_type: str, length: int | None = None,
                   extra: tuple[str, ...] = ()) -> bytes:
    """Status line and headers; without `length` the body ends when the connection closes (HTTP/1.0)."""
    lines = [f"HTTP/1.0 {status.value} {status.phrase}", f"Content-Type: {content_type}",
             "Cache-Control: no-store", "Connection: close", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _response(status: HTTPStatus, content_type: str, body: bytes, extra: tuple[str, ...] = ()) -> bytes:
    return _response_head(status, content_type, len(body), extra) + body


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, target, headers by lower-case name) of a request head, or None if it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


class LiveView:
    """HTTP server on `host:port` (port 0 picks a free one; `.url` says which, with the token) on a
    background thread; with `token`, only requests that carry it are served."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: LiveViewConfig | None = None,
                 token: str | None = None):
        self.config = config or LiveViewConfig()
        self.token = token or None  # an empty token would admit an empty answer
        self.query = f"?token={quote(token, safe='')}" if self.token else ""
        self._cond = threading.Condition()  # between publish and the encoder thread only
        self._pending: np.ndarray | None = None  # newest image waiting for the encoder
        self._stats: dict = {}
        self._next_encode = 0.0
        self._closed = False
        # read by publish on the caller's thread, written on the server's: single values, no lock needed
        self._viewers = 0
        self._snapshot_until = 0.0
        # the server thread's own state
        self._jpeg: bytes | None = None
        self._jpeg_id = 0  # counts encoded JPEGs
        self._connections = 0  # admitted, not yet closed
        self._counts = {"rejected": 0, "timed_out": 0, "stalled": 0}
        self._tasks: set[asyncio.Task] = set()  # every connection's, refused ones too, to end them on close
        try:
            sock = socket.create_server((host, port))
        except OSError as exc:
            raise SkyfuseError(f"cannot serve the live view on {host}:{port}: {exc.strerror or exc}") from exc
        self.host, self.port = sock.getsockname()[:2]
        self.url = f"http://{host}:{self.port}/{self.query}"
        self._loop = asyncio.new_event_loop()
        self._fresh = asyncio.Event()  # set, and replaced, when a new JPEG is there
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=sock, limit=HEAD_LIMIT))
        self._http = threading.Thread(target=self._loop.run_forever, name="liveview-http", daemon=True)
        self._encoder = threading.Thread(target=self._encode_loop, name="liveview-jpeg", daemon=True)
        self._http.start()
        self._encoder.start()

    def publish(self, image: np.ndarray, stats: dict) -> None:
        """Offer the newest frame and stats; returns at once, copying the image only when it will be shown."""
        self._stats = stats
        now = time.monotonic()
        if self._closed or now < self._next_encode or not (self._viewers or now < self._snapshot_until):
            return
        self._next_encode = now + 1 / self.config.max_fps
        copy = image.copy()  # the caller may reuse its buffer once we return
        with self._cond:
            self._pending = copy
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        """Connections and viewers now; since the start, connections refused at the cap (`rejected`),
        dropped for not finishing their request in time (`timed_out`) or for taking no frame (`stalled`),
        and JPEGs encoded."""
        return {"connections": self._connections, "viewers": self._viewers, **self._counts,
                "jpegs": self._jpeg_id}

    def admits(self, given: str | None) -> bool:
        """Whether a request carrying `given` (None: no token) may see the view."""
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def close(self) -> None:
        """Stop serving: viewers are disconnected, the threads end and the port is free again."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._encoder.join()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._http.join()
        self._loop.close()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # the encoder thread

    def _encode_loop(self) -> None:
        params = [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                image, self._pending = self._pending, None
            ok, buffer = cv2.imencode(".jpg", image, params)
            if ok:
                self._loop.call_soon_threadsafe(self._new_jpeg, buffer.tobytes())

    # the server thread

    def _new_jpeg(self, jpeg: bytes) -> None:
        self._jpeg, self._jpeg_id = jpeg, self._jpeg_id + 1
        fresh, self._fresh = self._fresh, asyncio.Event()
        fresh.set()

    async def _shutdown(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: refuse it over the cap, else read its request within the time-out and answer."""
        task = asyncio.current_task()
        self._tasks.add(task)
        writer.transport.set_write_buffer_limits(high=0)  # drain() waits until the kernel took everything
        admitted = self._connections < self.config.max_connections
        if admitted:
            self._connections += 1
        try:
            if not admitted:
                await self._refuse(reader, writer)
                return
            try:
                async with asyncio.timeout(self.config.request_timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                self._counts["timed_out"] += 1
                return
            except asyncio.LimitOverrunError:
                writer.write(_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "text/plain",
                                       b"request head too large\n"))
                return
            await self._answer(head, writer)
        except TimeoutError:
            self._counts["stalled"] += 1
        except (asyncio.IncompleteReadError, OSError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # close() ends it; a task that ends cancelled makes Python 3.11's stream callback log it
        finally:
            if admitted:
                self._connections -= 1
            self._tasks.discard(task)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read would hold a graceful close forever
            else:
                writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._counts["rejected"] += 1
        writer.write(_response(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                               b"live view: too many connections, try again later\n",
                               (f"Retry-After: {self.config.retry_after_s}",)))
        writer.write_eof()
        with contextlib.suppress(TimeoutError):  # closing with its request unread would reset the connection
            async with asyncio.timeout(REFUSE_LINGER_S):
                await self._discard(reader)

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        while await reader.read(4096):
            pass

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Write `data`; a client that has not taken it all within the send time-out raises TimeoutError."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow close()'s cancel when the drain
        # finishes at that moment, and the stream then waits for a frame that never comes
        writer.write(data)
        async with asyncio.timeout(self.config.send_timeout_s):
            await writer.drain()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        request = _parse_head(head)
        if request is None:
            await self._send(writer, _response(HTTPStatus.BAD_REQUEST, "text/plain", b"bad request\n"))
            return
        method, target, headers = request
        url = urlsplit(target)
        if method != "GET":
            await self._send(writer, _response(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain",
                                               b"only GET\n", ("Allow: GET",)))
        elif not self.admits(self._token(url.query, headers)):
            await self._send(writer, _response(HTTPStatus.UNAUTHORIZED, "text/plain",
                                               b"live view: missing or wrong access token\n"))
        elif url.path == "/":
            page = PAGE.replace("%QUERY%", self.query)  # the page's own requests carry the token too
            await self._send(writer, _response(HTTPStatus.OK, "text/html; charset=utf-8", page.encode()))
        elif url.path == "/stats.json":
            body = json.dumps(self._stats, default=_json_default).encode()
            await self._send(writer, _response(HTTPStatus.OK, "application/json", body))
        elif url.path == "/snapshot.jpg":
            jpeg = await self._snapshot()
            if jpeg is None:
                await self._send(writer, _response(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain",
                                                   b"no frame yet\n"))
            else:
                await self._send(writer, _response(HTTPStatus.OK, "image/jpeg", jpeg))
        elif url.path == "/stream.mjpg":
            await self._stream(writer)
        else:
            await self._send(writer, _response(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n"))

    @staticmethod
    def _token(query: str, headers: dict[str, str]) -> str | None:
        """The token the request carries: `?token=` or an `Authorization: Bearer` header."""
        header = headers.get("authorization", "")
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ").strip()
        return parse_qs(query).get("token", [None])[0]

    async def _snapshot(self) -> bytes | None:
        """A JPEG of a frame published from now on, or the newest one if none comes within the wait."""
        self._snapshot_until = time.monotonic() + self.config.snapshot_linger_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.snapshot_wait_s):
                await self._fresh.wait()
        return self._jpeg

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        await self._send(writer, _response_head(HTTPStatus.OK,
                                                f"multipart/x-mixed-replace; boundary={BOUNDARY}"))
        self._viewers += 1
        try:
            sent = 0
            while True:
                if self._jpeg_id == sent:
                    await self._fresh.wait()
                    continue
                sent, jpeg = self._jpeg_id, self._jpeg  # the newest: frames since the last one are skipped
                await self._send(writer, f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
        finally:
            self._viewers -= 1
