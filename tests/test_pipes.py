"""The tunnel's data path: writes sent at once when nothing is queued, the backend's read size.

Real loopback TCP sockets under Twisted's own TCP transports, on a memory
reactor: the tests call C{doWrite} where the reactor would. The key ones
(C{@both_paths}) run on both data paths: the library internals and the
public-API fallback (L{nexusws.internals}).
"""

import itertools
import os
import socket
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.testing import StringTransport

from nexusws import internals, pipes
from support.data_path import both_paths
from support.pipes import receive


def test_with_nothing_queued_head_and_data_are_sent_at_once_and_nothing_is_queued(pair):
    transport, peer, reactor = pair
    internals.write_now(transport, b"payload" * 1000, b"\x82\x7e\x1b\x58")
    assert receive(peer, 7004) == b"\x82\x7e\x1b\x58" + b"payload" * 1000
    assert transport._tempDataLen == 0 and transport not in reactor.getWriters()


@both_paths
def test_behind_queued_data_a_write_is_queued_so_the_order_is_kept(pair):
    transport, peer, reactor = pair
    transport.write(b"first ")
    internals.write_now(transport, b"second", b"H")
    assert transport in reactor.getWriters(), "left to the reactor, after what is queued"
    transport.doWrite()
    assert receive(peer, 13) == b"first Hsecond"


def test_what_the_kernel_does_not_take_is_queued_and_flow_control_pauses_the_producer(pair):
    transport, peer, reactor = pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)

    class Producer:
        paused = False

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False

        def stopProducing(self):
            pass

    producer = Producer()
    transport.registerProducer(producer, True)
    data = bytes(range(256)) * 8192  # 2 MiB: far more than the two socket buffers hold
    internals.write_now(transport, data, b"HEAD")
    queued = transport._tempDataLen
    assert 0 < queued < len(data), "part sent now, the rest queued"
    assert producer.paused and transport in reactor.getWriters()
    got = bytearray()
    peer.setblocking(False)
    while len(got) < len(data) + 4:
        transport.doWrite()
        try:
            got += peer.recv(65536)
        except BlockingIOError:
            pass
    assert bytes(got) == b"HEAD" + data, "every byte, in order"
    assert not producer.paused, "resumed once the queue drained"


@settings(max_examples=40, deadline=None)
@given(head_len=st.integers(0, 14), cut=st.integers(0, 100))
def test_a_partial_send_anywhere_in_head_or_data_queues_exactly_the_rest(head_len, cut):
    """Whatever the kernel takes (simulated), the queue holds exactly what it did not."""
    original = internals._PLAIN_TCP

    class Sock:
        def sendmsg(self, buffers):
            return min(cut, sum(len(b) for b in buffers))

        def send(self, data):
            return min(cut, len(data))

    class Transport(tcp.Server):
        def __init__(self):  # just the attributes write_now reads
            self.socket, self.connected, self.disconnecting = Sock(), True, False
            self._writeDisconnected, self.dataBuffer, self.offset = False, b"", 0
            self._tempDataLen, self.queued = 0, []

        def write(self, data):
            self.queued.append(data)

    head, data = bytes(range(100, 100 + head_len)), bytes(range(50))
    t = Transport()
    internals._PLAIN_TCP = (Transport,)
    try:
        internals.write_now(t, data, head)
    finally:
        internals._PLAIN_TCP = original
    sent = min(cut, len(head) + len(data))
    assert b"".join(t.queued) == (head + data)[sent:]
    assert len(t.queued) <= 1


def test_a_connection_reset_is_left_to_twisted_to_report(pair):
    transport, peer, reactor = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # RST
    for _ in range(5):
        internals.write_now(transport, b"x" * 65536, b"H")  # never raises
    assert transport in reactor.getWriters()
    assert transport.doWrite() is not None, "Twisted's own write meets the error and says so"


@pytest.mark.parametrize("closing", ["disconnecting", "_writeDisconnected"])
def test_a_closing_transport_is_written_to_as_twisted_would(pair, closing):
    transport, peer, reactor = pair
    setattr(transport, closing, True)
    internals.write_now(transport, b"data", b"H")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(10)  # nothing sent behind Twisted's back


