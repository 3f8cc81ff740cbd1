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
  - A session tunnel tells its launch when the client sends user input
    (L{nexusws.activity}: key, pointer and clipboard events of a VNC session, any
    byte otherwise), for the session's idle limit (L{nexusws.sessions.deadlines}).

The protocol comes in three parts: L{nexusws.handshake} (admission and the
opening handshake, with its rules), this module (the open tunnel: connecting
the backend, the data both ways) and L{nexusws.closing} (the close rules).
L{BridgeFactory} makes the protocols and knows the open tunnels.
"""

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from OpenSSL import SSL
from twisted.internet import defer

from nexusws import internals, limits, pipes
from nexusws.activity import InputTracker
from nexusws.closing import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, SESSION_END_CLOSES, Closing
from nexusws.handshake import HELD_LIMIT, Handshake
from nexusws.logs import Quieter, logger, printable
from nexusws.pipes import Backend, OneShot, QuietIO, Valve, describe
from nexusws.scrub import redact_text
from nexusws.tls import openssl_reason


class BridgeProtocol(Handshake, Closing, QuietIO, WebSocketServerProtocol):
    """One tunnel: a WebSocket client bridged to one TCP backend."""

    # A class attribute: its lines' namespace is this class's, nexusws.bridge.BridgeProtocol
    # (see nexusws.logs), whichever part (handshake, closing) logs.
    _log = logger("nexusws.bridge")

    backend = None
    target = None
    launch = None
    _held = frozenset()  # why the client's reads are paused: "gateway", "launch", "replies"
    _pending = None  # the client's payload sent before there is a backend (a launch)
    opened = False
    closing = False
    _connecting = None
    _client_valve = None
    _backend_valve = None
    _max_frame = None  # the largest client frame payload the size options let through (0: any)
    _input = None  # a session tunnel's InputTracker: which client bytes are its user's input
    _watch_server = False  # whether the tracker still reads the backend's bytes (its greeting)

    # --- the connection and its backend ------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.gone = defer.Deferred()
        self.client = pipes.peer_label(self.transport.getPeer(), getattr(self, "peer", "-"))

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
            # A session's idle limit counts its user's input (nexusws.activity).
            self._input = InputTracker(on_fallback=self._input_fallback)
            self._watch_server = True
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
        if getattr(failure.value, "why", None) in SESSION_END_CLOSES:  # ended on purpose: no failure
            self._log.info("tunnel closed: {client} -> {launch}: {reason}", client=self.client,
                           launch=self.launch, reason=printable(failure.getErrorMessage()))
        else:
            self._log.warn("tunnel failed: {client} -> {launch}: {reason}", client=self.client,
                           launch=self.launch, reason=printable(failure.getErrorMessage()))
        if not self.closing and getattr(failure.value, "why", None) in SESSION_END_CLOSES:
            # Ended while starting for a reason with a code of its own (an administrator's End).
            code, text = SESSION_END_CLOSES[failure.value.why]
            self._close(code, text.format(detail="its instance ended"))
        elif not self.closing:
            # The reason names the service and instance already; its end is the cause.
            # A script's message may quote its options: the client gets them masked too.
            self._close(CLOSE_INTERNAL_ERROR, pipes.close_reason(redact_text(failure.getErrorMessage())))

    def _backend_failed(self, failure, target):
        self._connecting = None
        if self.closing or failure.check(ConnectionDeny, defer.CancelledError):
            return
        reason = pipes.close_reason(f"backend {target} unreachable: {describe(failure.value)}")
        self._ended_why = reason
        self._log.warn("tunnel failed: {client} -> {launch}: {reason}", client=self.client,
                       launch=self.launch, reason=reason)
        self._close(CLOSE_INTERNAL_ERROR, reason)

    def _input_fallback(self, reason):
        self._log.info("{client}: input tracking: {reason}; counting every byte from the client as input",
                       client=self.client, reason=reason)

    def _flow(self, read, slow, paused):
        """A flow-control pause or resume, at --verbose 1."""
        if paused:
            self._log.debug("{client}: reading from the {read} paused: the {slow} is not taking its data",
                            client=self.client, read=read, slow=slow)
        else:
            self._log.debug("{client}: reading from the {read} resumed", client=self.client, read=read)

    def _start_piping(self):
        self._log.info(
            "tunnel open: {client} {path} -> {target}",
            client=self.client,
            path=self.path,
            target=self.target,
        )
        backend_transport = self.backend.transport
        # The client's transport is a consumer of backend data and vice versa.
        self._backend_valve = Valve(backend_transport, on_resume=self._client_drained,
                                    note=lambda paused: self._flow("backend", "client", paused))
        self.transport.registerProducer(self._backend_valve, True)
        self._client_valve = Valve(self.transport, note=lambda paused: self._flow("client", "backend", paused))
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
        if self.failedByMe or self._backend_done is not None or self._taken_over:
            return
        if self.backend is None or self._pending is not None:
            if self._pending is not None and not self.closing:  # a launch: until it is up
                self._pending += payload
                if len(self._pending) > HELD_LIMIT:
                    self._hold_client("launch")
                if self._input is not None and self._input.client(payload):
                    self.launch.input(self.factory.reactor.seconds())
            return
        self.bytes_up += len(payload)
        internals.write_now(self.backend.transport, payload)
        if self._input is not None and self._input.client(payload):
            self.launch.input(self.factory.reactor.seconds())

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
            if self._before_open(data):
                return
        internals.raw_receive(self, data)

    def onMessageFrameEnd(self):
        pass

    def onMessageEnd(self):
        pass

    def backendData(self, data):
        if self.closing or self.state != self.STATE_OPEN:
            return  # closing or failing: the client is sent nothing more (see _finish_backend)
        if self._watch_server:  # a session tunnel's tracker reads the backend's greeting
            self._watch_server = self._input.server(data)
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

    # processControlFrame is Autobahn's internal method (nexusws.internals checks
    # at start-up that it is still there).

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

    # --- holding the client (during the handshake, a launch, unread replies) ---

    def _hold_client(self, why, hold=True):
        """Pause reading from the client for C{why} (or stop holding it for C{why});
        it is read again once nothing holds it."""
        held = self._held | {why} if hold else self._held - {why}
        if bool(held) != bool(self._held):
            (self.transport.pauseProducing if held else self.transport.resumeProducing)()
        self._held = held


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
