"""nexusws.activity: which client bytes of an RFB (VNC) tunnel are user input."""

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexusws.activity import InputTracker

# ---------------------------------------------------------------- client messages, as noVNC's core/rfb.js sends them


def pixel_format():
    return struct.pack(">BxxxBBBBHHHBBBxxx", 0, 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)


def set_encodings(encodings):
    return struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">I", e & 0xFFFFFFFF) for e in encodings)


#: Roughly what noVNC asks for: tight, zrle, ..., quality and compression levels, and pseudo-encodings,
#: ExtendedMouseButtons (-316) and the extended clipboard (0xc0a1e5ce) among them.
NOVNC_ENCODINGS = [1, 7, -260, 16, 21, 5, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312, -313, -307,
                   0xC0A1E5CE, -316, -239]


def fbur(incremental=1, w=1280, h=720):
    return struct.pack(">BBHHHH", 3, incremental, 0, 0, w, h)


def key(down=1, keysym=0x61):
    return struct.pack(">BBxxI", 4, down, keysym)


def pointer(mask=0, x=100, y=200):
    return struct.pack(">BBHH", 5, mask, x, y)


def extended_pointer(mask=0, x=100, y=200, high=1):
    return struct.pack(">BBHHB", 5, mask | 0x80, x, y, high)


def cut_text(text):
    return struct.pack(">BxxxI", 6, len(text)) + text


CAPS, REQUEST, PEEK, NOTIFY, PROVIDE = (1 << 24), (1 << 25), (1 << 26), (1 << 27), (1 << 28)
TEXT = 1


def extended_clipboard(flags, payload=b""):
    body = struct.pack(">I", flags) + payload
    return struct.pack(">Bxxxi", 6, -len(body)) + body


def novnc_caps():
    """noVNC's answer to the server's caps: every action, text, with a size."""
    return extended_clipboard(CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | TEXT, struct.pack(">I", 0))


def qemu_key(down=1, keysym=0x61, keycode=0x1E):
    return struct.pack(">BBHII", 255, 0, down, keysym, keycode)


def qemu_audio(operation):
    if operation == 2:
        return struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100)
    return struct.pack(">BBH", 255, 1, operation)


def continuous_updates(enable=1):
    return struct.pack(">BBHHHH", 150, enable, 0, 0, 1280, 720)


def fence(flags=0x80000002, payload=b"\x00" * 5):
    return struct.pack(">BxxxIB", 248, flags, len(payload)) + payload


def xvp(operation=2):
    return struct.pack(">BxBB", 250, 1, operation)


def desktop_size(w=1024, h=768, screens=1):
    return struct.pack(">BxHHBx", 251, w, h, screens) + struct.pack(">IHHHHI", 0, 0, 0, w, h, 0) * screens


def gii(sub, payload, big=True):
    order = ">" if big else "<"
    return struct.pack(">BB", 253, sub | (0x80 if big else 0)) + struct.pack(order + "H", len(payload)) + payload


#: A gii event: a pointer-absolute PTR_MOVE_EVENT, 24 bytes.
GII_MOVE = struct.pack(">BBxxIiiii", 24, 9, 0, 10, 20, 0, 0)

# Each message with the offset of the last byte of its header (what decides it is input), or None: not input.
# The pointer events decide at byte 1: the stream's SetEncodings asks for ExtendedMouseButtons.
SETUP = [
    (pixel_format(), None), (set_encodings(NOVNC_ENCODINGS), None), (fbur(0), None), (novnc_caps(), None),
    (continuous_updates(), None), (fence(), None), (fbur(), None), (desktop_size(screens=2), None),
]
QUIET = [
    (fbur(), None), (set_encodings(NOVNC_ENCODINGS), None), (extended_clipboard(REQUEST | TEXT), None),
    (extended_clipboard(PEEK), None), (qemu_audio(0), None), (qemu_audio(2), None), (xvp(), None),
    (gii(1, struct.pack(">H", 1)), None), (fence(payload=b""), None), (desktop_size(), None),
]
INPUT = [
    (key(), 0), (key(0, 0xFF0D), 0), (pointer(1), 1), (extended_pointer(0x01, high=3), 1), (qemu_key(), 1),
    (cut_text(b"hello"), 7), (cut_text(b""), 7), (extended_clipboard(NOTIFY | TEXT), 11),
    (extended_clipboard(PROVIDE | TEXT, b"\x78\x9c" + bytes(30)), 11), (gii(0, GII_MOVE, big=False), 3),
    (gii(0, GII_MOVE * 2), 3),
]

