"""The wire format and the sockets that carry it: the only module that knows how a frame is encoded.

A message is a ZeroMQ multipart message: one JSON header part, then one raw buffer part per image,
sent without copying. The header names the protocol and its version, the stream, sequence number,
capture time, latency stamps, JSON-able metadata, and for each buffer its name, pixel format and shape.
Receivers check every field against the buffer lengths; a message that fails any check is dropped and
counted by reason (`malformed:<reason>`), never raised into a stage. The header is parsed only once it is
known to be bounded (nesting depth, digits per number), because Python's JSON parser recurses per nesting
level and refuses integers of more than 4300 digits by raising; NaN and infinities are refused too. Nothing
is ever unpickled. What a well-formed message may contain is the frame protocol's business
(pipeline.frame): each input port holds its stream to it and counts what breaks it as `invalid:<reason>`.

Memory is bounded before allocation where ZeroMQ allows it: a receiving socket's ZMQ_MAXMSGSIZE (which
libzmq applies to each part) is the largest part the stream can carry at its size, so a larger part makes
libzmq drop the connection before buffering it; the limit for the whole message is checked once it is
read. libzmq has no limit on the number of parts of one message, so a peer can still make it buffer many
parts under the per-part limit: link keys (CURVE) are what keep strangers off a link.

A link is a DEALER (output) -> ROUTER (input) pair: frames flow one way, and the one message that flows
back acknowledges end-of-stream once the receiver has read everything before it. A sender waits for that
acknowledgement before it exits, because ZeroMQ discards frames still in transit when their sender's
process ends while the receiver's queue is full (back-pressure in lossless mode).

Each port stamps the frames it passes (wall-clock ns under its `stamp` name), so latency can be split by
hop. Ports: an input port (`Receiver`) binds its endpoint and an output port (`Sender`) connects to it, so
a capture process on a drone connects out to a ground station that listens. Endpoints are ZeroMQ
addresses: `ipc:///path` between processes on one machine, `tcp://host:port` between machines. Given
link keys (pipeline.keys), a link is CURVE-encrypted and the receiver admits only the deployment's senders.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections import Counter, deque
from typing import TYPE_CHECKING

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from core.errors import SkyfuseError

from .frame import (
    PIXEL_FORMATS,
    STREAMS,
    EndOfStream,
    Frame,
    ProtocolError,
    StreamCheck,
    image_bytes,
    pixel_format_of,
)
from .keys import RECEIVER, SENDER, LinkKeys
from .stage import log

if TYPE_CHECKING:
    from .stage import StopFlag

MAGIC = "skyfuse"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_JSON_DEPTH = 10  # an end-of-stream's statistics nest 6 deep
MAX_NUMBER_DIGITS = 24  # an int64 has 19 digits, a float's shortest repr at most 21 in a row
MAX_DIMENSION = 16384
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # an 8K RGB frame is 100 MB; used where the size is unknown
ACK = b"skyfuse-eos-ack"
STOP_GRACE_S = 0.5  # after a stop request, how long a sender still waits for its frames to leave

# Queue policies, named as a port's behaviour when its queue is full.
BLOCK = "block"  # wait for room: back-pressure, nothing lost (lossless mode)
DROP_OLDEST = "drop_oldest"  # make room by dropping the oldest waiting frame: what comes out is recent
DROP_NEWEST = "drop_newest"  # refuse the frame that does not fit: never wait


class WireError(ValueError):
    """A message that does not follow the wire format; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def encode(message: Frame | EndOfStream) -> list:
    """Header bytes followed by the image buffers (as memoryviews, not copies)."""
    if isinstance(message, EndOfStream):
        header = {"magic": MAGIC, "version": VERSION, "kind": "eos", "stream": message.stream,
                  "meta": message.meta, "parts": []}
        return [json.dumps(header).encode()]
    images = {"image": message.image, **message.extras}
    parts, buffers = [], []
    for name, image in images.items():
        image = np.ascontiguousarray(image)
        parts.append({"name": name, "format": pixel_format_of(image), "shape": list(image.shape)})
        buffers.append(memoryview(image).cast("B"))
    header = {"magic": MAGIC, "version": VERSION, "kind": "frame", "stream": message.stream,
              "seq": message.seq, "capture_ns": message.capture_ns, "stamps": message.stamps,
              "meta": message.meta, "parts": parts}
    return [json.dumps(header).encode(), *buffers]


