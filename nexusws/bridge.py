"""The WebSocket ⇄ TCP tunnel.

One L{BridgeProtocol} per WebSocket. During the opening handshake it asks the
factory's router where the tunnel goes (see L{nexusws.routing}). For an address
that already listens it connects first and only then answers 101, so a client
is never told "open" for a tunnel that cannot work. For a backend that is being
launched it answers 101 at once, holds the client's bytes, and connects when
the launch is up (or closes with 1011 and the reason if it fails).

Data rules:
  - Backend bytes go to the client as binary messages, in order, as they arrive.
  - Client messages go to the backend frame by frame as they arrive (a large
    message is never assembled in memory). Text frames are forwarded as their
    UTF-8 bytes, exactly like binary frames.
  - Flow control both ways: each side's transport is the producer of the other,
    so a stalled reader on either side stops reading on the other.

Admission, before anything is connected or launched (see L{nexusws.limits}):
the client must finish its request within the handshake timeout and within
C{max_request_size} bytes (431 beyond); its C{Origin}
must be allowed (403); it must offer C{binary} or no subprotocol (400); there
must be a free tunnel slot in total (503) and for its address (429). A slot is
held until the connection is gone. Messages and frames beyond the size limits
close the tunnel with 1009. Nothing more is read from the client while the
gateway works on its request (a second request head in the same connection is
never admitted), nor while its own replies (pongs) are not being taken: the
bytes queued for a client are bounded by flow control, whatever it sends.

Close rules (nothing is lost):
  - Backend closes: everything it sent is written to the client first; the close
    frame (1000, or 1011 if the backend connection failed) is sent once the
    client's transport buffer has drained.
  - Client closes: everything it sent is written to the backend, then EOF (a
    half-close); what the backend still sends is read and discarded until it
    closes, so the kernel never resets the connection over unread bytes (a
    reset loses what the backend had not read yet). A backend that neither
    drains nor closes is aborted after C{close_timeout}.
  - A WebSocket that is closing or failing is sent nothing more.
  - The gateway fails a connection (a protocol error: 1002, 1007, 1009): its
    close frame is waited for L{FAILED_CLOSE_TIMEOUT} at most, not
    C{close_timeout}; there is no backlog worth draining.
  - Shutdown: tunnels are closed with 1001 "going away".
"""

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet import defer, error

from nexusws import internals, limits, pipes
from nexusws.logs import Quieter, logger, printable, redact_text
from nexusws.pipes import Backend, OneShot, QuietIO, Valve, describe, request_target
from nexusws.routing import Launch
from nexusws.tls import openssl_reason

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011

#: Seconds the gateway may take for its side of a handshake beyond --connect_timeout.
GATEWAY_MARGIN = 5.0
#: Seconds a client has to answer the close of a connection the gateway failed.
FAILED_CLOSE_TIMEOUT = 2.0
#: Bytes of a client's held before there is a backend (sent early, or during a
#: launch); beyond, it is read no more until there is one. Reading on below it
#: is what notices a client that leaves while it waits.
HELD_LIMIT = 256 * 1024


