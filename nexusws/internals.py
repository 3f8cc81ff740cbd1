"""The private parts of Twisted and Autobahn the tunnel's data path uses, in one place.

For speed, the data path reads what neither library documents: Twisted's
write queue and socket (to send at once when nothing is queued, and to know
when a client keeps up), and Autobahn's receive and send state (to forward
whole binary frames without its frame machinery, and to send a message as one
plain frame). This module is the only one that knows those names; the data
path calls its functions. Also Autobahn's, overridden in
L{nexusws.bridge.BridgeProtocol} by name: C{_fail_connection} (in its
L{nexusws.closing} part) and C{processControlFrame}; and set here:
C{factory._batched_timer} and the module's C{pformat}. Outside the data path,
one more: the factory class of Twisted's HTTP connection pool, made quiet for
the balancer's polls (L{quiet_http_pool}; without it, a plain pool).

L{check}, run once at start-up, verifies against the installed libraries that
every one of them is still there with the expected type (on a real
C{tcp.Server} over a socket pair, and on a real Autobahn server protocol after
an in-memory handshake). If any is missing, the module switches to the public
APIs: plain C{transport.write}, L{queued} answering None (unknown: the
client is taken not to keep up), no frame fast path (Autobahn's own
C{dataReceived} and C{sendMessage}). Correct, slower; the gateway says so in
one warning line at start-up.

With the internals present each function costs one module-level flag check at
most (L{raw_receive} none: it I{is} Autobahn's function).
"""

import base64
import collections
import os
import pprint
import socket
import types