#: ServerInit: 1280x720, 32 bits a pixel, depth 24, true colour, named "test".
SERVER_INIT = struct.pack(">HHBBBBHHHBBBxxxI", 1280, 720, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0, 4) + b"test"

# Handshakes: (server's bytes, client's bytes), each in the order sent.
HANDSHAKES = {
    "3.8 none": ([b"RFB 003.008\n", b"\x01\x01", bytes(4)], [b"RFB 003.008\n", b"\x01", b"\x01"]),
    "3.8 vnc auth": ([b"RFB 003.008\n", b"\x02\x02\x10", bytes(16), bytes(4)],
                     [b"RFB 003.008\n", b"\x02", bytes(range(16)), b"\x01"]),
    "3.7 none": ([b"RFB 003.007\n", b"\x02\x02\x01", SERVER_INIT], [b"RFB 003.007\n", b"\x01", b"\x00"]),
    "3.3 none": ([b"RFB 003.003\n", struct.pack(">I", 1)], [b"RFB 003.003\n", b"\x00"]),
    "3.3 vnc auth": ([b"RFB 003.008\n", struct.pack(">I", 2) + bytes(16), bytes(4)],
                     [b"RFB 003.003\n", b"\x01" * 16, b"\x01"]),
    "apple": ([b"RFB 003.889\n", b"\x02\x1e\x02", bytes(16), bytes(4)],
              [b"RFB 003.889\n", b"\x02", bytes(16), b"\x01"]),
}


def connect(name="3.8 none", calls=None):
    """A tracker through the handshake C{name}, its steps interleaved as on the wire."""
    tracker = InputTracker(calls.append if calls is not None else None)
    server, client = HANDSHAKES[name]
    for i, chunk in enumerate(server):
        tracker.server(chunk)
        if i < len(client):
            assert tracker.client(client[i]) is False
    for chunk in client[len(server):]:
        assert tracker.client(chunk) is False
    assert tracker.mode == "rfb"
    return tracker


def following(tracker):
    """Whether C{tracker} is still in step: a request is not input, a key is."""
    return tracker.client(fbur()) is False and tracker.client(key()) is True and tracker.mode == "rfb"


# ---------------------------------------------------------------- sessions


@pytest.mark.parametrize("name", sorted(HANDSHAKES))
def test_a_novnc_session_tells_input_from_its_own_traffic(name):
    calls = []
    tracker = connect(name, calls)
    for message, _ in SETUP + QUIET:
        assert tracker.client(message) is False, message
    for message, _ in INPUT:
        assert tracker.client(message) is True, message
        assert tracker.client(fbur()) is False
    assert calls == [] and tracker.mode == "rfb"


@pytest.mark.parametrize("message", [m for m, _ in QUIET + SETUP])
def test_each_message_that_is_not_input_is_stepped_over_exactly(message):
    tracker = connect()
    assert tracker.client(message) is False
    assert following(tracker)


@pytest.mark.parametrize("message", [m for m, _ in INPUT])
def test_each_input_message_is_input_and_stepped_over_exactly(message):
    tracker = connect()
    tracker.client(set_encodings(NOVNC_ENCODINGS))
    assert tracker.client(message) is True
    assert following(tracker)