class BridgeProtocol(QuietIO, WebSocketServerProtocol):
    """One tunnel: a WebSocket client bridged to one TCP backend."""

    _log = logger("nexusws.bridge")

    backend = None
    target = None
    launch = None
    _held = frozenset()  # why the client's reads are paused: "gateway", "launch", "replies"
    _head_refused = False
    _early = None  # what the client sent after its request head, before the 101
    _pending = None  # the client's payload sent before there is a backend (a launch)
    _client_drain_call = None
    _refusal_logged = False  # this handshake's refusal has its line (ours) in the log
    opened = False
    closing = False
    _connecting = None
    _client_valve = None
    _backend_valve = None
    _backend_done = None
    _drain_call = None
    _release_slot = None
    _phase = None  # (what is awaited, seconds) once the handshake waits for the gateway
    _max_frame = None  # the largest client frame payload the size options let through (0: any)

    # --- handshake ------------------------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.gone = defer.Deferred()
        self.client = pipes.peer_label(self.transport.getPeer(), getattr(self, "peer", "-"))

    def onConnect(self, request):
        self._gateway_phase()
        self.bytes_up = 0  # client -> backend
        self.bytes_down = 0  # backend -> client
        self.started = self.factory.reactor.seconds()
        self.path = request_target(request)
        chosen = []
        d = defer.maybeDeferred(self._admit, request)
        d.addCallback(lambda protocol: chosen.append(protocol) or self.factory.router.route(request))
        d.addCallback(self._routed)
        d.addCallback(lambda _: (chosen[0], {}))
        d.addErrback(self._refuse)
        return d

    def _routed(self, route):
        if isinstance(route, Launch):
            # The backend is being started: open now, connect once it is up.
            self.launch = route
            self.target = route
            return None
        return self._connect_backend(route)

    def _gateway_phase(self):
        """The client's request is in: from now on the handshake waits for the gateway.

        The client had C{openHandshakeTimeout} (--handshake_timeout) to send it;
        connecting the backend gets --connect_timeout (502 beyond), and this
        deadline only backs that up.
        """
        self._phase = ("gateway side not done", self.factory.connect_timeout + GATEWAY_MARGIN)
        # Autobahn would take a second request head in this connection for a
        # new handshake: what comes now is kept aside (bounded) until open. The
        # client is still read, so one that leaves is noticed at once.
        self._early = bytearray()
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
        self.openHandshakeTimeoutCall = self.factory.reactor.callLater(
            self._phase[1], self.onOpenHandshakeTimeout
        )

    def _admit(self, request):
        """Origin, then subprotocol, then a tunnel slot; return the subprotocol."""
        self.factory.origins.check(request.origin)
        protocol = pipes.choose_subprotocol(request.protocols)
        peer = self.transport.getPeer()
        address = self.factory.client_host(request, peer)
        if address != getattr(peer, "host", address):  # behind a trusted proxy: log both
            self.client = f"{address} via {self.client}"
        self._release_slot = self.factory.counter.acquire(address)
        return protocol

    def _connect_backend(self, target):
        self.target = target
        self._log.debug(
            "{client} {path}: connecting to {target}", client=self.client, path=self.path, target=target
        )
        backend = Backend(self)
        endpoint = self.factory.backend_endpoint(target)
        self._connecting = endpoint.connect(OneShot(backend))
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
        self._refusal_logged = True  # below, or needs none (the client went away)
        deny = pipes.denial(failure, self.target)
        if deny is None:
            self._log.failure(
                "{client}: unexpected error while opening a tunnel", failure, client=self.client
            )
            deny = ConnectionDeny(500, "internal error while opening the tunnel")
        if not self.closing:
            self._log.warn(
                "tunnel refused: {client} {path} -> {target}: {code} {reason}", client=self.client,
                path=self.path, target=self.target or "-", code=deny.code,
                reason=getattr(deny, "detail", deny.reason),  # limits.Refused says more
            )
        raise deny

    def failHandshake(self, reason, code=400, responseHeaders=None):
        # One line per refused handshake: ours (logged already, or here for a request
        # Autobahn itself refuses); Autobahn's own two (its refusal, and the drop
        # that follows) go to debug.
        if not (self._refusal_logged or self._head_refused):
            self._refusal_logged = True
            self._log.info("handshake refused: {client}: {code} {reason}", client=self.client,
                           code=code, reason=printable(reason))
        self.log = Quieter(type(self).log)
        try:
            super().failHandshake(reason, code, responseHeaders)
        finally:
            del self.log

    # --- open -----------------------------------------------------------------

    def connectionLost(self, reason):
        if reason.check(SSL.Error):
            # A client's failed TLS handshake is its mistake, not the gateway's
            # error (Autobahn logs it at error): one line, as the HTTP listener has.
            self._log.info("wss {client} TLS failed: {why}", client=self.client,
                           why=openssl_reason(reason.value))
            internals.connection_lost_unlogged(self, reason)
            return
        super().connectionLost(reason)

    def onOpen(self):
        self.opened = True
        if self._early:  # Autobahn reads these frames once this returns
            self.data += bytes(self._early)
        self._early = None
        self._hold_client("gateway", False)
        self.factory.tunnels.add(self)
        self.factory.opened_total += 1
        if self.launch is not None:
            # The client's payload waits for the backend (HELD_LIMIT at most read).
            self._pending = bytearray()
            self.launch.started.addCallback(self._launched)
            self.launch.started.addErrback(self._launch_failed)
            return
        self._start_piping()

    def _launched(self, target):
        if self.closing:
            return None
        self._log.debug("{client}: {launch} is up at {target}", client=self.client,
                        launch=self.launch, target=target)
        self.target = target
        d = self._connect_backend(target)
        d.addCallback(lambda _: None if self.closing else self._start_piping())
        d.addErrback(self._backend_failed, target)
        return d

    def _launch_failed(self, failure):
        self._log.warn("tunnel failed: {client} -> {launch}: {reason}", client=self.client,
                       launch=self.launch, reason=printable(failure.getErrorMessage()))
        if not self.closing:
            # The reason names the service and instance already; its end is the cause.
            # A script's message may quote its options: the client gets them masked too.
            self._close(CLOSE_INTERNAL_ERROR, pipes.close_reason(redact_text(failure.getErrorMessage())))

    def _backend_failed(self, failure, target):
        self._connecting = None
        if self.closing or failure.check(ConnectionDeny, defer.CancelledError):
            return
        reason = pipes.close_reason(f"backend {target} unreachable: {describe(failure.value)}")
        self._log.warn("tunnel failed: {client} -> {launch}: {reason}", client=self.client,
                       launch=self.launch, reason=reason)
        self._close(CLOSE_INTERNAL_ERROR, reason)

    def _start_piping(self):
        self._log.info(
            "tunnel open: {client} {path} -> {target}",
            client=self.client,
            path=self.path,
            target=self.target,
        )
        backend_transport = self.backend.transport
        # The client's transport is a consumer of backend data and vice versa.
        self._backend_valve = Valve(backend_transport, on_resume=self._client_drained)
        self.transport.registerProducer(self._backend_valve, True)
        self._client_valve = Valve(self.transport)
        backend_transport.registerProducer(self._client_valve, True)
        backend_transport.resumeProducing()
        pending, self._pending = self._pending, None
        if pending:
            self.bytes_up += len(pending)
            backend_transport.write(bytes(pending))
        self._hold_client("launch", False)

    # --- data -----------------------------------------------------------------

    def onMessageFrameData(self, payload):
        # Stream each frame's payload straight through instead of assembling
        # whole messages: memory stays bounded whatever the message size.
        if self.failedByMe or self._backend_done is not None:
            return
        if self.backend is None or self._pending is not None:
            if self._pending is not None and not self.closing:  # a launch: until it is up
                self._pending += payload
                if len(self._pending) > HELD_LIMIT:
                    self._hold_client("launch")
            return
        self.bytes_up += len(payload)
        internals.write_now(self.backend.transport, payload)

    def dataReceived(self, data):
        # Whole binary frames (nearly all a tunnel gets) are forwarded here;
        # anything else, and what follows it, goes through Autobahn.
        if (
            self.state == self.STATE_OPEN
            and not self.logFrames
            and not self.logOctets
            and internals.between_frames(self)
        ):
            if self._max_frame is None:  # the size options, once a tunnel
                limits = [n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize) if n > 0]
                self._max_frame = min(limits) if limits else 0
            frames, end = pipes.simple_frames(data, self._max_frame)
            for mask, start, stop in frames:
                if stop > start:
                    self.onMessageFrameData(pipes.unmask(data, mask, start, stop))
            if end:
                data = data[end:]
                if not data:
                    return
        elif self.state == self.STATE_CONNECTING:
            if self._early is not None:  # the gateway works on the request: set aside
                self._early += data
                if len(self._early) > HELD_LIMIT:
                    self._hold_client("gateway")
                return
            if self._head_too_large(data):
                return
        internals.raw_receive(self, data)

    def _head_too_large(self, data):
        """Refuse (431) a request head that does not end within C{max_request_size} bytes.

        Autobahn keeps the head in one buffer and searches it whole on every
        read: without a cap, one client sending megabytes of headers costs
        the whole gateway CPU (and memory) until the handshake timeout.
        """
        if self._head_refused:
            return True
        limit = self.factory.max_request_size
        if not limit or len(self.data) + len(data) <= limit:
            return False
        end = (self.data + data).find(b"\r\n\r\n")
        if 0 <= end <= limit - 4:
            return False
        self._head_refused = True
        self.data = b""
        self._log.info("handshake refused: {client}: request head over {limit} bytes (431)",
                       client=self.client, limit=limit)
        self.failHandshake(f"request head over {limit} bytes", code=431)
        return True

    def onMessageFrameEnd(self):
        pass

    def onMessageEnd(self):
        pass

    def backendData(self, data):
        if self.closing or self.state != self.STATE_OPEN:
            return  # closing or failing: the client is sent nothing more (see _finish_backend)
        self.bytes_down += len(data)
        # Autobahn applies the message size limit to what it sends too.
        pieces = pipes.chunks(data, self.maxMessagePayloadSize)
        if self._frames_plain():
            # What sendMessage would write, without its copy and bookkeeping.
            for piece in pieces:
                internals.write_now(self.transport, piece, pipes.frame_header(len(piece)))
            return
        for piece in pieces:
            self.sendMessage(piece, isBinary=True)

    def onPing(self, payload):
        super().onPing(payload)
        # The pong was queued like data: a client that sends pings but does not
        # read its pongs is read no more until what it was sent has drained.
        if self._backend_valve is not None and self._backend_valve.paused:
            self._hold_client("replies")

    # processControlFrame and _fail_connection are Autobahn's internal methods
    # (nexusws.internals checks at start-up that they are still there).

    def processControlFrame(self):
        # An unsolicited pong is legal (a heartbeat); while a keep-alive ping is
        # pending Autobahn warns of each one: a client could fill the log at
        # will. Those lines go to debug.
        if self.autoPingPending and internals.receiving_pong(self):
            self.log = Quieter(type(self).log)
            try:
                return super().processControlFrame()
            finally:
                del self.log
        return super().processControlFrame()

    def _fail_connection(self, code=CLOSE_GOING_AWAY, reason="going away"):
        # A connection the gateway fails (a protocol error) has no backlog worth
        # waiting for: its client gets FAILED_CLOSE_TIMEOUT to answer the close.
        timeout = self.closeHandshakeTimeout
        if not timeout or timeout > FAILED_CLOSE_TIMEOUT:
            self.closeHandshakeTimeout = FAILED_CLOSE_TIMEOUT
        super()._fail_connection(code, reason)

    def client_keeps_up(self):
        """Whether everything sent to the client so far has left (nothing queued)."""
        return internals.queued(self.transport) == 0

    def _frames_plain(self):
        """Whether a message is sent as one plain frame: open, no compression, no
        fragmenting, nothing of Autobahn's own in the way (a frame being sent,
        a queue of synchronous writes, frame logging)."""
        return (
            self.state == self.STATE_OPEN
            and not self.autoFragmentSize
            and not self.logFrames
            and not self.trackedTimings
            and internals.sending_idle(self)
        )

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
                f"backend connection lost: {describe(reason.value)}",
            )
        if self._backend_valve is not None and self._backend_valve.paused:
            # Bytes are still queued for the client; close once they are written,
            # or cut it off if it does not take them within close_timeout.
            self._log.debug("{client}: backend closed, draining to client", client=self.client)
            if self.factory.close_timeout > 0:
                self._client_drain_call = self.factory.reactor.callLater(
                    self.factory.close_timeout, self._client_never_drained)
            return
        self._close_after_backend()

    def _client_never_drained(self):
        self._client_drain_call = None
        self._log.info("{client}: did not take the backend's last data within {timeout:g} s: "
                       "connection dropped", client=self.client, timeout=self.factory.close_timeout)
        self.dropConnection(abort=True)

    def _client_drained(self):
        self._hold_client("replies", False)
        if self._backend_done is not None and not self.closing:
            if self._client_drain_call is not None and self._client_drain_call.active():
                self._client_drain_call.cancel()
            self._client_drain_call = None
            self._close_after_backend()

    def _close_after_backend(self):
        self._close(*self._backend_done)

    def _hold_client(self, why, hold=True):
        """Pause reading from the client for C{why} (or stop holding it for C{why});
        it is read again once nothing holds it."""
        held = self._held | {why} if hold else self._held - {why}
        if bool(held) != bool(self._held):
            (self.transport.pauseProducing if held else self.transport.resumeProducing)()
        self._held = held

    def _close(self, code, reason):
        # The client's close reply must be read, so held bytes are let through.
        if self._held:
            self._held = frozenset()
            self.transport.resumeProducing()
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
        self._pending = self._early = None
        if self._client_drain_call is not None and self._client_drain_call.active():
            self._client_drain_call.cancel()
        if self._release_slot is not None:
            self._release_slot()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.backend is not None and self.backend.transport.connected:
            self._finish_backend()
        if self.launch is not None:
            self.launch.end().addErrback(
                lambda f: self._log.failure("ending {launch} failed", f, launch=self.launch)
            )
        if not self.opened:
            if getattr(self, "wasOpenHandshakeTimeout", False):
                what, seconds = self._phase or ("no complete request", self.openHandshakeTimeout)
                self._log.info("handshake timeout: {client} dropped: {what} within {seconds:g} s",
                               client=self.client, what=what, seconds=seconds)
            return
        self.factory.tunnels.discard(self)
        self.factory.closed_bytes_up += self.bytes_up
        self.factory.closed_bytes_down += self.bytes_down
        duration = self.factory.reactor.seconds() - self.started
        if self.closedByMe and self.localCloseCode is not None:  # ours (1009...), not the echo
            code, reason = self.localCloseCode, self.localCloseReason or b""
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
        if code is None:  # RFC 6455 7.1.5: a close frame without a code is 1005; none at all, 1006
            code = 1005 if wasClean else 1006
        self._log.info(
            "tunnel closed: {client} -> {target}: {up} bytes up, {down} bytes down, "
            "{duration:.3f}s, close {code} {reason}{clean}", client=self.client, target=self.target,
            up=self.bytes_up, down=self.bytes_down, duration=duration, code=code,
            reason=printable(reason or ""), clean="" if wasClean else " (unclean)",
        )
        self.gone.callback(None)

    def _finish_backend(self):
        """Write what the client sent, then EOF; read (and discard) what the backend
        still sends until it closes; abort it if it takes longer than close_timeout."""
        transport = self.backend.transport
        transport.unregisterProducer()
        transport.loseWriteConnection()
        transport.resumeProducing()
        timeout = self.factory.close_timeout
        if timeout > 0:
            self._drain_call = self.factory.reactor.callLater(timeout, transport.abortConnection)

    def _cancel_drain_call(self):
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None


