"""A tunnel's opening handshake: admission, the gateway's deadline, the bytes before open.

L{Handshake} is the part of L{nexusws.bridge.BridgeProtocol} that runs until
the 101 (or the refusal): it admits the client, asks the factory's router
where the tunnel goes, and refuses with one log line. It connects the backend
with the protocol's C{_connect_backend} and logs through the protocol's
C{_log}: its lines read C{[nexusws.bridge.BridgeProtocol#...]}, as the
protocol's own do.

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
"""

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer

from nexusws import pipes
from nexusws.logs import Quieter, printable
from nexusws.pipes import request_target
from nexusws.routing import Launch

#: Seconds the gateway may take for its side of a handshake beyond --connect_timeout.
GATEWAY_MARGIN = 5.0
#: Bytes of a client's held before there is a backend (sent early, or during a
#: launch); beyond, it is read no more until there is one. Reading on below it
#: is what notices a client that leaves while it waits.
HELD_LIMIT = 256 * 1024


class Handshake:
    """The opening handshake of a L{nexusws.bridge.BridgeProtocol} (see the module docstring)."""

    _head_refused = False
    _early = None  # what the client sent after its request head, before the 101
    _refusal_logged = False  # this handshake's refusal has its line (ours) in the log
    _release_slot = None
    _phase = None  # (what is awaited, seconds) once the handshake waits for the gateway

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
            route.tunnel = self
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

    def _before_open(self, data):
        """Take C{data} the client sent before the 101, if it is the gateway's to
        take; return whether it was (Autobahn reads it otherwise)."""
        if self._early is not None:  # the gateway works on the request: set aside
            self._early += data
            if len(self._early) > HELD_LIMIT:
                self._hold_client("gateway")
            return True
        return self._head_too_large(data)

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

    def _handshake_dropped(self):
        """The connection closed before it opened: one line if the handshake timed out."""
        if getattr(self, "wasOpenHandshakeTimeout", False):
            what, seconds = self._phase or ("no complete request", self.openHandshakeTimeout)
            self._log.info("handshake timeout: {client} dropped: {what} within {seconds:g} s",
                           client=self.client, what=what, seconds=seconds)
