"""Where a WebSocket goes: routers map a handshake request to a TCP L{Target}.

A router has C{route(request)} returning one of:
  - a L{Target} (or a Deferred firing with one): the backend already listens;
    the bridge connects during the handshake and answers 101 once connected;
  - a L{Launch}: the backend is being started (or, for a session that runs
    already, re-attached); the bridge answers 101 at once,
    holds the client's data, and connects when the launch delivers a target
    (or closes with 1011 and the launch's reason if it fails);
or raises L{ConnectionDeny} with the HTTP status to refuse with.
"""

from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer

from nexusws.auth import Access
from nexusws.closing import CLOSE_NORMAL, SESSION_END_CLOSES
from nexusws.logs import logger, printable
from nexusws.sessions.backend import StartFailure
from nexusws.sessions.registry import TokenInUse, UnknownToken

_log = logger("nexusws.routing")

#: The value of the query parameter C{takeover} that asks to take a session over.
TAKEOVER = "1"


class Target:
    """A TCP address a tunnel connects to."""

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __eq__(self, other):
        return isinstance(other, Target) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self):
        return hash((self.host, self.port))


class FixedRouter:
    """Basic mode: every WebSocket goes to one configured address."""

    def __init__(self, target):
        self.target = target

    def route(self, request):
        return self.target


class NoRouter:
    """No backend configured: every WebSocket is refused with a clear reason."""

    def route(self, request):
        raise ConnectionDeny(
            404, "no backend configured: start nexusws with --client_port (basic mode)"
        )


class Launch:
    """A backend that is being started for one WebSocket.

    @param started: a Deferred firing with the L{Target} to connect to, or
        failing with the reason the start failed (its message is sent to the
        client as the close reason).
    @param ended: called once when the WebSocket is gone, whatever happened,
        with why its session ended on purpose (the backend closed the tunnel or
        could not be reached, the server is shutting down), or None when it was
        the client's side that was lost (a session may then wait for it to re-attach).
    @param label: names the instance in log lines.
    @ivar tunnel: the WebSocket's protocol, set by the bridge; L{take_over} closes it.
    @ivar last_input: when its client last sent user input (reactor clock; set by
        L{input}), for the session's idle limit (L{nexusws.sessions.deadlines});
        C{on_input}: called once at the next input, if the registry set it.
    """

    tunnel = None
    last_input = on_input = None
    client = None  # its client's address (behind a trusted proxy, the one it names), for the dashboard
    #: C{explain()}: the connection to the backend closed; a Deferred that fires once the
    #: session's backend knows why (or None): the registry sets it for a session.
    explain = None

    def __init__(self, started, ended, label):
        self.started = started
        self._ended = ended
        self.label = label

    def end(self, why=None):
        ended, self._ended = self._ended, None
        if ended is not None:
            return defer.maybeDeferred(ended, why)
        return defer.succeed(None)

    def backend_lost(self):
        """The tunnel's backend closed: a Deferred to wait for before closing the client (its
        session may be ended meanwhile, with a reason of its own), or None: close now."""
        return None if self.explain is None else self.explain()

    def input(self, now):
        """The tunnel's client sent user input at C{now} (the bridge calls it; see L{nexusws.activity})."""
        self.last_input = now
        if self.on_input is not None:
            call, self.on_input = self.on_input, None
            call()

    def session_ending(self, reason, detail=None):
        """Its session is being ended for a limit (C{"idle"}, C{"max_duration"}) or because its
        instance ended (C{"backend_ended"}, C{detail} says how): the WebSocket is closed with
        the code that says so (L{nexusws.closing.SESSION_END_CLOSES})."""
        if self.tunnel is not None:
            code, text = SESSION_END_CLOSES.get(reason, (CLOSE_NORMAL, reason))
            self.tunnel.session_ended(code, text.format(detail=detail or "its instance ended"))

    def take_over(self):
        """Another WebSocket took this one's session over: this WebSocket is closed
        (L{nexusws.bridge.BridgeProtocol.taken_over}) and ends nothing any more."""
        self._ended = None
        if self.tunnel is not None:
            self.tunnel.taken_over()

    def __str__(self):
        return self.label


