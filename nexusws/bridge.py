"""The WebSocket ⇄ TCP tunnel.

One L{BridgeProtocol} per WebSocket. During the opening handshake it asks the
factory's router where the tunnel goes, connects to that TCP address, and only
then answers 101, so a client is never told "open" for a tunnel that cannot work.

Data rules:
  - Backend bytes go to the client as binary messages, in order, as they arrive.
  - Client messages go to the backend frame by frame as they arrive (a large
    message is never assembled in memory). Text frames are forwarded as their
    UTF-8 bytes, exactly like binary frames.
  - Flow control both ways: each side's transport is the producer of the other,
    so a stalled reader on either side stops reading on the other.

Close rules (nothing is lost):
  - Backend closes: everything it sent is written to the client first; the close
    frame (1000, or 1011 if the backend connection failed) is sent once the
    client's transport buffer has drained.
  - Client closes: everything it sent is written to the backend, then EOF.
  - Shutdown: tunnels are closed with 1001 "going away".
"""

from urllib.parse import urlencode

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from nexusws.logs import logger, printable, redact

SUBPROTOCOL = "binary"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


@implementer(IPushProducer)
class _Valve:
    """A producer proxy that pauses and resumes one transport for another.

    C{stopProducing} is deliberately inert: the tunnel decides how each side
    closes, so a consumer going away never aborts the other side's pending data.
    """

    def __init__(self, transport, on_resume=None):
        self._transport = transport
        self._on_resume = on_resume
        self.paused = False

    def pauseProducing(self):
        self.paused = True
        self._transport.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        self._transport.resumeProducing()
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self):
        pass


class _Backend(Protocol):
    """The TCP side of a tunnel."""

    def __init__(self, tunnel):
        self.tunnel = tunnel

    def connectionMade(self):
        # Hold the backend's first bytes (an RFB greeting, say) in the kernel
        # until the WebSocket is open and flow control is in place.
        self.transport.pauseProducing()

    def dataReceived(self, data):
        self.tunnel.backendData(data)

    def connectionLost(self, reason):
        self.tunnel.backendLost(reason)


class _OneShot(Factory):
    """Connects one given protocol (connectProtocol's factory, minus its log lines)."""

    noisy = False

    def __init__(self, protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


class BridgeProtocol(WebSocketServerProtocol):
    """One tunnel: a WebSocket client bridged to one TCP backend."""

    _log = logger("nexusws.bridge")

    backend = None
    target = None
    opened = False
    closing = False
    _connecting = None
    _client_valve = None
    _backend_valve = None
    _backend_done = None
    _drain_call = None

    # --- handshake ------------------------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.gone = defer.Deferred()

    def onConnect(self, request):
        self.client = self._client_address(request)
        self.bytes_up = 0  # client -> backend
        self.bytes_down = 0  # backend -> client
        self.started = self.factory.reactor.seconds()
        self.path = _request_target(request)
        chosen = []
        d = defer.maybeDeferred(self._choose_subprotocol, request.protocols)
        d.addCallback(lambda protocol: chosen.append(protocol) or self.factory.router.route(request))
        d.addCallback(self._connect_backend)
        d.addCallback(lambda _: (chosen[0], {}))
        d.addErrback(self._refuse)
        return d

    def _client_address(self, request):
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        if host is None:
            return str(request.peer)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _choose_subprotocol(self, offered):
        if not offered:
            return None
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        raise ConnectionDeny(
            400,
            "unsupported WebSocket subprotocol(s) "
            f"{printable(', '.join(offered))}: nexusws speaks '{SUBPROTOCOL}' or none",
        )

    def _connect_backend(self, target):
        self.target = target
        self._log.debug(
            "{client} {path}: connecting to {target}", client=self.client, path=self.path, target=target
        )
        backend = _Backend(self)
        endpoint = self.factory.backend_endpoint(target)
        self._connecting = endpoint.connect(_OneShot(backend))
        self._connecting.addCallback(self._backend_connected)
        return self._connecting

    def _backend_connected(self, backend):
        self._connecting = None
        self.backend = backend
        if self.closing:
            # The client went away while we were connecting.
            backend.transport.loseConnection()
            raise ConnectionDeny(CLOSE_GOING_AWAY, "client went away")
        return backend

    def _refuse(self, failure):
        self._connecting = None
        if failure.check(ConnectionDeny):
            deny = failure.value
        elif failure.check(defer.CancelledError):
            deny = ConnectionDeny(503, "handshake cancelled")
        elif failure.check(error.ConnectError, error.DNSLookupError, error.TimeoutError):
            deny = ConnectionDeny(
                502, f"backend {self.target} unreachable: {_describe(failure.value)}"
            )
        else:
            self._log.failure(
                "{client}: unexpected error while opening a tunnel", failure, client=self.client
            )
            deny = ConnectionDeny(500, "internal error while opening the tunnel")
        if not self.closing:
            self._log.warn(
                "tunnel refused: {client} {path} -> {target}: {code} {reason}",
                client=self.client,
                path=self.path,
                target=self.target or "-",
                code=deny.code,
                reason=deny.reason,
            )
        raise deny

    # --- open -----------------------------------------------------------------

    def onOpen(self):
        self.opened = True
        self.factory.tunnels.add(self)
        self._log.info(
            "tunnel open: {client} {path} -> {target}",
            client=self.client,
            path=self.path,
            target=self.target,
        )
        backend_transport = self.backend.transport
        # The client's transport is a consumer of backend data and vice versa.
        self._backend_valve = _Valve(backend_transport, on_resume=self._client_drained)
        self.transport.registerProducer(self._backend_valve, True)
        self._client_valve = _Valve(self.transport)
        backend_transport.registerProducer(self._client_valve, True)
        backend_transport.resumeProducing()

    # --- data -----------------------------------------------------------------

    def onMessageFrameData(self, payload):
        # Stream each frame's payload straight through instead of assembling
        # whole messages: memory stays bounded whatever the message size.
        if self.failedByMe or self.backend is None or self._backend_done is not None:
            return
        self.bytes_up += len(payload)
        self.backend.transport.write(payload)

    def onMessageFrameEnd(self):
        pass

    def onMessageEnd(self):
        pass

    def backendData(self, data):
        if self.closing:
            return
        self.bytes_down += len(data)
        self.sendMessage(data, isBinary=True)

    # --- close ----------------------------------------------------------------

    def backendLost(self, reason):
        self._cancel_drain_call()
        if not self.opened or self.closing:
            return
        if reason.check(error.ConnectionDone):
            self._backend_done = (CLOSE_NORMAL, "backend closed the connection")
        else:
            self._backend_done = (
                CLOSE_INTERNAL_ERROR,
                f"backend connection lost: {_describe(reason.value)}",
            )
        if self._backend_valve is not None and self._backend_valve.paused:
            # Bytes are still queued for the client; close once they are written.
            self._log.debug("{client}: backend closed, draining to client", client=self.client)
            return
        self._close_after_backend()

    def _client_drained(self):
        if self._backend_done is not None and not self.closing:
            self._close_after_backend()

    def _close_after_backend(self):
        self._close(*self._backend_done)

    def _close(self, code, reason):
        # sendClose refuses protocol codes such as 1001 and 1011 from
        # applications; a gateway speaks for the protocol, so it sends them.
        self.closing = True
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123), isReply=False)

    def close_for_shutdown(self):
        """Close this tunnel because the server is stopping; fires when it is gone."""
        if not self.closing:
            self._close(CLOSE_GOING_AWAY, "server shutting down")
        return self.gone

    def onClose(self, wasClean, code, reason):
        self.closing = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self.backend is not None and self.backend.transport.connected:
            self._finish_backend()
        if not self.opened:
            return
        self.factory.tunnels.discard(self)
        duration = self.factory.reactor.seconds() - self.started
        self._log.info(
            "tunnel closed: {client} -> {target}: {up} bytes up, {down} bytes down, "
            "{duration:.3f}s, close {code} {reason}{clean}",
            client=self.client,
            target=self.target,
            up=self.bytes_up,
            down=self.bytes_down,
            duration=duration,
            code=code,
            reason=printable(reason or ""),
            clean="" if wasClean else " (unclean)",
        )
        self.gone.callback(None)

    def _finish_backend(self):
        """Write what the client sent, then EOF; abort a backend that never drains."""
        transport = self.backend.transport
        transport.unregisterProducer()
        transport.loseConnection()
        timeout = self.factory.close_timeout
        if timeout > 0:
            self._drain_call = self.factory.reactor.callLater(timeout, transport.abortConnection)

    def _cancel_drain_call(self):
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None


