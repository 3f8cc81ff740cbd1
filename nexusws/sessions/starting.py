"""One instance's start as the registry runs it: L{start}.

The backend's C{start} (L{nexusws.sessions.backend.ISessionBackend}) gives an
address; the start is done once that address accepts connections, all within
the start timeout (on the reactor's clock). Every way it can fail ends as a
L{StartFailure}: the backend's own pass through unchanged (they name the
instance); the start timeout, an address that is none
(L{nexusws.sessions.backend.as_address}, lenient), or any other error the backend
raised (its bug, described by L{describe_failure}) become L{NOT_READY}.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from nexusws.logs import printable
from nexusws.sessions.backend import LIMIT, NOT_READY, StartFailure, as_address
from nexusws.sessions.timeouts import START_TIMEOUT


def start(reactor, r, options, timeout, wait_for_port):
    """Start the instance of reservation C{r}: C{r.service.start(r.index, options)},
    then C{wait_for_port} on the address it gives (kept in C{r.address}).

    @param timeout: seconds for all of it; then the start is cancelled and
        fails with "<what> within <timeout> s". None: no bound here (a backend whose
        start may wait in a batch queue bounds it itself).
    @return: a Deferred firing with C{r.address}, or failing with a
        L{StartFailure}. Cancelling it cancels the start (which then fails with
        L{NOT_READY} "start cancelled").
    """
    deadline = None if timeout is None else reactor.seconds() + timeout
    expired = []  # why the start timeout ended it, once it did

    def timed_out():
        where = "start() gave no address" if r.address is None else (
            f"{printable(r.address[0])}:{r.address[1]} did not accept connections")
        expired.append(f"{where} within {timeout:g} s")
        started.cancel()

    def settled(result):
        if timer is not None and timer.active():
            timer.cancel()
        if not isinstance(result, Failure) or (not expired and result.check(StartFailure)):
            return result
        why = expired[0] if expired else describe_failure(result)
        return Failure(StartFailure(r.service.name, r.index, NOT_READY, why))

    timer = None if timeout is None else reactor.callLater(timeout, timed_out)
    started = defer.ensureDeferred(_start(reactor, r, options, deadline, wait_for_port))
    return started.addBoth(settled)


async def _start(reactor, r, options, deadline, wait_for_port):
    address = await defer.maybeDeferred(r.service.start, r.index, options)
    r.address = as_address(address, lenient=True)
    if r.address is None:
        raise StartFailure(r.service.name, r.index, NOT_READY,
                           f"start() returned {printable(repr(address))}, not (host, port)")
    left = START_TIMEOUT if deadline is None else max(0.0, deadline - reactor.seconds())
    await defer.maybeDeferred(wait_for_port, reactor, *r.address, left)
    return r.address


def describe_failure(failure):
    """One line for an error that is not a L{StartFailure} (a backend's bug, a failed stop)."""
    value = failure.value
    if isinstance(value, defer.CancelledError):
        return "start cancelled"
    text = (str(value).strip().splitlines() or [""])[0]
    if type(value).__module__ == "builtins":  # nexusws's own errors are sentences already
        text = f"{type(value).__name__}: {text}" if text else type(value).__name__
    return printable(text, limit=LIMIT)  # cut where shown (a close frame keeps the end)