@both_paths
def test_other_transports_get_one_ordinary_write():
    transport = StringTransport()
    internals.write_now(transport, b"data", b"HEAD")
    internals.write_now(transport, b"more")
    assert transport.value() == b"HEADdatamore"


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 1 << 20])
def test_frame_header_is_that_of_a_final_unmasked_binary_frame(n):
    """Checked with the websockets library's own frame parser."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(pipes.frame_header(n) + bytes(n))
    frame = next_value(Frame.parse(reader.read_exact, mask=False))
    assert (frame.fin, frame.opcode, len(frame.data)) == (True, Opcode.BINARY, n)
    assert len(pipes.frame_header(n)) == (2 if n < 126 else 4 if n < 65536 else 10)


def next_value(generator):
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


class FakeTransport:
    bufferSize = 0

    def pauseProducing(self):
        pass


def test_the_backend_read_size_grows_while_reads_come_back_full_and_shrinks_when_they_do_not():
    class Tunnel:
        keeps_up = True

        def backendData(self, data):
            pass

        def client_keeps_up(self):
            return self.keeps_up

    tunnel = Tunnel()
    backend = pipes.Backend(tunnel)
    backend.makeConnection(FakeTransport())
    t = backend.transport
    assert t.bufferSize == pipes.READ_MIN
    sizes = []
    for _ in range(8):
        backend.dataReceived(b"x" * t.bufferSize)
        sizes.append(t.bufferSize)
    assert sizes[:4] == [2 * pipes.READ_MIN, 4 * pipes.READ_MIN, 8 * pipes.READ_MIN, pipes.READ_MAX]
    assert set(sizes[4:]) == {pipes.READ_MAX}, "never beyond READ_MAX"
    backend.dataReceived(b"x" * (pipes.READ_MAX // 2))
    assert t.bufferSize == pipes.READ_MAX, "half full: kept"
    for _ in range(10):
        backend.dataReceived(b"keystroke")
    assert t.bufferSize == pipes.READ_MIN, "small reads bring it back down, not below READ_MIN"
    for _ in range(3):
        backend.dataReceived(b"x" * t.bufferSize)
    assert t.bufferSize == 8 * pipes.READ_MIN
    tunnel.keeps_up = False
    backend.dataReceived(b"x" * t.bufferSize)
    assert t.bufferSize == pipes.READ_MIN, "a client that does not keep up: back to small reads"
    backend.dataReceived(b"x" * t.bufferSize)
    assert t.bufferSize == pipes.READ_MIN, "and no growth while it does not"


def test_queued_counts_what_twisted_holds_for_a_transport_and_under_tls(pair):
    transport, peer, reactor = pair
    assert internals.queued(transport) == 0
    transport.write(b"abc")
    transport.write(b"defg")
    assert internals.queued(transport) == 7
    transport.doWrite()
    assert internals.queued(transport) == 0

    class TLSLayer:  # as TLSMemoryBIOProtocol: cleartext waiting, and its TCP transport
        _appSendBuffer = [b"12345"]

    tls = TLSLayer()
    tls.transport = transport
    transport.write(b"xy")
    assert internals.queued(tls) == 7


def test_the_backend_socket_sends_small_messages_at_once_no_nagle(pair):
    transport, peer, reactor = pair
    transport.pauseProducing = lambda: None
    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    pipes.Backend(None).makeConnection(transport)
    assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# --- whole binary frames from the client, forwarded without Autobahn's frame machinery ---


def client_frame(payload, opcode=2, fin=True, masked=True, rsv=0, length_form=None, mask=None):
    """A client frame as on the wire (C{length_form}: force 126 or 127 encoding)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    form = length_form or (0 if n < 126 else 126 if n < 65536 else 127)
    if form == 0:
        head += bytes([bit | n])
    elif form == 126:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4) if mask is None else mask
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_simple_frames_finds_whole_binary_frames_and_stops_at_anything_else():
    a, b = client_frame(b"abc"), client_frame(bytes(300))
    frames, end = pipes.simple_frames(a + b + client_frame(b"x", opcode=9) + client_frame(b"z"))
    assert end == len(a + b) and len(frames) == 2, "a ping: Autobahn's, from there on"
    assert [(s, e) for _, s, e in frames] == [(6, 9), (len(a) + 8, len(a + b))]
    assert pipes.unmask(a + b, *frames[0]) == b"abc"
    assert pipes.simple_frames(a[:-1]) == ([], 0), "incomplete"
    assert pipes.simple_frames(client_frame(b"t", opcode=1))[1] == 0, "text: UTF-8 to check"
    assert pipes.simple_frames(client_frame(b"f", fin=False))[1] == 0, "a fragment"
    assert pipes.simple_frames(client_frame(b"u", masked=False))[1] == 0, "unmasked"
    assert pipes.simple_frames(client_frame(b"r", rsv=4))[1] == 0, "reserved bits"
    assert pipes.simple_frames(client_frame(b"n", length_form=126))[1] == 0, "not shortest"
    assert pipes.simple_frames(client_frame(bytes(200), length_form=127))[1] == 0
    assert pipes.simple_frames(client_frame(bytes(70000)))[1] > 0
    assert pipes.simple_frames(client_frame(bytes(70000)), max_payload=65536)[1] == 0


