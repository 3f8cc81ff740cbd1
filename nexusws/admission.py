"""Admission at accept time: a cap on the TCP connections one address holds open.

C{--max_connections_per_address} (default L{MAX_CONNECTIONS_PER_ADDRESS}; 0: no
cap) bounds, for each listener separately, the TCP connections one peer
address has open in any state: in its TLS handshake, before or during its
WebSocket or HTTP request, or carrying a tunnel. Without it one address could
hold every descriptor with idle connections before any later check
(C{--handshake_timeout}, C{--max_tunnels_per_address}, the HTTP idle timeout)
gets a say.

Beyond the cap the connection is closed at once: on a plain listener after a
short C{429 Too Many Requests} (for a WebSocket, too: its handshake is HTTP);
on a TLS listener without a word, so that a refusal costs no TLS handshake.
Refusals are logged once per address and L{LOG_INTERVAL}: a flood of them
does not flood the log.

Not counted: peers without an IP address (UNIX sockets: every peer would be
one "address") and the C{--trusted_proxy} addresses given explicitly, since
behind a front proxy every user's connection comes from it. The default trust
(loopback) does not exempt loopback.

Cost: L{CappedFactory.buildProtocol} returns the wrapped factory's own
protocol, so the data path is untouched (no wrapper in C{dataReceived} or
C{write}); the count is given back by a hook set on that protocol's
C{connectionLost}, one extra call per connection.
"""

from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from nexusws.logs import logger, printable

_log = logger("nexusws.admission")

#: Default of C{--max_connections_per_address}.
MAX_CONNECTIONS_PER_ADDRESS = 64
#: Seconds between two log lines about the refusals of one address.
LOG_INTERVAL = 60.0
#: At most this many addresses are remembered for the log's rate limit.
NOTED_ADDRESSES = 4096

_BODY = b"too many connections from this address\n"
#: What a refused connection on a plain (not TLS) listener receives.
TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_BODY)
) + _BODY

_MISSING = object()


class ConnectionCap:
    """Counts one listener's open TCP connections per peer address.

    @param label: the listener's option (C{--ws_listen}), for the log.
    @param limit: the most connections one address may hold (> 0).
    @param clock: an L{IReactorTime}; only its C{seconds()} is used (log rate).
    @param exempt: hosts not counted (C{host in exempt}), or None.
    @ivar by_address: peer host -> connections it holds (absent when none).
    @ivar refused: connections refused since start.
    """

    def __init__(self, label, limit, clock, exempt=None, log_interval=LOG_INTERVAL):
        if limit <= 0:
            raise ValueError("a ConnectionCap needs a limit > 0 (no cap: do not wrap)")
        self.label = label
        self.limit = limit
        self.clock = clock
        self.exempt = exempt
        self.log_interval = log_interval
        self.by_address = {}
        self.refused = 0
        self._noted = {}  # host -> [time of its last log line, refusals since]

    def wrap(self, factory, answer=TOO_MANY):
        """A factory counting C{factory}'s connections; refused ones get C{answer}
        (bytes) then are closed, or with C{answer=None} are aborted at once."""
        return CappedFactory(factory, self, answer)

    def counts(self, host):
        """Whether connections from C{host} (None: not an IP peer) are counted."""
        return bool(host) and (self.exempt is None or host not in self.exempt)

    def acquire(self, host):
        """Count one connection from C{host}; False (and logged) when it is at the cap."""
        held = self.by_address.get(host, 0)
        if held >= self.limit:
            self.refused += 1
            self._note_refusal(host, held)
            return False
        self.by_address[host] = held + 1
        return True

    def release(self, host):
        left = self.by_address[host] - 1
        if left:
            self.by_address[host] = left
        else:
            del self.by_address[host]

    def _note_refusal(self, host, held):
        now = self.clock.seconds()
        noted = self._noted.get(host)
        if noted is not None and now - noted[0] < self.log_interval:
            noted[1] += 1
            return
        if noted is None:
            if len(self._noted) >= NOTED_ADDRESSES:
                self._forget(now)
            _log.warn(
                "{label} refused a connection from {address}: it holds {held} "
                "(--max_connections_per_address {limit}); further refusals of this "
                "address are logged at most every {interval:g} s",
                label=self.label, address=printable(host), held=held, limit=self.limit,
                interval=self.log_interval)
        else:
            _log.warn(
                "{label} refused {count} connection(s) from {address} in the last {seconds:.0f} s "
                "(it holds {held}, --max_connections_per_address {limit})",
                label=self.label, count=noted[1] + 1, address=printable(host),
                seconds=now - noted[0], held=held, limit=self.limit)
        self._noted[host] = [now, 0]

    def _forget(self, now):
        """Drop the addresses last logged an interval ago or more (their tallies with them)."""
        for host, (when, _) in list(self._noted.items()):
            if now - when >= self.log_interval:
                del self._noted[host]


@implementer(IProtocolFactory, ILoggingContext)
class CappedFactory:
    """C{wrappedFactory} under a L{ConnectionCap}.

    C{buildProtocol} returns C{wrappedFactory}'s protocol itself, with a hook
    on its C{connectionLost} that gives the count back; every other attribute
    is read from C{wrappedFactory}, so the listener's factory still shows the
    bridge's or the site's settings.
    """

    def __init__(self, wrappedFactory, cap, answer=TOO_MANY):
        self.wrappedFactory = wrappedFactory
        self.cap = cap
        self.answer = answer

    def __getattr__(self, name):
        return getattr(self.wrappedFactory, name)

    def __repr__(self):
        return f"<CappedFactory {self.cap.limit}/address of {self.wrappedFactory!r}>"

    def logPrefix(self):
        """The wrapped factory's: the port logs "Site starting on 9090", as before."""
        inner = self.wrappedFactory
        return inner.logPrefix() if ILoggingContext.providedBy(inner) else type(inner).__name__

    def doStart(self):
        self.wrappedFactory.doStart()

    def doStop(self):
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        cap = self.cap
        if not cap.counts(host):
            return self.wrappedFactory.buildProtocol(addr)
        if not cap.acquire(host):
            return Refusal(self.answer)
        try:
            protocol = self.wrappedFactory.buildProtocol(addr)
        except BaseException:
            cap.release(host)
            raise
        if protocol is None:  # the transport closes the socket: no connectionLost
            cap.release(host)
            return None
        _release_on_lost(protocol, cap, host)
        return protocol


def _release_on_lost(protocol, cap, host):
    """Call C{cap.release(host)} once C{protocol.connectionLost} has run.

    An instance attribute shadows the class's method for this one protocol;
    the first call removes it again (no cycle left behind, and a second call
    reaches the class's method without releasing twice).
    """
    previous = vars(protocol).get("connectionLost", _MISSING)
    lost = protocol.connectionLost

    def connectionLost(reason):
        if previous is _MISSING:
            del protocol.connectionLost
        else:
            protocol.connectionLost = previous
        try:
            return lost(reason)
        finally:
            cap.release(host)

    protocol.connectionLost = connectionLost


class Refusal(Protocol):
    """A refused connection: send C{answer} and close, or abort at once (None)."""

    def __init__(self, answer):
        self.answer = answer

    def connectionMade(self):
        if self.answer is None:
            self.transport.abortConnection()
        else:
            self.transport.write(self.answer)
            self.transport.loseConnection()

    def dataReceived(self, data):
        """Whatever the client sent is dropped unread."""
