"""Live H.264 out: the recording's own encoded packets, sent on to viewers while they are recorded.

Encoded once: the recorder's encoder (pipeline/recorder.py) hands every packet it muxes into the file to a
`StreamOutput` as well, which muxes the same bytes into a second container whose "file" is the network:

- `udp://HOST:PORT`, format `rtp` (default): RTP/H.264 (RFC 6184, payload type 96, packets of at most
  1200 bytes), RTCP on PORT+1, and an SDP file describing it written beside the recording; what
  QGroundControl's "UDP h.264 Video Stream" and GStreamer's `udpsrc ! rtph264depay` read;
- `udp://HOST:PORT`, format `mpegts`: MPEG-TS in datagrams of 7 TS packets (1316 bytes), self-describing
  (no SDP needed; VLC, ffplay, QGroundControl's "MPEG-TS Video Stream");
- `rtsp://SERVER[:PORT]/PATH`: published (ANNOUNCE/RECORD) to an existing RTSP server such as MediaMTX,
  which serves viewers; skyfuse does not become a server. RTP inside it goes over TCP (`rtsp_transport`).

Why a thread and a bounded queue: the network must never stall the recording. `send` only copies the
packet into a queue (`queue_packets` deep) and never waits: a full queue drops the packet and counts it.
A dropped packet breaks every frame up to the next keyframe, so after any gap (a drop, a send error, a
reconnection) the thread sends nothing until the next keyframe, and counts what it skipped. Failures are
counted, not raised; an output that failed is opened again after 0.5, 1, 2 and then every 4 s.

Late viewers: every keyframe goes out with the sequence and picture parameter sets (SPS/PPS) in-band,
prepended from the encoder's extradata where the encoder put them only there, so a viewer that joins at
any moment starts decoding at the next keyframe (`--keyframe-interval` sets how far away that is). At
close an access unit delimiter and an end-of-stream NAL unit follow the last frame, so a viewer's
depacketizer (which completes a frame when the next one starts) gives the last frame out at once.

PyAV writes an RTSP output's header (the TCP connection and the OPTIONS/ANNOUNCE/SETUP/RECORD exchange)
holding the GIL, which would pause the whole sink while a server does not answer — a port that is closed,
filtered, or held by something that is not an RTSP server, or a server that hangs. So the thread first asks
the server for its OPTIONS itself, with a plain socket (which lets the GIL go) and `timeout_s`, and opens the
output only after an RTSP answer; the handshake after it is bounded by FFmpeg's socket time-out (the same
`timeout_s`). Only a server that answers OPTIONS at once and then stalls the rest can still pause the sink,
for up to `timeout_s` per attempt.
"""

from __future__ import annotations

import base64
import ipaddress
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av

from core.errors import SkyfuseError

FORMATS = ("rtp", "mpegts")  # what a udp:// stream carries
RTSP_TRANSPORTS = ("tcp", "udp")
RTP_PAYLOAD_TYPE = 96  # the first dynamic payload type, what receivers of H.264 expect by default
RTP_PACKET_BYTES = 1200  # fits any radio link, VPN or tunnel MTU without IP fragmentation
TS_PACKET_BYTES = 1316  # 7 MPEG-TS packets of 188 bytes per datagram
RTSP_DEFAULT_PORT = 554
RECONNECT_S = (0.5, 1.0, 2.0, 4.0)  # waits before each new attempt after a failure; the last repeats
MIN_BITRATE, MAX_BITRATE = 50_000, 200_000_000
# An access unit delimiter (a new frame starts: a depacketizer hands the last one on) and end of stream.
END_OF_STREAM = b"\x00\x00\x00\x01\x09\xf0" + b"\x00\x00\x00\x01\x0b"
SPS, PPS = 7, 8  # H.264 NAL unit types