def test_the_server_is_needed_only_until_the_handshake_no_longer_depends_on_it():
    tracker = InputTracker()
    assert tracker.server(b"RFB 003.008\n") is True
    tracker.client(b"RFB 003.008\n")
    assert tracker.server(b"\x01\x01") is False
    tracker = InputTracker()
    assert tracker.server(b"RFB 003.00") is True
    assert tracker.server(b"8\n\x00\x00") is True
    tracker.client(b"RFB 003.003\n")
    assert tracker.server(b"\x00") is True
    assert tracker.server(b"\x01") is False
    assert tracker.client(b"\x01") is False and following(tracker)


# ---------------------------------------------------------------- chunking


def stream_of(name, messages):
    """The client's whole stream after handshake C{name}, and the offsets at which input is decided."""
    data, decisions = b"".join(HANDSHAKES[name][1]), []
    for message, decides in SETUP + messages:
        if decides is not None:
            decisions.append(len(data) + decides)
        data += message
    return data, decisions


def check_chunks(name, data, decisions, cuts):
    """Feed C{data} cut at C{cuts}: a chunk is input exactly when it holds a deciding byte."""
    calls = []
    tracker = InputTracker(calls.append)
    assert tracker.server(b"".join(HANDSHAKES[name][0])) is False
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        expected = any(start <= d < end for d in decisions)
        assert tracker.client(data[start:end]) is expected, (start, end)
        assert len(tracker._head) <= 12
    assert calls == [] and following(tracker)


@pytest.mark.parametrize("name", sorted(HANDSHAKES))
def test_a_stream_split_at_any_byte_gives_the_same_answers(name):
    data, decisions = stream_of(name, QUIET + INPUT + QUIET[::-1] + INPUT[::-1])
    for cut in range(len(data) + 1):
        check_chunks(name, data, decisions, [cut])


def test_a_stream_fed_a_byte_at_a_time_counts_each_input_once():
    data, decisions = stream_of("3.8 vnc auth", INPUT + QUIET)
    check_chunks("3.8 vnc auth", data, decisions, range(1, len(data)))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_stream_split_anyhow_gives_the_same_answers(draw):
    name = draw.draw(st.sampled_from(sorted(HANDSHAKES)))
    messages = draw.draw(st.lists(st.sampled_from(QUIET + INPUT), max_size=40))
    data, decisions = stream_of(name, messages)
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=60))
    check_chunks(name, data, decisions, cuts)


# ---------------------------------------------------------------- large bodies


def test_a_10_mb_paste_in_64_kib_chunks_is_skipped_and_what_follows_is_read():
    tracker = connect()
    size, chunk = 10 * 1024 * 1024 + 5, bytes(64 * 1024)
    assert tracker.client(struct.pack(">BxxxI", 6, size)) is True
    left = size
    while left > len(chunk):
        assert tracker.client(chunk) is False
        left -= len(chunk)
    assert tracker.client(bytes(left) + fbur()) is False
    assert tracker.client(bytes(0) + fbur() + key()) is True
    tracker.client(struct.pack(">BxxxI", 6, size) + chunk[:100])
    left = size - 100
    while left > len(chunk):
        assert tracker.client(chunk) is False
        left -= len(chunk)
    assert tracker.client(bytes(left) + key()) is True
    assert following(tracker)


class Watched(bytes):
    """Bytes that count how often Python code reads them by index or slice."""

    reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_skipping_a_body_does_no_work_per_byte_and_copies_nothing():
    tracker = connect()
    chunk, count = Watched(bytes(64 * 1024)), 10_000
    assert tracker.client(struct.pack(">BxxxI", 6, count * len(chunk) + 1)) is True
    tracemalloc.start()
    try:
        answers = {tracker.client(chunk) for _ in range(count)}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answers == {False}
    assert chunk.reads == 0
    assert peak < 4096 and tracker._head == b""
    assert tracker.client(b"\x00" + key()) is True and following(tracker)


