"""Waiting for a session's TCP port: L{wait_for_port}, and L{StartTimeout} when it never opens.

Used by the registry (an instance's address must accept before its tunnel
connects) and by the scripts' C{wait_for_port} helper. Its pace is in
L{nexusws.sessions.timeouts}.
"""

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol

from nexusws import pipes as _pipes
from nexusws.logs import logger
from nexusws.sessions.timeouts import PORT_INTERVAL, QUICK_INTERVAL, QUICK_PERIOD

_log = logger("nexusws.launcher")


class StartTimeout(Exception):
    """A started program did not become ready (its port did not open) in time."""


_PROBES = Factory.forProtocol(Protocol)
_PROBES.noisy = False  # no "Starting factory" line for every probe


def wait_for_port(reactor, host, port, timeout, interval=PORT_INTERVAL):
    """Try to connect to C{host}:C{port} until it works or C{timeout} seconds pass.

    A connection that succeeds is closed at once.

    @return: a Deferred firing with None once a connection succeeded, or
        failing with L{StartTimeout} after C{timeout} seconds (reactor clock).
    """
    pending = {}  # what is under way: "attempt" (a Deferred), "retry", "deadline" (calls)
    began = reactor.seconds()

    def stop(_=None):
        calls = list(pending.values())
        pending["stopped"] = True
        for call in calls:
            if isinstance(call, defer.Deferred) or call.active():
                call.cancel()

    result = defer.Deferred(stop)

    def attempt():
        endpoint = _pipes.backend_endpoint(reactor, host, port, timeout,
                                           attempt_delay=min(max(interval, 0.01), 0.3))
        pending["attempt"] = endpoint.connect(_PROBES)
        pending["attempt"].addCallbacks(connected, failed)

    def connected(protocol):
        protocol.transport.loseConnection()
        stop()
        result.callback(None)

    def failed(failure):
        if "stopped" not in pending:
            _log.debug("{host}:{port} not open yet: {e}", host=host, port=port, e=failure.value)
            # Every 3 ms for the first second (a session's port usually opens within
            # milliseconds, and a refused loopback connect costs microseconds), then every interval.
            quick = reactor.seconds() - began < QUICK_PERIOD
            pending["retry"] = reactor.callLater(min(interval, QUICK_INTERVAL) if quick else interval, attempt)

    def expired():
        stop()
        message = f"port {host}:{port} did not accept connections within {timeout:g}s"
        result.errback(StartTimeout(message))

    pending["deadline"] = reactor.callLater(timeout, expired)
    attempt()
    return result
