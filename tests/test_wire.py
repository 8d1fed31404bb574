"""Wire format: round trip over real sockets, and every malformed field rejected and counted."""

import json
import threading
import time
import uuid

import numpy as np
import pytest
import zmq

from core.errors import SkyfuseError
from pipeline.frame import EndOfStream, Frame
from pipeline.keys import SENDER, LinkKeys, create_keys, link_keys, load_keys
from pipeline.wire import (
    ACK,
    BLOCK,
    DROP_NEWEST,
    DROP_OLDEST,
    VERSION,
    Receiver,
    Sender,
    WireError,
    close_transport,
    decode,
    encode,
)


def make_frame(**overrides) -> Frame:
    rng = np.random.default_rng(0)
    values = dict(stream="visible", seq=7, capture_ns=123_456_789,
                  image=rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
                  stamps={"capture": 1}, meta={"fps": 30.0})
    values.update(overrides)
    return Frame(**values)


def header_of(parts) -> dict:
    return json.loads(bytes(parts[0]))


def with_header(message_parts, **changes) -> list:
    header = header_of(message_parts)
    header.update(changes)
    return [json.dumps(header).encode(), *[bytes(p) for p in message_parts[1:]]]


@pytest.fixture
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/{uuid.uuid4().hex[:8]}.sock"


def test_round_trip_keeps_pixels_identity_and_metadata():
    frame = make_frame(extras={"thermal": np.random.default_rng(1).integers(0, 65535, (12, 16), np.uint16)})
    decoded = decode([bytes(p) for p in encode(frame)])
    assert (decoded.stream, decoded.seq, decoded.capture_ns) == ("visible", 7, 123_456_789)
    assert decoded.meta == {"fps": 30.0} and decoded.stamps == {"capture": 1}
    np.testing.assert_array_equal(decoded.image, frame.image)
    np.testing.assert_array_equal(decoded.extras["thermal"], frame.extras["thermal"])
    assert decoded.extras["thermal"].dtype == np.uint16


def test_encode_sends_buffers_without_copying():
    frame = make_frame()
    parts = encode(frame)
    assert isinstance(parts[1], memoryview) and parts[1].obj is frame.image


def test_end_of_stream_round_trip():
    decoded = decode(encode(EndOfStream("thermal", {"stats": {"a": 1}})))
    assert isinstance(decoded, EndOfStream) and decoded.stream == "thermal"
    assert decoded.meta["stats"] == {"a": 1}


@pytest.mark.parametrize("change, reason", [
    ({"version": VERSION + 1}, "bad_version"),
    ({"magic": "other"}, "bad_header"),
    ({"kind": "mystery"}, "bad_kind"),
    ({"seq": "7"}, "bad_header"),
    ({"seq": True}, "bad_header"),
    ({"capture_ns": 1.5}, "bad_header"),
    ({"stamps": {"capture": "now"}}, "bad_header"),
    ({"meta": [1, 2]}, "bad_header"),
    ({"stream": None}, "bad_header"),
])
def test_rejects_each_bad_header_field(change, reason):
    with pytest.raises(WireError) as info:
        decode(with_header(encode(make_frame()), **change))
    assert info.value.reason == reason


@pytest.mark.parametrize("part_change, reason", [
    ({"format": "rgb48"}, "bad_format"),
    ({"shape": [48, 64]}, "bad_shape"),          # bgr8 needs 3 dimensions
    ({"shape": [48, 64, 4]}, "bad_shape"),       # bgr8 has 3 channels
    ({"shape": [0, 64, 3]}, "bad_shape"),
    ({"shape": [48, 32, 3]}, "size_mismatch"),   # shape × dtype disagrees with the buffer
    ({"format": "gray16", "shape": [48, 64]}, "size_mismatch"),
    ({"name": 3}, "bad_header"),
])
def test_rejects_each_bad_part_description(part_change, reason):
    parts = encode(make_frame())
    header = header_of(parts)
    header["parts"][0].update(part_change)
    with pytest.raises(WireError) as info:
        decode(with_header(parts, parts=header["parts"]))
    assert info.value.reason == reason


