"""Transport plumbing for the bridge: producer valves, the backend protocol, frames.

What it needs of Twisted's and Autobahn's internals it asks L{nexusws.internals}.
"""

import ipaddress
import os
import struct
from urllib.parse import urlencode

from autobahn.websocket.types import ConnectionDeny
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from nexusws import internals
from nexusws.logs import printable
from nexusws.scrub import redact

SUBPROTOCOL = "binary"


def simple_frames(data, max_payload=0):
    """The whole, final, masked, binary frames at the start of C{data}.

    A client sends a tunnel's bytes as such frames; each is forwarded as it is,
    without Autobahn's general frame machinery (a fifth of a round trip's CPU).
    Parsing stops at the first frame that is anything else: a control frame,
    a fragment, text, reserved bits, a length not in its shortest form or over
    C{max_payload} (0: none), or one not yet complete. What follows is
    Autobahn's to parse, from that frame boundary on.

    @return: C{([(mask, start, end)], consumed)}: each frame's mask and where
        its (masked) payload lies in C{data}, and where the last one ends.
    """
    frames, pos, size = [], 0, len(data)
    while size - pos >= 6:
        if data[pos] != 0x82 or not data[pos + 1] & 0x80:
            break
        length, head = data[pos + 1] & 0x7F, 6
        if length == 126:
            if size - pos < 8:
                break
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 8
            if length < 126:
                break
        elif length == 127:
            if size - pos < 14:
                break
            length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 14
            if length < 65536 or length >> 63:
                break
        end = pos + head + length
        if (max_payload and length > max_payload) or end > size:
            break
        frames.append((data[pos + head - 4:pos + head], pos + head, end))
        pos = end
    return frames, pos


def unmask(data, mask, start, end):
    """The payload C{data[start:end]} unmasked with C{mask} (Autobahn's NVX code when it has it)."""
    if start == end:
        return b""
    return create_xor_masker(mask, end - start).process(data[start:end])


class QuietIO:
    """Autobahn's per-read and per-write debug lines, without their cost.

    Autobahn formats the arguments of a debug log call (C{hltype}, which
    inspects the method) on every read and every write, logged or not: on the
    tunnel's hot path that is several percent of the CPU. The reads and writes
    themselves are Autobahn's.
    """

    def dataReceived(self, data):
        internals.raw_receive(self, data)

    def sendData(self, data, sync=False, chopsize=None):
        if sync or chopsize or not internals.send_queue_empty(self):
            return super().sendData(data, sync, chopsize)
        self.transport.write(data)


def frame_header(length):
    """The header of an unmasked, final, binary WebSocket frame of C{length} bytes."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return struct.pack("!BBH", 0x82, 126, length)
    return struct.pack("!BBQ", 0x82, 127, length)


def backend_endpoint(reactor, host, port, timeout, attempt_delay=0.3):
    """A client endpoint for the backend: an address literal needs no resolver
    thread, and its refusal is reported at once (a name's after C{attempt_delay})."""
    try:
        family = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout, attemptDelay=attempt_delay)
    endpoint = TCP4ClientEndpoint if family == 4 else TCP6ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


@implementer(IPushProducer)
class Valve:
    """A producer proxy that pauses and resumes one transport for another.

    C{stopProducing} is deliberately inert: the tunnel decides how each side
    closes, so a consumer going away never aborts the other side's pending data.
    C{note}, if given, is called with True or False when the valve closes or opens
    (not on a repeated pause or resume).
    """

    def __init__(self, transport, on_resume=None, note=None):
        self._transport = transport
        self._on_resume = on_resume
        self._note = note
        self.paused = False

    def pauseProducing(self):
        if not self.paused and self._note is not None:
            self._note(True)
        self.paused = True
        self._transport.pauseProducing()

    def resumeProducing(self):
        if self.paused and self._note is not None:
            self._note(False)
        self.paused = False
        self._transport.resumeProducing()
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self):
        pass


#: The backend's read size (also its transport's write queue mark) adapts between these:
#: a read that fills it doubles it, one under a quarter of it halves it.
READ_MIN, READ_MAX = 64 * 1024, 1024 * 1024


