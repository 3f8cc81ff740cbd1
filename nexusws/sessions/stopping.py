"""Ending process trees: SIGTERM, a grace period on the reactor's clock, SIGKILL.

L{stop_tree} is the one TERM, poll, KILL loop of the sessions. Two callers give
it their targets:
  - L{nexusws.sessions.launcher.Child.terminate}: a child's process group
    (the group is signalled, and polled with C{/proc});
  - L{kill_processes}: processes that are not our Twisted children (those of
    a previous gateway run, recorded in the state file; daemons a program left
    behind, found by L{nexusws.sessions.instances}), identified by pid and start
    time so that a reused pid is never hit.

The grace period and the poll interval are in L{nexusws.sessions.timeouts}.
"""

import os
import signal

from twisted.internet import defer

from nexusws.logs import logger
from nexusws.sessions import procs as _procs
from nexusws.sessions.timeouts import GRACE, POLL_INTERVAL

_log = logger("nexusws.launcher")


def stop_tree(reactor, grace, *, send, alive, kill, look_now=False, interval=POLL_INTERVAL):
    """End something: C{send(SIGTERM)}; then, while C{alive()} is true, look again
    every C{interval} seconds; once C{grace} seconds have passed, C{kill(alive())}.

    @param send: C{send(sig)} signals every target (called here with SIGTERM only).
    @param alive: C{alive()}: what of the targets is still alive; false if none is.
    @param kill: C{kill(left)}: the grace period is over and C{left} (what C{alive}
        said last) is still alive: send it SIGKILL, log why; returns what got it.
    @param look_now: look right after the SIGTERM (synchronously: a tree already
        gone ends at once); otherwise the first look is after one C{interval}
        (or C{grace}, if shorter).
    @return: a Deferred firing with what C{kill} returned, or None if nothing was
        left to kill.
    """
    send(signal.SIGTERM)
    deadline = reactor.seconds() + grace
    result = defer.Deferred()

    def look():
        left = alive()
        now = reactor.seconds()
        if left and now < deadline:
            reactor.callLater(min(interval, deadline - now), look)
        else:
            result.callback(kill(left) if left else None)

    if look_now:
        look()
    else:
        reactor.callLater(min(interval, grace), look)
    return result


def kill_processes(reactor, procs, grace=GRACE, kill=os.kill):
    """End processes that are not our Twisted children, and what belongs to them.

    Each (pid, start_time) that is still the same process (see
    L{nexusws.sessions.procs.same_process}) gets SIGTERM, and so do its descendants and, if it
    leads a session, the other members of its session. Whatever of those is
    still alive after C{grace} seconds (on the reactor's clock), or was started
    by them meanwhile, gets SIGKILL. A pid whose start time differs is never
    signalled.

    @param procs: an iterable of (pid, start_time).
    @param kill: how to signal a process (C{os.kill}; tests inject another).
    @return: a Deferred firing with the sorted list of pids that got SIGKILL.
    """
    roots = dict(procs)
    targets = _procs.family(roots, _procs.all_processes())
    if not targets:
        return defer.succeed([])
    _log.info("ending leftover processes {pids}", pids=sorted(targets))

    def alive():
        return {pid: st for pid, st in targets.items() if _procs.same_process(pid, st)}

    def overdue(left):
        # Those started meanwhile too: the family as it is now.
        left.update(_procs.family({**roots, **left}, _procs.all_processes()))
        left = {pid: st for pid, st in left.items() if _procs.same_process(pid, st)}
        _log.warn("still running {grace}s after SIGTERM, sending SIGKILL: {pids}",
                  grace=grace, pids=sorted(left))
        _send(kill, left, signal.SIGKILL)
        return sorted(left)

    done = stop_tree(reactor, grace, send=lambda sig: _send(kill, targets, sig),
                     alive=alive, kill=overdue)
    return done.addCallback(lambda killed: killed or [])


def _send(kill, targets, sig):
    # Callers pass what they have just checked with same_process.
    for pid in targets:
        try:
            kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            _log.warn("not allowed to signal pid {pid}", pid=pid)