def test_rejects_missing_buffer_not_json_and_oversized():
    parts = [bytes(p) for p in encode(make_frame())]
    with pytest.raises(WireError, match="part_count"):
        decode(parts[:-1])
    with pytest.raises(WireError, match="bad_header"):
        decode([b"\x80not json", *parts[1:]])
    with pytest.raises(WireError, match="oversized"):
        decode(parts, max_message_bytes=1000)
    with pytest.raises(WireError, match="empty"):
        decode([])


def test_receiver_counts_and_drops_malformed_messages_then_keeps_working(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK, stamp="fuse_in", max_message_bytes=200_000)
    push = zmq.Context.instance().socket(zmq.DEALER)
    push.connect(endpoint)
    try:
        push.send_multipart([b"garbage"])
        push.send_multipart(with_header(encode(make_frame()), version=99))
        # Each part is under the limit, the message is not: refused once it is read.
        push.send_multipart([bytes(encode(make_frame())[0]), bytes(150_000), bytes(100_000)])
        push.send_multipart([bytes(p) for p in encode(make_frame(seq=8))])
        received = [receiver.recv(1000) for _ in range(4)]
    finally:
        push.close()
        receiver.close()
    frames = [m for m in received if m is not None]
    assert [f.seq for f in frames] == [8]
    assert "fuse_in" in frames[0].stamps
    assert receiver.drops == {"malformed:bad_header": 1, "malformed:bad_version": 1, "malformed:oversized": 1}
    assert "version 99" in receiver.last_error or "oversized" in receiver.last_error


@pytest.mark.parametrize("header, detail", [
    (b"[" * 60_000, "nested deeper"),                                  # RecursionError in json.loads
    (b'{"magic": "skyfuse", "seq": ' + b"7" * 5000 + b"}", "digits"),  # ValueError: int max-str-digits
    (b'{"magic": "skyfuse", "meta": {"fps": Infinity}}', "Infinity"),
    (b'{"magic": "skyfuse", "meta": {"fps": NaN}}', "NaN"),
    (b'{"magic": "skyfuse", "meta": {"fps": 1e400}}', "not finite"),
    (b'{"magic": "skyfuse", "meta": {"note": "[[[[[[[[[[[[[[[[[[[[ 12345678901234567890123456789"}}', None),
])
def test_header_is_bounded_before_it_is_parsed(header, detail):
    """Hostile headers are refused by reason, never raised; brackets and digits inside strings are text."""
    if detail is None:  # within bounds: parsed, then refused for what it lacks
        with pytest.raises(WireError, match="bad_version"):
            decode([header])
        return
    with pytest.raises(WireError, match=detail) as info:
        decode([header])
    assert info.value.reason == "bad_header"


def test_a_part_over_the_sockets_limit_is_refused_before_it_is_buffered(endpoint):
    """ZMQ_MAXMSGSIZE is the per-part limit: libzmq drops the connection on reading the part's length, so the
    stage never holds it; other senders go on."""
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK, max_message_bytes=100_000)
    hostile = zmq.Context.instance().socket(zmq.DEALER)
    hostile.connect(endpoint)
    sender = Sender(endpoint, policy=BLOCK)
    try:
        hostile.send_multipart([bytes(encode(make_frame())[0]), bytes(1_000_000)])
        assert receiver.recv(500) is None
        sender.send(make_frame(seq=3))
        message = receiver.recv(2000)
        assert receiver.socket.getsockopt(zmq.MAXMSGSIZE) == 100_000
    finally:
        hostile.close(0)
        sender.close()
        receiver.close()
    assert message.seq == 3 and not receiver.drops


def test_limits_follow_the_streams_geometry(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK, size=(640, 480))
    try:
        assert receiver.socket.getsockopt(zmq.MAXMSGSIZE) == 640 * 480 * 3 + 64 * 1024
        assert receiver.max_message_bytes == 640 * 480 * 3 + 64 * 1024
    finally:
        receiver.close()


def test_only_a_sender_of_the_stream_may_end_it(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK)
    sender = Sender(endpoint, policy=BLOCK)
    stranger = Sender(endpoint, policy=BLOCK)
    try:
        sender.send(make_frame(seq=1))
        assert receiver.recv(2000).seq == 1
        assert not stranger.send_eos(EndOfStream("visible"), timeout_ms=500), "never acknowledged"
        assert receiver.recv(200) is None
        acknowledged = []
        ending = threading.Thread(target=lambda: acknowledged.append(sender.send_eos(EndOfStream("visible"))))
        ending.start()
        assert isinstance(receiver.recv(2000), EndOfStream)
        ending.join()
        assert acknowledged == [True]
    finally:
        for port in (sender, stranger, receiver):
            port.close()
    assert receiver.drops == {"invalid:eos_from_stranger": 1}


