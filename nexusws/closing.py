"""How a tunnel ends: the close rules, the drain deadlines, the closing line in the log.

L{Closing} is the part of L{nexusws.bridge.BridgeProtocol} that ends a
tunnel, from either side or at shutdown. It works on the protocol's state
(its backend, valves and what holds the client) and logs through the
protocol's C{_log}: its lines read C{[nexusws.bridge.BridgeProtocol#...]}, as
the protocol's own do. A connection that closes before it opened is the
handshake's to report (L{nexusws.handshake}).

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
  - Taken over (another WebSocket asked C{takeover=1} for its session): the client
    is closed with 4001 "taken over" and the backend connection at once.
  - Its session ended by a limit: 4002 "session ended: idle", 4003 "session ended:
    time limit reached"; by its instance's own end (a Slurm job's): 1011 "session ended:
    Slurm job 12 timeout, exit code 0"; the backend's last data is not waited for (the session stops).
  - A session tunnel tells its launch why it ended: on purpose (the backend's
    end, a shutdown: the session stops) or the client's side lost (None: the
    session may wait for its token to re-attach, L{nexusws.sessions.attach}).
"""

from autobahn.util import encode_truncate
from twisted.internet import error

from nexusws.logs import printable
from nexusws.pipes import describe

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
#: Another WebSocket took this one's session over (?takeover=1).
CLOSE_TAKEN_OVER = 4001
#: The session was ended by its idle limit, by its time limit (L{nexusws.sessions.deadlines}).
CLOSE_IDLE, CLOSE_TIME_LIMIT = 4002, 4003
#: The code of a session an administrator ended (the dashboard's End).
CLOSE_BY_ADMIN = 4004

#: A limit's name (the C{ending} event's reason) -> the close code and reason its WebSocket gets.
SESSION_END_CLOSES = {"idle": (CLOSE_IDLE, "session ended: idle"),
                      "max_duration": (CLOSE_TIME_LIMIT, "session ended: time limit reached"),
                      "backend_ended": (CLOSE_INTERNAL_ERROR, "session ended: {detail}"),
                      "admin": (CLOSE_BY_ADMIN, "session ended by an administrator")}

#: Seconds a client has to answer the close of a connection the gateway failed.
FAILED_CLOSE_TIMEOUT = 2.0


class Closing:
    """The end of a L{nexusws.bridge.BridgeProtocol}'s tunnel (see the module docstring)."""

    _client_drain_call = None
    _backend_done = None  # (code, reason) the client is closed with once it has the backend's last data
    _drain_call = None
    #: Why the tunnel's session ended on purpose (the backend's end, a shutdown), for
    #: its launch (L{nexusws.routing.Launch.end}); None: the client's side was lost.
    _ended_why = None
    #: Another WebSocket took this one's session over: what this client still sends is dropped.
    _taken_over = False

    # _fail_connection is Autobahn's internal method (nexusws.internals checks at
    # start-up that it is still there).

    def _fail_connection(self, code=CLOSE_GOING_AWAY, reason="going away"):
        # A connection the gateway fails (a protocol error) has no backlog worth
        # waiting for: its client gets FAILED_CLOSE_TIMEOUT to answer the close.
        timeout = self.closeHandshakeTimeout
        if not timeout or timeout > FAILED_CLOSE_TIMEOUT:
            self.closeHandshakeTimeout = FAILED_CLOSE_TIMEOUT
        super()._fail_connection(code, reason)

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
        self._ended_why = self._backend_done[1]
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
        # A session's backend may first find out why (a Slurm job's end: the session is then
        # ended, and this tunnel closed with its reason, by session_ended).
        lost = getattr(self.launch, "backend_lost", None)
        asking = lost() if lost is not None else None
        if asking is None:
            self._close(*self._backend_done)
            return

        def answered(_):
            if not self.closing:
                self._close(*self._backend_done)

        asking.addErrback(lambda f: self._log.failure("asking why {target} closed failed", f, target=self.target))
        asking.addBoth(answered)

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
            self._ended_why = "server shutting down"
            self._close(CLOSE_GOING_AWAY, "server shutting down")
        return self.gone

    def taken_over(self):
        """Another WebSocket took this tunnel's session over: close the client with
        4001 "taken over" and the backend connection at once (its session is the
        new tunnel's; what this client still sends is not for it)."""
        if self.closing:
            return
        self._taken_over = True  # nothing more of this client reaches the session (or its counts)
        self._end_now(CLOSE_TAKEN_OVER, "taken over")

    def session_ended(self, code, reason):
        """The registry ends this tunnel's session for a limit: close the client with
        C{code} and C{reason}, and the backend connection at once."""
        if self.closing:
            return
        self._ended_why = reason  # ended on purpose: its launch must not wait for a re-attach
        self._end_now(code, reason)

    def _end_now(self, code, reason):
        """Close the client with C{code} (dropped if it is not open yet) and the backend at once."""
        if self.state == self.STATE_OPEN:
            self._close(code, reason)
        else:
            self.closing = True
            self.dropConnection(abort=True)
        if self.backend is not None and self.backend.transport.connected:
            self.backend.transport.loseConnection()

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
            self.launch.end(self._ended_why).addErrback(
                lambda f: self._log.failure("ending {launch} failed", f, launch=self.launch)
            )
        if not self.opened:
            self._handshake_dropped()
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