@dataclass(frozen=True)
class StreamTarget:
    """Where the stream goes, as parsed from `--stream URL` and `--stream-format`."""

    url: str  # as given
    scheme: str  # udp | rtsp
    host: str
    port: int
    format: str  # rtp | mpegts (udp), rtsp

    @property
    def shown(self) -> str:
        """The URL without credentials, for logs and statistics."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return parts._replace(netloc=netloc).geturl()

    def muxer_url(self) -> str:
        """The URL FFmpeg's muxer opens: rtp:// for RTP over UDP (it adds RTCP on PORT+1), udp:// for
        MPEG-TS, both with a datagram size that avoids fragmentation unless the URL sets one."""
        if self.scheme == "rtsp":
            return self.url
        parts = urlsplit(self.url)
        size = RTP_PACKET_BYTES if self.format == "rtp" else TS_PACKET_BYTES
        query = parts.query if "pkt_size=" in parts.query else "&".join(filter(None, [parts.query,
                                                                                      f"pkt_size={size}"]))
        scheme = "rtp" if self.format == "rtp" else "udp"
        return parts._replace(scheme=scheme, query=query).geturl()


def parse_stream_url(url: str, fmt: str | None = None) -> StreamTarget:
    """Check `url` and the format it is sent in; SkyfuseError with one line saying what is wrong."""
    if fmt is not None and fmt not in FORMATS:
        raise SkyfuseError(f"stream format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    parts = urlsplit(url or "")
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise SkyfuseError(f"stream URL {url!r} has a bad port (1-65535)") from None
    if scheme == "udp":
        if not host or not port:
            raise SkyfuseError(f"stream URL {url!r} needs a host and a port: udp://HOST:PORT (e.g. "
                               "udp://192.168.1.20:5600)")
        if parts.path not in ("", "/"):
            raise SkyfuseError(f"stream URL {url!r}: a udp:// stream has no path, only udp://HOST:PORT")
        return StreamTarget(url, "udp", host, port, fmt or "rtp")
    if scheme == "rtsp":
        if not host or parts.path in ("", "/"):
            raise SkyfuseError(f"stream URL {url!r} needs a server and a path: rtsp://SERVER[:PORT]/PATH "
                               "(an existing RTSP server such as MediaMTX)")
        if fmt == "mpegts":
            raise SkyfuseError("an rtsp:// stream carries RTP: leave out --stream-format mpegts "
                               "(MPEG-TS goes to a udp:// address)")
        return StreamTarget(url, "rtsp", host, port or RTSP_DEFAULT_PORT, "rtsp")
    raise SkyfuseError(f"stream URL {url!r} must be udp://HOST:PORT (RTP or MPEG-TS) or "
                       "rtsp://SERVER/PATH (publish to an RTSP server)")


def check_rtsp_server(target: StreamTarget, timeout_s: float) -> None:
    """Ask `target`'s server for its OPTIONS; OSError saying why unless an RTSP answer comes within
    `timeout_s` (any status: what the server then asks for, such as credentials, is FFmpeg's to handle)."""
    request = f"OPTIONS {target.shown} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: skyfuse\r\n\r\n".encode()
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((target.host, target.port), timeout_s) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n" not in answer and len(answer) < 256:
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = connection.recv(256)
            except TimeoutError:
                raise OSError(f"{target.host}:{target.port} accepted the connection but did not answer "
                              f"an RTSP OPTIONS request within {timeout_s:g} s") from None
            if not chunk:
                break
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    if not status.startswith(b"RTSP/1.0 "):
        shown = status[:60].decode("ascii", "replace") or "nothing (connection closed)"
        raise OSError(f"{target.host}:{target.port} is not an RTSP server: it answered OPTIONS with "
                      f"{shown!r}")


def parse_bitrate(text: str | int) -> int:
    """Bits per second from `2M`, `500k`, `1.5M` or a plain number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not match:
        raise SkyfuseError(f"stream bitrate must be a number of bits/s such as 2M or 800k, got {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if not MIN_BITRATE <= value <= MAX_BITRATE:
        raise SkyfuseError(f"stream bitrate {text} is out of range (50k to 200M bits/s)")
    return int(value)


def parse_keyframe_interval(text: str | int | float) -> tuple[int | None, float | None]:
    """(frames, None) from `30`, or (None, seconds) from `1s` / `0.5s`."""
    value = str(text).strip()
    try:
        if value.endswith("s"):
            seconds = float(value[:-1])
            if 0.04 <= seconds <= 60:
                return None, seconds
        else:
            frames = int(value)
            if 1 <= frames <= 3600:
                return frames, None
    except ValueError:
        pass
    raise SkyfuseError(f"keyframe interval must be a number of frames (1-3600, e.g. 30) or of seconds "
                       f"(0.04s-60s, e.g. 1s), got {text!r}")


def sdp_path_for(recording: str | Path) -> Path:
    """Where an RTP stream's SDP is written: beside the recording, `RECORDING.sdp`."""
    recording = Path(recording)
    return recording.with_name(recording.name + ".sdp")


# --- H.264 bitstream: just enough to find parameter sets -------------------------------------------------

def annexb(extradata: bytes | None) -> bytes:
    """The encoder's parameter sets as Annex B NAL units with start codes: as they are when the encoder
    wrote them so (libx264, NVENC), converted when they are an avcC record (ISO 14496-15)."""
    if not extradata:
        return b""
    if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return extradata
    if extradata[0] != 1 or len(extradata) < 7:
        return b""
    units, pos = [], 5
    try:
        for kind_count in (extradata[5] & 0x1F, None):
            count = kind_count if kind_count is not None else extradata[pos]
            pos += 1
            for _ in range(count):
                size = int.from_bytes(extradata[pos:pos + 2], "big")
                units.append(extradata[pos + 2:pos + 2 + size])
                pos += 2 + size
    except IndexError:
        return b""
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in units if unit)


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B buffer, without start codes."""
    starts, pos = [], data.find(b"\x00\x00\x01")
    while pos >= 0:
        starts.append(pos + 3)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return [data[a:(b - 3 if i + 1 < len(starts) else len(data))].rstrip(b"\x00")
            for i, (a, b) in enumerate(zip(starts, [*starts[1:], len(data) + 3]))]


def nal_types(data: bytes) -> set[int]:
    return {unit[0] & 0x1F for unit in nal_units(data) if unit}


def write_sdp(path: Path, target: StreamTarget, parameter_sets: bytes) -> None:
    """The SDP of an RTP/H.264 stream to target (RFC 6184 section 8), for receivers that need one (ffplay,
    VLC: `ffplay -protocol_whitelist file,udp,rtp fused.mp4.sdp`)."""
    units = {unit[0] & 0x1F: unit for unit in nal_units(parameter_sets) if unit}
    fmtp = "packetization-mode=1"
    if SPS in units and PPS in units and len(units[SPS]) >= 4:
        sets = ",".join(base64.b64encode(units[k]).decode() for k in (SPS, PPS))
        fmtp += f"; sprop-parameter-sets={sets}; profile-level-id={units[SPS][1:4].hex()}"
    address = _address(target.host)
    family = "IP6" if ":" in address else "IP4"
    text = "\n".join(["v=0", f"o=- 0 0 IN {family} {address}", "s=skyfuse", f"c=IN {family} {address}",
                      "t=0 0", "a=tool:skyfuse", f"m=video {target.port} RTP/AVP {RTP_PAYLOAD_TYPE}",
                      f"a=rtpmap:{RTP_PAYLOAD_TYPE} H264/90000", f"a=fmtp:{RTP_PAYLOAD_TYPE} {fmtp}", ""])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise SkyfuseError(f"cannot write the stream's SDP file {path}: {exc.strerror or exc}") from exc


def _address(host: str) -> str:
    """An IP address for the SDP's connection line (a name is resolved; left as it is if it cannot be)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0]
    except OSError:
        return host