def _frames():
    payload = st.sampled_from([0, 1, 125, 126, 300, 65535, 65536, 70000]).map(bytes) | st.binary(
        max_size=200)
    simple = payload.map(client_frame)
    fragmented = st.tuples(payload, payload).map(
        lambda p: client_frame(p[0], fin=False) + client_frame(p[1], opcode=0))
    text = st.text(max_size=50).map(lambda t: client_frame(t.encode(), opcode=1))
    odd = st.sampled_from([
        client_frame(b"ping", opcode=9), client_frame(b"pong", opcode=10),
        client_frame(b"n", length_form=126), client_frame(b"u", masked=False),
        client_frame(b"r", rsv=4), client_frame(b"c", opcode=0), client_frame(b"\xff", opcode=1),
        client_frame(bytes(80000)), client_frame(b"\x03\xe8", opcode=8),
    ])
    return st.lists(st.one_of(simple, simple, simple, fragmented, text, odd), max_size=8)


@both_paths
@settings(max_examples=150, deadline=None)
@given(frames=_frames(), data=st.data())
@example(frames=[client_frame(bytes(80000))], data=None)  # over the size limit
@example(frames=[client_frame(b"a", fin=False), client_frame(b"b")], data=None)  # not a continuation
@example(frames=[client_frame(b"a" * 200, length_form=127), client_frame(b"b")], data=None)
# A frame cut after its header, whose payload reads like a frame: Autobahn is inside a frame.
@example(frames=[client_frame(client_frame(b"hi"), mask=bytes(4))], data=[6])
@example(frames=[client_frame(client_frame(b"hi"), opcode=9, mask=bytes(4))], data=[6])  # a ping
# Cut after a header's first byte, the rest of which reads like a frame: Autobahn holds a part.
@example(frames=[client_frame(b"\x00\x00", mask=b"\x81\x00\x00\x00")], data=[1])
def test_the_fast_path_forwards_and_fails_exactly_as_autobahn_alone_does(frames, data):
    """Any client byte stream, cut anywhere (at frame boundaries, mostly): the backend
    gets the same bytes and the tunnel ends the same way with the fast path as with
    Autobahn's parser alone."""
    from support.bridge import open_tunnel

    stream = b"".join(frames)
    bounds = list(itertools.accumulate(len(f) for f in frames))
    if data is None:  # an explicit example: cut at every frame boundary
        cuts = bounds
    elif isinstance(data, list):  # an explicit example's cuts
        cuts = data
    else:
        cuts = data.draw(st.lists(st.sampled_from(bounds) | st.integers(0, len(stream)), max_size=6)
                         if stream else st.just([]))
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]

    def outcome(fast):
        h = open_tunnel(greeting=b"", max_message_size=75000)
        original = pipes.simple_frames
        if not fast:
            pipes.simple_frames = lambda data, limit=0: ([], 0)
        try:
            for chunk in chunks:
                h.server.dataReceived(chunk)
            h.flush()
        finally:
            pipes.simple_frames = original
        return bytes(h.backend.received), h.server.state, h.server.failedByMe, h.server.bytes_up

    assert outcome(fast=True) == outcome(fast=False)