import autobahn
import autobahn.websocket.protocol as _autobahn_protocol
import twisted
from autobahn.twisted.websocket import (
    WebSocketAdapterProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web import client
from twisted.web.client import HTTPConnectionPool

#: Whether the internals are in use (L{check} decides; True until it has run).
FAST = True

_PLAIN_TCP = (tcp.Server, tcp.Client)


def versions():
    """C{"Twisted X, Autobahn Y"}: what L{check} inspected."""
    return f"Twisted {twisted.__version__}, Autobahn {autobahn.__version__}"


def set_fast(fast):
    """Use the internals (True) or the public APIs only (False)."""
    global FAST, raw_receive
    FAST = bool(fast)
    raw_receive = _autobahn_receive if FAST else _public_receive


# --- Twisted ------------------------------------------------------------------


def queued(transport):
    """Bytes Twisted holds for C{transport} (a TLS transport: also its TCP transport's);
    None when this installation cannot tell."""
    if not FAST:
        return None
    total = 0
    for _ in range(3):  # the transport, a TLS layer's TCP transport
        buffer = getattr(transport, "dataBuffer", None)
        if buffer is not None:
            total += len(buffer) - transport.offset + transport._tempDataLen
        total += sum(len(b) for b in getattr(transport, "_appSendBuffer", None) or ())
        transport = getattr(transport, "transport", None)
        if transport is None:
            break
    return total


def write_now(transport, data, head=b""):
    """C{transport.write(head + data)}, sent at once when nothing is queued.

    Twisted queues every write and sends it when the reactor next finds the
    socket writable: per 64 KiB of a tunnel that is an epoll round, two
    C{epoll_ctl}s to watch for writability, and (the queue being over the
    producer's 64 KiB mark) two more to pause and resume the other side. A
    tunnel's socket is nearly always writable, so this sends at once, C{head}
    and C{data} in one C{sendmsg} with no copy, and queues only what the
    kernel did not take (where Twisted's flow control goes on as ever). Any
    transport but a plain TCP one (TLS, a test's), or one with data queued or
    closing, is written to as usual, which also keeps the order of bytes.
    """
    if (
        not FAST
        or type(transport) not in _PLAIN_TCP
        or transport._tempDataLen
        or len(transport.dataBuffer) > transport.offset
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        transport.write(head + data if head else data)
        return
    try:
        sent = transport.socket.sendmsg((head, data)) if head else transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        sent = 0  # the queued write meets the error again and closes the connection as usual
    if sent < len(head):
        transport.write(head[sent:] + data)
    elif sent < len(head) + len(data):
        transport.write(data[sent - len(head):])


# --- Autobahn -----------------------------------------------------------------

_public_receive = WebSocketAdapterProtocol.dataReceived  # Twisted's entry point, with its debug line
_autobahn_receive = getattr(WebSocketServerProtocol, "_dataReceived", _public_receive)  # framework-independent

#: C{raw_receive(protocol, data)}: Autobahn's receive of C{data}, without the
#: cost of its per-read debug line when it can.
raw_receive = _autobahn_receive


def between_frames(protocol):
    """Whether Autobahn holds nothing of a frame or message received (nor compresses):
    what follows may be parsed by nexusws. False on the public APIs."""
    return (
        FAST
        and not protocol.data
        and protocol.current_frame is None
        and not protocol.inside_message
        and protocol._perMessageCompress is None
    )


def sending_idle(protocol):
    """Whether Autobahn is sending nothing (no frame begun, nothing queued, no
    compression): a message may be written as one plain frame. False on the public APIs."""
    return (
        FAST
        and protocol._perMessageCompress is None
        and protocol.send_state == protocol.SEND_STATE_GROUND
        and not protocol.send_queue
    )


def send_queue_empty(protocol):
    """Whether Autobahn's queue of synchronous writes is empty (False when unknown)."""
    return FAST and not protocol.send_queue


def receiving_pong(protocol):
    """Whether the control frame Autobahn is processing may be a pong (True when unknown)."""
    return not FAST or protocol.current_frame.opcode == 10


def connection_lost_unlogged(protocol, reason):
    """Autobahn's C{connectionLost} without its log line (on the public APIs: with it)."""
    if FAST:
        protocol._connectionLost(reason)
    else:
        WebSocketAdapterProtocol.connectionLost(protocol, reason)


class ReactorTimer:
    """Autobahn's protocol timers (handshake, ping, close) on the injected reactor.

    Autobahn's default batched timer always uses the global reactor; this keeps
    every timeout on the factory's reactor, so tests can drive them with a Clock.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def call_later(self, delay, fn, *args, **kwargs):
        return self._reactor.callLater(delay, fn, *args, **kwargs)


def use_reactor(factory, reactor):
    """Run C{factory}'s protocols' timers on C{reactor}."""
    factory._batched_timer = ReactorTimer(reactor)


class LazyFormat:
    """C{pprint.pformat(value)}, computed only when a log observer formats it."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return pprint.pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec):
        return format(str(self), spec)


def lazy_pformat(value, *args, **kwargs):
    return LazyFormat(value) if not (args or kwargs) else pprint.pformat(value, *args, **kwargs)


# Autobahn pretty-prints its ~40 settings for a debug line at every connection,
# logged or not: 7% of a tunnel set-up's CPU. Its only other use of pformat is
# in debug-only code (Timings.__str__, connection details), unused here.
_autobahn_has_pformat = hasattr(_autobahn_protocol, "pformat")
_autobahn_protocol.pformat = lazy_pformat


# --- the balancer's HTTP pool ----------------------------------------------------


def quiet_http_pool(reactor):
    """A persistent L{HTTPConnectionPool} whose connections log no "Starting factory"
    line each (a balancer polls every node every few seconds).

    Twisted has no public way to quiet the pool's factory: its class attribute
    C{_factory} (a C{client._HTTP11ClientFactory}) is replaced by a quiet
    subclass. If Twisted no longer has them, a plain pool: correct, noisier."""
    factory = getattr(client, "_HTTP11ClientFactory", None)
    if not (isinstance(factory, type) and getattr(HTTPConnectionPool, "_factory", None) is factory):
        return HTTPConnectionPool(reactor, persistent=True)
    quiet = type("QuietFactory", (factory,), {"noisy": False})
    pool_class = type("QuietPool", (HTTPConnectionPool,), {"_factory": quiet})
    return pool_class(reactor, persistent=True)


# --- the start-up check -------------------------------------------------------


def check():
    """Verify every internal above against the installed libraries; use the
    public APIs if any is missing.

    @return: what is missing, one short name each (empty: all there).
    """
    missing = []
    for probe in (_check_twisted, _check_autobahn):
        try:
            probe(missing)
        # A probe that fails in any way means the library is not as expected.
        except Exception as e:
            why = " ".join(f"{type(e).__name__}: {e}".split())  # one line
            missing.append(f"{probe.__name__[7:]} probe ({why})")
    set_fast(not missing)
    return missing


def _expect(missing, label, obj, name, kind):
    value = getattr(obj, name, _ABSENT)
    if value is _ABSENT or not isinstance(value, kind):
        missing.append(f"{label}.{name}")
    return value


_ABSENT = object()


class _NoReactor:
    """Enough of a reactor for a transport that is only looked at."""

    def addReader(self, reader):
        pass

    removeReader = addWriter = removeWriter = addReader

    def callLater(self, *args, **kwargs):
        raise RuntimeError("no timers in the start-up check")


def _check_twisted(missing):
    ours, theirs = socket.socketpair()
    try:
        t = tcp.Server(ours, Protocol(), ("127.0.0.1", 0), None, 0, _NoReactor())
        for name, kind in (("dataBuffer", bytes), ("offset", int), ("_tempDataLen", int),
                           ("_writeDisconnected", bool), ("connected", int), ("disconnecting", int)):
            _expect(missing, "tcp.Server", t, name, kind)
        sock = _expect(missing, "tcp.Server", t, "socket", socket.socket)
        if sock is not _ABSENT and not callable(getattr(sock, "sendmsg", None)):
            missing.append("tcp.Server.socket.sendmsg")
        if not issubclass(tcp.Client, tcp.Connection):  # the attributes above are Connection's
            missing.append("tcp.Client as a tcp.Connection")
    finally:
        ours.close()
        theirs.close()
    # Set by makeConnection with a TLS context: checked in the class's code.
    names = {n for f in vars(TLSMemoryBIOProtocol).values()
             if isinstance(f, types.FunctionType) for n in f.__code__.co_names}
    if "_appSendBuffer" not in names:
        missing.append("TLSMemoryBIOProtocol._appSendBuffer")


class _Probe(WebSocketServerProtocol):
    received = None

    def onMessage(self, payload, isBinary):
        self.received = payload


class _Sink:
    """Enough of a TCP transport for an in-memory handshake."""

    def write(self, data):
        pass

    def writeSequence(self, data):
        pass

    def loseConnection(self):
        pass

    abortConnection = loseConnection

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 1)

    getHost = getPeer


def _check_autobahn(missing):
    label, before = "WebSocketServerProtocol", len(missing)
    for name in ("_dataReceived", "_connectionLost", "_fail_connection", "processControlFrame"):
        if not callable(getattr(WebSocketServerProtocol, name, None)):
            missing.append(f"{label}.{name}")
    if not _autobahn_has_pformat:
        missing.append("autobahn.websocket.protocol.pformat")
    factory = WebSocketServerFactory(reactor=_NoReactor())
    timer = _expect(missing, "WebSocketServerFactory", factory, "_batched_timer", object)
    if timer is not _ABSENT and not callable(getattr(timer, "call_later", None)):
        missing.append("WebSocketServerFactory._batched_timer.call_later")
    factory.protocol = _Probe
    factory.setProtocolOptions(openHandshakeTimeout=0, webStatus=False)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(_Sink())
    key = base64.b64encode(os.urandom(16))
    WebSocketAdapterProtocol.dataReceived(protocol, (
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"))
    if protocol.state != protocol.STATE_OPEN:
        missing.append(f"{label} in-memory handshake")
        return
    for name, kind in (("data", bytes), ("current_frame", type(None)), ("inside_message", bool),
                       ("_perMessageCompress", type(None)), ("send_state", int),
                       ("SEND_STATE_GROUND", int), ("send_queue", collections.deque)):
        _expect(missing, label, protocol, name, kind)
    if len(missing) == before:  # the receive it is: one masked binary frame "abc"
        _autobahn_receive(protocol, b"\x82\x83\x00\x00\x00\x00abc")
        if protocol.received != b"abc" or protocol.current_frame is not None:
            missing.append(f"{label}._dataReceived as the receive")