class Backend(Protocol):
    """The TCP side of a tunnel.

    Its reads grow while they come back full, to C{READ_MAX}: a bulk transfer
    then moves in a few large WebSocket messages, with a fraction of the system
    calls and reactor rounds per byte (backend to client 1.7 times as fast as
    with 64 KiB reads, in C{bench/run}); an interactive tunnel's small reads
    keep it at C{READ_MIN}, and so does a client that does not keep up (its
    transport has data queued): what a slow tunnel holds stays one small read
    plus what the client's transport queues before it pauses the backend.
    """

    def __init__(self, tunnel):
        self.tunnel = tunnel

    def connectionMade(self):
        # Hold the backend's first bytes (an RFB greeting, say) in the kernel
        # until the WebSocket is open and flow control is in place.
        self.transport.bufferSize = READ_MIN
        self.transport.pauseProducing()
        # Interactive traffic (a VNC pointer's small messages) must not wait on
        # Nagle's algorithm for the previous segment's delayed ACK; Autobahn
        # does the same on the WebSocket side (its tcpNoDelay option).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def dataReceived(self, data):
        transport, n = self.transport, len(data)
        size = transport.bufferSize
        if n >= size:
            if size < READ_MAX and self.tunnel.client_keeps_up():
                transport.bufferSize = size * 2
        elif n < size // 4 and size > READ_MIN:
            transport.bufferSize = size // 2
        self.tunnel.backendData(data)
        if transport.bufferSize > READ_MIN and not self.tunnel.client_keeps_up():
            transport.bufferSize = READ_MIN  # a slow client: small reads, little held

    def connectionLost(self, reason):
        self.tunnel.backendLost(reason)


class OneShot(Factory):
    """Connects one given protocol (connectProtocol's factory, minus its log lines)."""

    noisy = False

    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


def request_target(request):
    """The request's path and query, secrets masked, for log lines."""
    query = urlencode([(k, v) for k, vs in request.params.items() for v in vs])
    return printable(redact(request.path + ("?" + query if query else "")))


def close_reason(text, limit=123):
    """C{text} fitted into a close frame's 123 bytes: its start and its end, the middle cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    half = (limit - 3) // 2
    head = data[:half].decode("utf-8", "ignore")
    tail = data[-(limit - 3 - half):].decode("utf-8", "ignore")
    return head + "..." + tail


def peer_label(peer, fallback="-"):
    """C{host:port} (C{[v6]:port}) of a transport's peer, as tunnel log lines show it."""
    host = getattr(peer, "host", None)
    if host is None:
        return str(fallback)
    port = getattr(peer, "port", None)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def chunks(data, size):
    """C{data} in pieces of at most C{size} bytes (C{size} 0: whole)."""
    if not size or len(data) <= size:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]


def choose_subprotocol(offered):
    """C{binary} when offered, None when nothing is; else refuse with 400."""
    if not offered:
        return None
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    raise ConnectionDeny(
        400,
        "unsupported WebSocket subprotocol(s) "
        f"{printable(', '.join(offered))}: nexusws speaks '{SUBPROTOCOL}' or none",
    )


def denial(failure, target):
    """The L{ConnectionDeny} a failed handshake answers with; None for an unexpected error."""
    if failure.check(ConnectionDeny):
        return failure.value
    if failure.check(defer.CancelledError):
        return ConnectionDeny(503, "handshake cancelled")
    if failure.check(error.ConnectError, error.DNSLookupError, error.TimeoutError):
        return ConnectionDeny(502, f"backend {target} unreachable: {describe(failure.value)}")
    return None


def describe(exc):
    """A short, one-line description of a connection error."""
    text = getattr(exc, "osError", None) or exc
    if isinstance(text, int):  # Twisted's connect errors keep the errno: say what it means
        text = os.strerror(text)
    text = str(text).strip().rstrip(".")
    for prefix in ("Connection was refused by other side: ", "An error occurred while connecting: "):
        text = text.replace(prefix, "")
    return printable(text or type(exc).__name__)