class TokenRouter:
    """Sessions: a WebSocket whose query carries C{token=T} gets the instance reserved as T.

    The token is bound to the user who reserved it: presented by anyone else
    (or anonymously, when a user reserved it) it is refused with 403, as it is
    when the user may not use the service (its group, C{--require_group}).
    Nothing is launched for a refused WebSocket. Requests without a token go
    to C{fallback} (basic mode, or refusal).

    A token whose session runs detached (its WebSocket lost within the grace)
    re-attaches: a new connection to the same address, nothing launched. One
    whose session has a WebSocket is refused with 409, unless the request asks
    C{takeover=1}: the session is then the new WebSocket's and the old one is
    closed (4001 "taken over"). Only the user the token may be presented by
    (the checks above: its user, or anyone for an anonymous reservation) gets
    that far; any other value of C{takeover} counts as none.

    @param access: the L{nexusws.auth.Access} that identifies and authorizes users.
    """

    def __init__(self, registry, fallback, access=None):
        self.registry = registry
        self.fallback = fallback
        self.access = access if access is not None else Access()

    def route(self, request):
        tokens = request.params.get("token")
        if not tokens:
            return self.fallback.route(request)
        token = tokens[0]
        # Looked up first: a start that fails at once has freed it by the time activate returns.
        reservation = self.registry.get(token)
        if reservation is not None:
            self._authorize(request, reservation)
        label = "-" if reservation is None else f"{printable(reservation.service.name)}#{reservation.index}"
        launch = Launch(None, lambda why: self.registry.deactivate(token, launch, why), label)
        launch.client = self.access.client(getattr(request, "peer", None), getattr(request, "headers", None) or {})
        launch.explain = lambda: self.registry.instance_lost(token)
        takeover = request.params.get("takeover", [None])[0] == TAKEOVER
        try:
            started = self.registry.activate(token, attachment=launch, takeover=takeover)
        except UnknownToken:
            raise ConnectionDeny(404, "unknown, released or expired token") from None
        except TokenInUse:
            raise ConnectionDeny(409, "token already in use by another WebSocket") from None
        launch.started = started.addCallbacks(lambda address: Target(*address), _cause)
        return launch

    def _authorize(self, request, reservation):
        """Refuse (403) unless the handshake's user may use C{reservation}."""
        identity = self.access.identify(getattr(request, "peer", None),
                                        getattr(request, "headers", None) or {})
        owner = getattr(reservation, "user", None)
        if owner is not None and identity.user != owner:
            reason = "this token was reserved by another user"
            logged = f"{reason} ({_who(owner)})"
        else:
            reason = logged = self.access.refusal(identity.user, reservation.service)
        if reason is None:
            return
        _log.warn("session WebSocket refused: {client} as {user}, for {service}#{index}: {reason}",
                  client=printable(identity.client), user=_who(identity.user),
                  service=printable(reservation.service.name), index=reservation.index,
                  reason=logged)
        raise ConnectionDeny(403, reason)


def _who(user):
    return "anonymous" if user is None else repr(printable(user))


class LaunchFailed(Exception):
    """Why an instance did not start, without the service and index the client knows.

    Its text is the tunnel's close reason and the end of its "tunnel failed" line.

    @ivar what, why, exit_status: those of the L{StartFailure} (None if the
        start failed otherwise).
    """

    def __init__(self, reason, what=None, why=None, exit_status=None):
        super().__init__(reason)
        self.what, self.why, self.exit_status = what, why, exit_status


def _cause(failure):
    """The registry's failure as the tunnel tells it (see L{StartFailure.reason})."""
    value = failure.value
    if isinstance(value, StartFailure):
        raise LaunchFailed(value.reason, value.what, value.why, value.exit_status)
    raise LaunchFailed(failure.getErrorMessage())