# ---------------------------------------------------------------- not RFB, and giving up


@pytest.mark.parametrize("greeting", [b"HTTP/1.1 200 OK\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"\x16\x03\x01\x02\x00",
                                      b"RFB 003.00x\n", b"RFB003.008\n\x00", b"RFB 003.008\r"])
def test_a_server_that_does_not_speak_rfb_makes_every_client_byte_input_quietly(greeting):
    calls = []
    tracker = InputTracker(calls.append)
    assert tracker.server(greeting) is False
    assert tracker.mode == "bytes"
    assert tracker.client(fbur()) is True and tracker.client(b"\x00") is True and tracker.client(b"") is False
    assert calls == []


def test_a_greeting_is_judged_at_its_first_wrong_byte():
    tracker = InputTracker()
    assert tracker.server(b"RFB 00") is True and tracker.mode == "unknown"
    assert tracker.server(b"x") is False and tracker.mode == "bytes"
    tracker = InputTracker()
    assert tracker.server(b"S") is False and tracker.mode == "bytes"


@pytest.mark.parametrize("kind", [16, 19, 30, 0])
def test_a_security_type_the_client_picks_and_is_not_followed_gives_up_once(kind):
    calls = []
    tracker = InputTracker(calls.append)
    tracker.server(b"RFB 003.008\n")
    tracker.client(b"RFB 003.008\n")
    assert tracker.client(bytes([kind])) is True
    assert calls == [f"security type {kind} is not followed"] and tracker.mode == "bytes"
    assert tracker.client(fbur()) is True and tracker.client(bytes([99])) is True
    assert len(calls) == 1


@pytest.mark.parametrize("kind", [16, 19])
def test_a_security_type_the_server_names_and_is_not_followed_gives_up_once(kind):
    calls = []
    tracker = InputTracker(calls.append)
    tracker.server(b"RFB 003.003\n")
    tracker.client(b"RFB 003.003\n")
    assert tracker.server(struct.pack(">I", kind)) is False
    assert calls == [f"security type {kind} is not followed"]
    assert tracker.client(fbur()) is True and len(calls) == 1


def test_a_server_refusal_is_no_reason_to_give_up_until_the_client_speaks():
    calls = []
    tracker = InputTracker(calls.append)
    tracker.server(b"RFB 003.003\n" + struct.pack(">I", 0) + struct.pack(">I", 3) + b"no!")
    assert tracker.client(b"RFB 003.003\n") is False
    assert calls == [] and tracker.mode == "rfb"
    assert tracker.client(b"\x01") is True and len(calls) == 1


@pytest.mark.parametrize("message, reason", [
    (b"\x4d" + bytes(9), "unknown client message type 77"),
    (b"\x07\x00\x00\x00", "unknown client message type 7"),
    (b"\xff\x07\x00\x00", "unknown qemu client message type 7"),
    (struct.pack(">BBH", 255, 1, 3), "qemu audio operation 3 is unknown"),
    (struct.pack(">Bxxxi", 6, -2) + b"\x00\x00", "an extended clipboard message is shorter than its flags"),
])
def test_a_message_that_is_not_followed_gives_up_once(message, reason):
    calls = []
    tracker = connect("3.8 none", calls)
    assert tracker.client(fbur() + message) is True
    assert calls == [reason] and tracker.mode == "bytes"
    assert tracker.client(fbur()) is True and tracker.client(message) is True
    assert len(calls) == 1


def test_a_client_that_speaks_before_the_greeting_is_input_and_then_given_up_on():
    calls = []
    tracker = InputTracker(calls.append)
    assert tracker.client(b"RFB 003.008\n") is True and tracker.mode == "unknown"
    assert tracker.server(b"RFB 003.008\n") is False
    assert calls == ["the client spoke before the server's greeting"] and tracker.mode == "bytes"
    assert tracker.client(fbur()) is True