def test_a_port_holds_its_stream_to_the_frame_protocol(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK)
    sender = Sender(endpoint, policy=BLOCK)
    gray = np.zeros((48, 64), np.uint8)
    try:
        for frame in (make_frame(seq=1), make_frame(stream="thermal", image=gray), make_frame(image=gray),
                      make_frame(meta={"fps": 1e-9}), make_frame(meta={"drops": {"x": "many"}}),
                      make_frame(image=np.zeros((50, 64, 3), np.uint8)), make_frame(seq=2)):
            sender.send(frame)
        seqs = [m.seq for m in (receiver.recv(1000) for _ in range(7)) if m is not None]
    finally:
        sender.close()
        receiver.close()
    assert seqs == [1, 2]
    assert receiver.drops == {"invalid:stream": 1, "invalid:format": 1, "invalid:meta.fps": 1,
                              "invalid:meta.drops": 1, "invalid:size_changed": 1}


def test_live_receiver_keeps_only_the_newest_frames_and_counts_the_rest(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=DROP_OLDEST, queue_size=2, high_water_mark=100)
    sender = Sender(endpoint, policy=DROP_NEWEST, high_water_mark=100)
    try:
        for seq in range(10):
            assert sender.send(make_frame(seq=seq))
        sender.send_eos(EndOfStream("visible"), timeout_ms=100)  # unacknowledged: nobody reads yet
        first = receiver.recv(2000)
        time.sleep(0.2)  # let the rest arrive
        rest = []
        while (message := receiver.recv(100)) is not None:
            rest.append(message)
    finally:
        sender.close()
        receiver.close()
    seqs = [first.seq] + [m.seq for m in rest if isinstance(m, Frame)]
    assert seqs == sorted(seqs) and seqs[-1] == 9
    assert isinstance(rest[-1], EndOfStream), "end-of-stream is never dropped"
    assert receiver.drops["queue_full_drop_oldest"] == 10 - len(seqs)
    assert receiver.drops["queue_full_drop_oldest"] > 0


def test_live_sender_drops_and_counts_when_nobody_reads(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK, high_water_mark=1)
    sender = Sender(endpoint, policy=DROP_NEWEST, high_water_mark=1)
    try:
        results = [sender.send(make_frame(seq=i)) for i in range(20)]
    finally:
        sender.close()
        receiver.close()
    assert not all(results)
    assert sender.drops["send_queue_full"] == results.count(False)


def test_end_of_stream_is_acknowledged_once_everything_before_it_was_read(endpoint):
    receiver = Receiver(endpoint, stream="visible", policy=BLOCK)
    sender = Sender(endpoint, policy=BLOCK)
    try:
        sender.send(make_frame(seq=1))
        assert not sender.send_eos(EndOfStream("visible"), timeout_ms=300), "not read yet"
        assert receiver.recv(1000).seq == 1
        assert isinstance(receiver.recv(1000), EndOfStream)
        assert sender.socket.poll(1000) and sender.socket.recv() == ACK
    finally:
        sender.close()
        receiver.close()


def test_tcp_link_carries_frames(tmp_path):
    receiver = Receiver("tcp://127.0.0.1:*", stream="visible", policy=BLOCK)
    address = receiver.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    sender = Sender(address, policy=BLOCK)
    try:
        sender.send(make_frame(seq=3))
        message = receiver.recv(2000)
    finally:
        sender.close()
        receiver.close()
    assert message.seq == 3 and message.stamps.keys() >= {"capture", "sent", "received"}


@pytest.fixture
def keyed_tcp(tmp_path):
    """A CURVE receiver on a loopback tcp port with the deployment's keys, and its address; the
    transport (with its authenticator thread) is shut down afterwards."""
    keys = load_keys(create_keys(tmp_path / "keys"))
    receiver = Receiver("tcp://127.0.0.1:*", stream="visible", policy=BLOCK, keys=keys)
    yield keys, receiver, receiver.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    receiver.close()
    close_transport()