def decode(parts: list, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Frame | EndOfStream:
    """Rebuild a message from its parts (bytes or zmq.Frame); raises WireError naming what is wrong."""
    if not parts:
        raise WireError("empty", "message has no parts")
    buffers = [memoryview(p.buffer if isinstance(p, zmq.Frame) else p) for p in parts]
    total = sum(b.nbytes for b in buffers)
    if total > max_message_bytes:
        raise WireError("oversized", f"{total} bytes exceeds the limit of {max_message_bytes}")
    if buffers[0].nbytes > MAX_HEADER_BYTES:
        raise WireError("bad_header", f"header of {buffers[0].nbytes} bytes is too large")
    header = _parse_header(bytes(buffers[0]))
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise WireError("bad_header", "not a skyfuse message")
    if header.get("version") != VERSION:
        raise WireError("bad_version", f"version {header.get('version')!r}, expected {VERSION}")
    stream, meta, specs = header.get("stream"), header.get("meta", {}), header.get("parts")
    if not isinstance(stream, str) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise WireError("bad_header", "stream, meta or parts missing or of the wrong type")
    kind = header.get("kind")
    if kind == "eos":
        if len(buffers) != 1:
            raise WireError("part_count", "end-of-stream message carries buffers")
        return EndOfStream(stream=stream, meta=meta)
    if kind != "frame":
        raise WireError("bad_kind", f"unknown message kind {kind!r}")
    if len(specs) != len(buffers) - 1 or not specs:
        raise WireError("part_count", f"header lists {len(specs)} buffers, message has {len(buffers) - 1}")
    seq, capture_ns, stamps = header.get("seq"), header.get("capture_ns"), header.get("stamps", {})
    if not _is_int(seq) or not _is_int(capture_ns) or not isinstance(stamps, dict):
        raise WireError("bad_header", "seq, capture_ns or stamps missing or of the wrong type")
    if not all(isinstance(k, str) and _is_int(v) for k, v in stamps.items()):
        raise WireError("bad_header", "stamps must map event names to integer ns")
    images = {}
    for spec, buffer in zip(specs, buffers[1:]):
        name, image = _decode_image(spec, buffer)
        if name in images:
            raise WireError("bad_header", f"image {name!r} appears twice")
        images[name] = image
    if "image" not in images:
        raise WireError("bad_header", "no part named 'image'")
    image = images.pop("image")
    return Frame(stream=stream, seq=seq, capture_ns=capture_ns, image=image, stamps=stamps, meta=meta,
                 extras=images)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_LONG_NUMBER = re.compile(rb"[0-9]{%d}" % (MAX_NUMBER_DIGITS + 1))
_OPENING, _CLOSING = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _parse_header(raw: bytes):
    """The header's JSON, checked to be bounded before the parser sees it; WireError otherwise."""
    skeleton = _JSON_STRING.sub(b'""', raw)  # brackets and digits inside strings do not count
    if _LONG_NUMBER.search(skeleton):
        raise WireError("bad_header", f"a number of more than {MAX_NUMBER_DIGITS} digits")
    chars = np.frombuffer(skeleton, np.uint8)
    depth = np.cumsum(np.isin(chars, _OPENING).astype(np.int32) - np.isin(chars, _CLOSING))
    if depth.size and depth.max() > MAX_JSON_DEPTH:
        raise WireError("bad_header", f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ValueError as exc:  # not JSON, not UTF-8, or a number refused below
        raise WireError("bad_header", f"header is not JSON ({exc})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number the wire carries")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not finite")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode_image(spec, buffer: memoryview) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict):
        raise WireError("bad_header", "part description is not an object")
    name, fmt, shape = spec.get("name"), spec.get("format"), spec.get("shape")
    if not isinstance(name, str):
        raise WireError("bad_header", "part has no name")
    if fmt not in PIXEL_FORMATS:
        raise WireError("bad_format", f"unknown pixel format {fmt!r}")
    dtype, channels = PIXEL_FORMATS[fmt]
    expected_rank = 2 if channels == 1 else 3
    if (not isinstance(shape, list) or len(shape) != expected_rank or not all(_is_int(d) for d in shape)
            or (channels > 1 and shape[2] != channels)):
        raise WireError("bad_shape", f"shape {shape!r} does not fit pixel format {fmt}")
    if not all(0 < d <= MAX_DIMENSION for d in shape[:2]):
        raise WireError("bad_shape", f"shape {shape} outside 1..{MAX_DIMENSION}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if buffer.nbytes != expected:
        raise WireError("size_mismatch",
                        f"{name}: buffer has {buffer.nbytes} bytes, {fmt} {shape} needs {expected}")
    return name, np.frombuffer(buffer, dtype=dtype).reshape(shape)


REJECTION_EVENTS_NAMED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication",
                          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
                          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake"}
REJECTION_EVENTS = sum(REJECTION_EVENTS_NAMED)


class RateLimitedLog:
    """Log lines about one recurring event: the first at once, then a count at most every `interval_s`,
    so a peer that retries every few milliseconds cannot flood the log."""

    def __init__(self, where: str, interval_s: float = 10.0):
        self.where, self.interval_s = where, interval_s
        self.unlogged, self.next_line = 0, 0.0

    def note(self, message: str) -> None:
        self.unlogged += 1
        now = time.monotonic()
        if now >= self.next_line:
            more = f" ({self.unlogged} times since the last line)" if self.unlogged > 1 else ""
            log("wire", f"{self.where}: {message}{more}")
            self.unlogged, self.next_line = 0, now + self.interval_s


_authenticator = None  # this process's ZAP handler, started by the first receiver with link keys


def _context() -> zmq.Context:
    return zmq.Context.instance()


def _admit_senders_of(keys: LinkKeys) -> None:
    """Start this process's authenticator: CURVE connections are admitted only from the senders whose
    public keys are in the key folder (without a ZAP handler libzmq would admit any client)."""
    global _authenticator
    if _authenticator is None:
        from zmq.auth.thread import ThreadAuthenticator

        _authenticator = ThreadAuthenticator(_context())
        _authenticator.start()
    _authenticator.configure_curve(domain="*", location=str(keys.folder))


def close_transport() -> None:
    """Wait (up to each socket's linger time) until queued frames have left, then stop ZeroMQ. Call once
    at the end of a stage process after closing its ports: zero-copy frames are sent from ZeroMQ's I/O
    thread, and exiting before it is done would lose them or let it read freed memory."""
    global _authenticator
    if _authenticator is not None:
        _authenticator.stop()
        _authenticator = None
    zmq.Context.instance().term()


def message_limits(stream: str, size: tuple[int, int] | None) -> tuple[int, int]:
    """(largest part, largest message) in bytes a receiver of `stream` at `size` (W, H) lets through: a
    part is at most the stream's largest image plus MAX_HEADER_BYTES of room (the header part, and what
    the transport adds to a part: CURVE encryption makes it a few dozen bytes longer before libzmq checks
    it), a message a header and every image of the stream at most that large (the protocol keeps extras
    within the image's size); DEFAULT_MAX_MESSAGE_BYTES for both if size is None."""
    if size is None:
        return DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES
    image = image_bytes(stream, size)
    return image + MAX_HEADER_BYTES, MAX_HEADER_BYTES + image * (1 + len(STREAMS[stream].extras))


class Sender:
    """An output port (DEALER, connects) with queue policy `block` (lossless mode: waits while the receiver
    is behind, back-pressure) or `drop_newest` (live mode: never waits; a frame that finds the queue full
    is dropped and counted). Its routing id is random and kept across reconnections, so the receiver knows
    it as the same sender (only a sender of a stream may end it)."""

    def __init__(self, endpoint: str, *, policy: str, stamp: str = "sent", high_water_mark: int = 4,
                 stop: StopFlag | None = None, keys: LinkKeys | None = None):
        if policy not in (BLOCK, DROP_NEWEST):
            raise ValueError(f"an output port's policy is {BLOCK} or {DROP_NEWEST}, not {policy!r}")
        self.endpoint, self.policy, self.stop, self.stamp = endpoint, policy, stop, stamp
        self.drops: Counter[str] = Counter()
        secret = keys.secret(SENDER) if keys is not None else None  # before a socket exists to leak
        self.socket = _context().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.SNDHWM, high_water_mark)
        self.socket.setsockopt(zmq.ROUTING_ID, f"skyfuse-{uuid.uuid4().hex}".encode())
        if keys is not None:  # CURVE client: talks only to the receiver that holds the receiver secret
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = keys.sender_public
            self.socket.curve_serverkey = keys.receiver_public
        self.socket.connect(endpoint)

    @property
    def lossless(self) -> bool:
        return self.policy == BLOCK

    def send(self, frame: Frame) -> bool:
        """Send a frame; False when live mode dropped it (or a stop was requested while waiting)."""
        if self.policy == BLOCK:
            # Wait for room in slices so that a stop request is honoured while the receiver is stalled.
            while not self.socket.poll(100, zmq.POLLOUT):
                if self.stop is not None and self.stop.is_set():
                    return False
        frame.stamp(self.stamp)
        try:
            self.socket.send_multipart(encode(frame), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.drops["send_queue_full"] += 1
            return False
        return True

    def send_eos(self, eos: EndOfStream, timeout_ms: int = 5000) -> bool:
        """Send end-of-stream and wait until the receiver has read it and everything before it; False if
        that did not happen within `timeout_ms` (after a stop request: within STOP_GRACE_S)."""
        deadline = time.monotonic() + timeout_ms / 1000
        if not self._wait_for(zmq.POLLOUT, deadline):
            return False
        self.socket.send_multipart(encode(eos))
        return self._wait_for(zmq.POLLIN, deadline) and self.socket.recv() == ACK

    def _wait_for(self, event: int, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self.stop is not None and self.stop.is_set():  # asked to stop: wait only a moment more
                deadline = min(deadline, time.monotonic() + STOP_GRACE_S)
            if self.socket.poll(100, event):
                return True
        return False

    def close(self) -> None:
        """Close the port. Frames still queued get time to leave (they travel from ZeroMQ's I/O thread):
        in lossless mode up to 30 s, since the receiver may still be working through its backlog; in
        live mode 1 s; after a stop request only a moment, so shutting down is never held up."""
        if self.stop is not None and self.stop.is_set():
            linger_ms = int(STOP_GRACE_S * 1000)
        else:
            linger_ms = 30_000 if self.policy == BLOCK else 1000
        self.socket.close(linger=linger_ms)


class Receiver:
    """An input port (ROUTER, binds) for one stream, with a named queue policy.

    - `block` (lossless): one message is taken from the socket per `recv`, so a slow stage pushes back on
      its sender.
    - `drop_oldest` (live): every waiting message is taken into a queue of `queue_size`; when it is full
      the oldest frame is dropped and counted, so what comes out is always recent and latency stays flat.
    Malformed messages are dropped and counted as `malformed:<reason>`, messages the frame protocol does
    not allow on this stream as `invalid:<reason>` (`StreamCheck`; `size` (W, H) is the stream's size
    where the run knows it, which also sets the byte limits); `last_error` keeps the detail. Only a peer
    that has sent frames of the stream may end it (`invalid:eos_from_stranger`), unless nobody has: a
    stream may end without a frame.
    """

    def __init__(self, endpoint: str, *, stream: str, policy: str, stamp: str = "received",
                 queue_size: int = 2, size: tuple[int, int] | None = None,
                 max_message_bytes: int | None = None, high_water_mark: int = 4,
                 keys: LinkKeys | None = None):
        if policy not in (BLOCK, DROP_OLDEST):
            raise ValueError(f"an input port's policy is {BLOCK} or {DROP_OLDEST}, not {policy!r}")
        self.endpoint, self.policy, self.stamp = endpoint, policy, stamp
        self.check = StreamCheck(stream, size)
        max_part, self.max_message_bytes = ((max_message_bytes, max_message_bytes) if max_message_bytes
                                            else message_limits(stream, size))
        self.queue_size = queue_size
        self.drops: Counter[str] = Counter()
        self.last_error = ""
        self.senders: set[bytes] = set()  # routing ids of the peers that sent frames of the stream
        self.queue: deque[Frame | EndOfStream] = deque()
        secret = keys.secret(RECEIVER) if keys is not None else None  # before a socket exists to leak
        self.socket = _context().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.RCVHWM, high_water_mark)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_part)  # per part: libzmq drops the peer, allocates nothing
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a sender that reconnects keeps its routing id
        self.received = 0  # messages taken off the wire but ends of stream (`skyfuse run` reconciles them
        # with what the sender sent)
        self.rejected = 0  # peers refused at the handshake (no or wrong keys): counted and logged
        self.peers_dropped = 0  # connections lost before the end of the stream (a part over the limit)
        self._peer_log = RateLimitedLog(f"input {endpoint}")
        self._ended = False
        if keys is not None:  # CURVE server: encrypted, and only the key folder's senders get in
            _admit_senders_of(keys)
            self.socket.curve_server = True
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = keys.receiver_public
        self._monitor = self.socket.get_monitor_socket(REJECTION_EVENTS | zmq.EVENT_DISCONNECTED)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise SkyfuseError(f"cannot listen on {endpoint}: {exc}") from None

    @property
    def lossless(self) -> bool:
        return self.policy == BLOCK

    def recv(self, timeout_ms: int) -> Frame | EndOfStream | None:
        """The next message, or None if nothing valid arrived within `timeout_ms`."""
        self._note_peers()
        if not self.queue:
            if not self.socket.poll(timeout_ms, zmq.POLLIN):
                return None
            self._take_one()
        if self.policy == DROP_OLDEST:
            while self.socket.poll(0, zmq.POLLIN):
                self._take_one()
        return self.queue.popleft() if self.queue else None

    def pending(self) -> bool:
        """Whether a message is ready without waiting."""
        return bool(self.queue) or bool(self.socket.poll(0, zmq.POLLIN))

    def _take_one(self) -> None:
        peer, *parts = self.socket.recv_multipart(copy=False)
        try:
            message = decode(parts, self.max_message_bytes)
            self.check.check(message)
        except (WireError, ProtocolError) as exc:
            kind = "malformed" if isinstance(exc, WireError) else "invalid"
            self.drops[f"{kind}:{exc.reason}"] += 1
            self.received += 1  # it arrived: its loss is counted under its reason, not in transit
            self.last_error = str(exc)
            return
        if isinstance(message, Frame):
            self.senders.add(peer.bytes)
            self.received += 1
            message.stamp(self.stamp)
        elif self.senders and peer.bytes not in self.senders:
            self.drops["invalid:eos_from_stranger"] += 1
            self.last_error = f"end of {message.stream} from a peer that sent none of its frames"
            return
        else:
            self.socket.send_multipart([peer.bytes, ACK], flags=zmq.NOBLOCK)
            self._ended = True
        self.queue.append(message)
        if self.policy == DROP_OLDEST and len(self.queue) > self.queue_size:
            oldest_frame = next((m for m in self.queue if isinstance(m, Frame)), None)
            if oldest_frame is not None:
                self.queue.remove(oldest_frame)
                self.drops["queue_full_drop_oldest"] += 1

    def _note_peers(self) -> None:
        """Count what libzmq did to peers since the last call, and log it without flooding the log: a
        refused handshake (a plain sender, an unknown key, a sender that expects another receiver key),
        and a connection dropped before the end of the stream — libzmq drops a peer whose message part is
        over the limit, before allocating it, so that message (and what was queued behind it on that
        connection) never arrives to be counted one by one."""
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                if not self._ended:
                    self.peers_dropped += 1
                    self._peer_log.note("lost a peer's connection before the end of the stream (a message "
                                        "part over the size limit, or the peer went away)")
                continue
            self.rejected += 1
            failed = REJECTION_EVENTS_NAMED.get(event, "handshake")
            self._peer_log.note(f"refused a peer ({failed} failed): it has no or other link keys")

    def close(self) -> None:
        self._note_peers()
        self.socket.disable_monitor()
        self._monitor.close()
        self.socket.close()