def _request_target(request):
    """The request's path and query, secrets masked, for log lines."""
    query = urlencode([(k, v) for k, vs in request.params.items() for v in vs])
    return printable(redact(request.path + ("?" + query if query else "")))


def _describe(exc):
    """A short, one-line description of a connection error."""
    text = getattr(exc, "osError", None) or exc
    text = str(text).strip().rstrip(".")
    for prefix in ("Connection was refused by other side: ", "An error occurred while connecting: "):
        text = text.replace(prefix, "")
    return printable(text or type(exc).__name__)


class _ReactorTimer:
    """Autobahn's protocol timers (handshake, ping, close) on the injected reactor.

    Autobahn's default batched timer always uses the global reactor; this keeps
    every timeout on the factory's reactor, so tests can drive them with a Clock.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def call_later(self, delay, fn, *args, **kwargs):
        return self._reactor.callLater(delay, fn, *args, **kwargs)


class BridgeFactory(WebSocketServerFactory):
    """Makes L{BridgeProtocol}s, knows where tunnels go and which are open.

    @param router: has C{route(request)} returning a L{Target} (or a Deferred of
        one) or raising L{ConnectionDeny}.
    @param connect_timeout: seconds to wait for the backend TCP connection.
    @param close_timeout: seconds a closing side may take to drain its data.
    @param ping_interval: seconds between keep-alive pings (0: none).
    @param ping_timeout: seconds to wait for a pong before dropping the peer.
    """

    protocol = BridgeProtocol

    def __init__(
        self,
        router,
        reactor,
        connect_timeout=10.0,
        close_timeout=30.0,
        ping_interval=0.0,
        ping_timeout=None,
    ):
        super().__init__(reactor=reactor)
        self.noisy = False
        self._batched_timer = _ReactorTimer(reactor)
        self.router = router
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.tunnels = set()
        self.setProtocolOptions(
            webStatus=False,
            # No origin policy yet: pages loaded from files (Origin: null) work.
            allowNullOrigin=True,
            openHandshakeTimeout=connect_timeout + 5,
            closeHandshakeTimeout=close_timeout,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout if ping_timeout is not None else ping_interval,
            failByDrop=False,
        )

    def backend_endpoint(self, target):
        return HostnameEndpoint(self.reactor, target.host, target.port, timeout=self.connect_timeout)

    def close_all(self):
        """Close every open tunnel with 1001; fires when all are gone."""
        return defer.DeferredList([t.close_for_shutdown() for t in list(self.tunnels)])