def test_a_keyed_link_carries_frames_encrypted(keyed_tcp):
    keys, receiver, address = keyed_tcp
    sender = Sender(address, policy=BLOCK, keys=keys)
    try:
        sender.send(make_frame(seq=5))
        message = receiver.recv(3000)
    finally:
        sender.close()
    assert message is not None and message.seq == 5
    assert np.array_equal(message.image, make_frame().image)


def test_a_keyed_receiver_admits_no_sender_without_the_deployments_key(keyed_tcp, tmp_path, capsys):
    keys, receiver, address = keyed_tcp
    other = load_keys(create_keys(tmp_path / "other"))
    # An intruder who knows the receiver's public key but holds another sender key, and a plain sender.
    intruder = LinkKeys(other.folder, keys.receiver_public, None, other.sender_public, other.sender_secret)
    senders = [Sender(address, policy=DROP_NEWEST, keys=intruder), Sender(address, policy=DROP_NEWEST)]
    try:
        for sender in senders:
            sender.send(make_frame(seq=9))
        assert receiver.recv(1500) is None
        deadline = time.monotonic() + 5
        while receiver.rejected < 2 and time.monotonic() < deadline:
            receiver.recv(100)
        # Both were refused at the handshake, counted, and logged once for the first of them.
        assert receiver.rejected >= 2
        assert "refused a peer" in capsys.readouterr().err
    finally:
        for sender in senders:
            sender.close()


@pytest.mark.parametrize("endpoint, exposed", [
    ("tcp://*:5550", True), ("tcp://0.0.0.0:5550", True), ("tcp://ground:5550", True),
    ("tcp://192.168.1.20:5550", True), ("tcp://eth0:5550", True), ("tcp://127.0.0.1:5550", False),
    ("tcp://localhost:5550", False), ("tcp://[::1]:5550", False), ("ipc:///tmp/visible", False)])
def test_plain_tcp_off_the_loopback_address_needs_keys_or_insecure(endpoint, exposed, tmp_path, capsys):
    if not exposed:
        assert link_keys(None, SENDER, endpoints=(endpoint,)) is None
        return
    with pytest.raises(SkyfuseError, match="--keys DIR.*or --insecure"):
        link_keys(None, SENDER, endpoints=(endpoint,))
    assert link_keys(None, SENDER, endpoints=(endpoint,), insecure=True) is None
    assert "plain tcp link" in capsys.readouterr().err
    keys = create_keys(tmp_path / "keys")
    assert link_keys(str(keys), SENDER, endpoints=(endpoint,)) is not None


def test_link_keys_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(SkyfuseError, match="link keys folder not found"):
        load_keys(tmp_path / "none")
    folder = create_keys(tmp_path / "keys")
    assert (folder / "sender.key_secret").stat().st_mode & 0o777 == 0o600
    with pytest.raises(SkyfuseError, match="already holds keys"):
        create_keys(folder)
    (folder / "receiver.key_secret").unlink()  # a drone: it only sends
    drone = load_keys(folder)
    assert drone.require("sender") is drone
    with pytest.raises(SkyfuseError, match="no receiver.key_secret"):
        Receiver("tcp://127.0.0.1:*", stream="visible", policy=BLOCK, keys=drone)
    (folder / "receiver.key").unlink()
    with pytest.raises(SkyfuseError, match="receiver.key is missing"):
        load_keys(folder)


def test_a_keyed_link_carries_frames_of_exactly_the_streams_size(tmp_path):
    """CURVE makes each part longer than the image before libzmq checks it against the per-part limit."""
    keys = load_keys(create_keys(tmp_path / "keys"))
    receiver = Receiver("tcp://127.0.0.1:*", stream="visible", policy=BLOCK, size=(640, 480), keys=keys)
    sender = Sender(receiver.socket.getsockopt(zmq.LAST_ENDPOINT).decode(), policy=BLOCK, keys=keys)
    try:
        sender.send(make_frame(image=np.zeros((480, 640, 3), np.uint8)))
        message = receiver.recv(3000)
    finally:
        sender.close()
        receiver.close()
        close_transport()
    assert message is not None and message.image.shape == (480, 640, 3)