def test_a_client_that_speaks_first_to_a_server_that_is_not_rfb_is_no_reason_to_give_up():
    calls = []
    tracker = InputTracker(calls.append)
    assert tracker.client(b"GET / HTTP/1.1\r\n") is True
    assert tracker.server(b"HTTP/1.1 400") is False
    assert calls == [] and tracker.mode == "bytes"


def test_a_client_version_that_is_not_one_gives_up():
    calls = []
    tracker = InputTracker(calls.append)
    tracker.server(b"RFB 000.000\n")  # an UltraVNC repeater: noVNC answers with 250 bytes of ID
    assert tracker.client(b"ID:1234" + bytes(243)) is True
    assert calls == ["the client's version is not an rfb version"]


def test_a_3_3_client_that_answers_before_the_servers_security_type_gives_up():
    calls = []
    tracker = InputTracker(calls.append)
    tracker.server(b"RFB 003.003\n")
    assert tracker.client(b"RFB 003.003\n\x01") is True
    assert calls == ["the client spoke before the server's security type"]


def test_empty_chunks_are_never_input():
    tracker = InputTracker()
    assert tracker.client(b"") is False
    tracker = connect()
    assert tracker.client(b"") is False
    tracker.client(struct.pack(">BxxxI", 6, 10))
    assert tracker.client(b"") is False
    tracker.client(bytes(10) + b"\x4d")
    assert tracker.mode == "bytes" and tracker.client(b"") is False


# ---------------------------------------------------------------- the finer points


@pytest.mark.parametrize("flags, expected", [
    (CAPS | REQUEST | PEEK | NOTIFY | PROVIDE | TEXT, False), (REQUEST | TEXT, False), (PEEK, False),
    (NOTIFY | TEXT, True), (NOTIFY, True), (PROVIDE | TEXT, True), (CAPS | NOTIFY, False),
])
def test_only_an_extended_clipboard_notify_or_provide_is_input(flags, expected):
    tracker = connect()
    assert tracker.client(extended_clipboard(flags, bytes(8))) is expected
    assert following(tracker)


def test_a_pointer_event_is_extended_only_once_the_client_asked_for_extended_mouse_buttons():
    tracker = connect()
    assert tracker.client(pointer(0x80) + fbur()) is True  # button 8: six bytes, then a request
    assert following(tracker)
    tracker.client(set_encodings([0, -316]))
    assert tracker.client(extended_pointer(0x01, high=0) + fbur()) is True
    assert tracker.client(pointer(0x01) + fbur()) is True
    assert following(tracker)
    tracker.client(set_encodings([0, -1, (0xFEC4 << 16) - (1 << 32)]))  # ff ff fe c4, but not on a boundary
    assert tracker.client(pointer(0x80) + fbur()) is True and following(tracker)


def test_gii_lengths_are_read_in_the_messages_own_byte_order():
    tracker = connect()
    assert tracker.client(gii(0, GII_MOVE * 11, big=False)) is True  # 264: 0x0108, read big-endian 2049
    assert following(tracker)
    assert tracker.client(gii(2, bytes(56), big=False)) is False  # device creation
    assert following(tracker)


def test_a_client_asking_more_than_the_server_offers_gets_the_servers_handshake():
    """A 3.8 client of a server that greets 3.3 (and does not follow the client up): the
    server names the security type, the client sends no choice byte (found by the hostile review)."""
    fallbacks = []
    tracker = InputTracker(on_fallback=fallbacks.append)
    tracker.server(b"RFB 003.003\n")
    assert tracker.client(b"RFB 003.008\n") is False
    tracker.server(b"\0\0\0\x01")  # None
    assert tracker.client(b"\x01") is False  # ClientInit, not a security choice
    assert tracker.client(struct.pack("!BBHHHH", 3, 1, 0, 0, 640, 480)) is False
    assert tracker.client(struct.pack("!BBHH", 5, 0, 1, 1)) is True
    assert fallbacks == [] and tracker.mode == "rfb"