# --- the output ------------------------------------------------------------------------------------------

@dataclass
class StreamConfig:
    """What `--stream` and its options ask for; checked by `StreamOutput`."""

    url: str
    format: str | None = None  # rtp (default) | mpegts, for udp:// URLs
    rtsp_transport: str = "tcp"  # how an RTSP server receives the RTP packets: tcp (reliable) or udp
    sdp_path: Path | None = None  # where an RTP stream's SDP is written (None: not written)
    queue_packets: int = 60  # packets (frames) that may wait for the network, 2 s at 30 fps
    timeout_s: float = 2.0  # RTSP: the OPTIONS check and FFmpeg's socket I/O time-out
    check_server: bool = True  # RTSP: first ask the server for OPTIONS with a plain socket (see above)


@dataclass
class _Packet:
    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    time_base: Fraction
    after_gap: bool  # packets before this one were lost: wait for a keyframe


class StreamOutput:
    """Sends the packets of one H.264 stream of `size` (W, H) at `rate` to `config.url`, on its own thread.

    `parameter_sets` is the encoder's extradata (SPS/PPS). `send` never waits; `stats` says what was
    sent, dropped and failed; `close` sends what is queued (bounded by `timeout_s`), an end-of-stream
    NAL and closes the output."""

    def __init__(self, config: StreamConfig, rate: Fraction, size: tuple[int, int],
                 parameter_sets: bytes | None):
        self.config = config
        self.target = parse_stream_url(config.url, config.format)
        if config.rtsp_transport not in RTSP_TRANSPORTS:
            raise SkyfuseError(f"rtsp transport must be tcp or udp, got {config.rtsp_transport!r}")
        if config.queue_packets < 1:
            raise SkyfuseError("stream queue_packets must be at least 1")
        self.rate, self.size = Fraction(rate), size
        self.parameter_sets = annexb(parameter_sets)
        if self.target.format == "rtp" and config.sdp_path is not None:
            write_sdp(Path(config.sdp_path), self.target, self.parameter_sets)
        self.counts = {"packets_sent": 0, "bytes_sent": 0, "keyframes_sent": 0, "dropped_queue_full": 0,
                       "skipped": 0, "failures": 0, "reconnects": 0}
        self.last_error: str | None = None
        self._queue: queue.Queue[_Packet] = queue.Queue(maxsize=config.queue_packets)
        self._gap = False
        self._stopping = threading.Event()
        self._container: av.container.OutputContainer | None = None
        self._out = None
        self._connections = 0
        self._attempt = 0
        self._retry_at = 0.0
        self._last_pts: int | None = None
        self._thread = threading.Thread(target=self._loop, name="stream-out", daemon=True)
        self._thread.start()

    # The writer's side: never waits.

    def send(self, data: bytes, pts: int | None, dts: int | None, keyframe: bool,
             time_base: Fraction) -> bool:
        """Queue one encoded packet; False (dropped and counted) when the queue is full or closed."""
        if self._stopping.is_set():
            return False
        try:
            self._queue.put_nowait(_Packet(data, pts, dts, keyframe, Fraction(time_base), self._gap))
        except queue.Full:
            self.counts["dropped_queue_full"] += 1
            self._gap = True
            return False
        self._gap = False
        return True

    def stats(self) -> dict:
        return {"url": self.target.shown, "format": self.target.format, **self.counts,
                "queued": self._queue.qsize(), "last_error": self.last_error}

    def close(self) -> None:
        """Send what is queued, then the end of the stream, and close; waits at most `timeout_s` plus a
        few seconds for a slow network, after which the thread is left to finish (it is a daemon)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(self.config.timeout_s + 3.0)

    # The thread's side.

    def _loop(self) -> None:
        waiting_for_keyframe = True
        while True:
            try:
                packet = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            if packet.after_gap:
                waiting_for_keyframe = True
            if self._container is None and not self._connect():
                self.counts["skipped"] += 1
                waiting_for_keyframe = True
                continue
            if waiting_for_keyframe and not packet.keyframe:
                self.counts["skipped"] += 1
                continue
            waiting_for_keyframe = not self._mux(packet)
        self._finish()

    def _connect(self) -> bool:
        """Open the output unless a failed one is still waiting for its next attempt."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            if self.target.scheme == "rtsp" and self.config.check_server:  # fails here without the GIL
                check_rtsp_server(self.target, self.config.timeout_s)
            options = self._options()
            container = av.open(self.target.muxer_url(), "w", format=self.target.format, options=options)
            try:
                self._out = container.add_mux_stream("h264", rate=self.rate, width=self.size[0],
                                                     height=self.size[1])
                self._out.time_base = 1 / self.rate
            except Exception:
                container.close()
                raise
        except (OSError, av.FFmpegError, ValueError) as exc:
            self._failed(exc)
            return False
        self._container = container
        self.counts["reconnects"] += self._connections > 0
        self._connections += 1
        return True

    def _options(self) -> dict[str, str]:
        if self.target.format == "rtp":
            return {"payload_type": str(RTP_PAYLOAD_TYPE)}
        if self.target.format == "rtsp":
            return {"rtsp_transport": self.config.rtsp_transport,
                    "timeout": str(int(self.config.timeout_s * 1e6)), "pkt_size": str(RTP_PACKET_BYTES)}
        # Each packet leaves at once (not when the next fills a datagram), its PES with its length, so a
        # demuxer can hand the frame on as soon as its last byte arrives.
        return {"flush_packets": "1", "omit_video_pes_length": "0"}

    def _mux(self, item: _Packet) -> bool:
        """Send one packet (a keyframe with its parameter sets in-band); False after a failure."""
        data = item.data
        if item.keyframe and self.parameter_sets and SPS not in nal_types(data):
            data = self.parameter_sets + data
        packet = av.Packet(data)
        packet.pts, packet.dts, packet.time_base = item.pts, item.dts, item.time_base
        packet.is_keyframe = item.keyframe
        packet.stream = self._out
        try:
            self._container.mux(packet)
        except (OSError, av.FFmpegError, ValueError) as exc:
            self._failed(exc)
            return False
        self._attempt = 0
        self._last_pts = item.pts if item.pts is not None else self._last_pts
        self.counts["packets_sent"] += 1
        self.counts["bytes_sent"] += len(data)
        self.counts["keyframes_sent"] += item.keyframe
        return True

    def _failed(self, exc: Exception) -> None:
        """Count a failure, drop the output and schedule the next attempt."""
        self.counts["failures"] += 1
        self.last_error = str(exc)
        self._close_container()
        self._retry_at = time.monotonic() + RECONNECT_S[min(self._attempt, len(RECONNECT_S) - 1)]
        self._attempt += 1

    def _finish(self) -> None:
        if self._container is not None and self._last_pts is not None:
            end = av.Packet(END_OF_STREAM)
            end.pts = end.dts = self._last_pts + 1
            end.time_base = 1 / self.rate
            end.stream = self._out
            try:
                self._container.mux(end)
            except (OSError, av.FFmpegError, ValueError) as exc:
                self.counts["failures"] += 1
                self.last_error = str(exc)
        self._close_container()

    def _close_container(self) -> None:
        container, self._container, self._out = self._container, None, None
        if container is not None:
            try:
                container.close()
            except (OSError, av.FFmpegError):
                pass  # the peer is gone; nothing more to send