class BridgeFactory(WebSocketServerFactory):
    """Makes L{BridgeProtocol}s, knows where tunnels go and which are open.

    @param router: has C{route(request)} returning a L{Target} (or a Deferred of
        one) or raising L{ConnectionDeny}.
    @param connect_timeout: seconds to wait for the backend TCP connection.
    @param close_timeout: seconds a closing side may take to drain its data.
    @param ping_interval: seconds between keep-alive pings (0: none).
    @param ping_timeout: seconds to wait for a pong before dropping the peer.
    @param handshake_timeout: seconds a client has to send its whole request (0: no limit).
    @param max_frame_size: bytes of the largest frame a client may send (0: no limit).
    @param max_message_size: bytes of the largest message either way (0: no limit).
    @param max_request_size: bytes of the longest request head (431 beyond; 0: no limit).
    @param max_tunnels: tunnels at once in total (0: no limit).
    @param max_tunnels_per_address: tunnels at once per client address (0: no limit).
    @param allowed_origins: origin patterns (see L{nexusws.limits}); none: any origin.
    """

    protocol = BridgeProtocol

    def __init__(
        self, router, reactor, connect_timeout=10.0, close_timeout=30.0, ping_interval=0.0,
        ping_timeout=None, handshake_timeout=limits.HANDSHAKE_TIMEOUT,
        max_frame_size=limits.MAX_FRAME_SIZE, max_message_size=limits.MAX_MESSAGE_SIZE,
        max_request_size=limits.MAX_REQUEST_SIZE, max_tunnels=limits.MAX_TUNNELS, max_tunnels_per_address=limits.MAX_TUNNELS_PER_ADDRESS,
        allowed_origins=(),
    ):
        super().__init__(reactor=reactor)
        self.noisy = False
        internals.use_reactor(self, reactor)
        self.router = router
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.max_request_size = max_request_size
        self.tunnels = set()
        # For /v1/metrics (nexusws.metrics): what closed tunnels carried, tunnels opened.
        self.opened_total = self.closed_bytes_up = self.closed_bytes_down = 0
        self.origins = limits.OriginPolicy(allowed_origins)
        self.counter = limits.TunnelCounter(max_tunnels, max_tunnels_per_address)
        # One call only: every call resets allowNullOrigin. Autobahn's own origin
        # check lets everything through; L{limits.OriginPolicy} decides, and logs.
        self.setProtocolOptions(
            webStatus=False,
            allowNullOrigin=True,
            openHandshakeTimeout=handshake_timeout,
            maxFramePayloadSize=max_frame_size,
            maxMessagePayloadSize=max_message_size,
            closeHandshakeTimeout=close_timeout,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout if ping_timeout is not None else ping_interval,
            failByDrop=False,
        )

    #: Optional C{(peer, headers) -> client address} (L{nexusws.auth.Access.client}:
    #: behind a trusted proxy, the address it forwards).
    client_address = None

    def client_host(self, request, peer):
        """The address tunnels are counted by: C{client_address}'s, else the TCP peer's host."""
        if self.client_address is not None:
            return self.client_address(peer, request.headers)
        return getattr(peer, "host", None) or str(peer)

    def backend_endpoint(self, target):
        return pipes.backend_endpoint(self.reactor, target.host, target.port, self.connect_timeout)

    def close_all(self):
        """Close every open tunnel with 1001; fires when all are gone."""
        return defer.DeferredList([t.close_for_shutdown() for t in list(self.tunnels)])
