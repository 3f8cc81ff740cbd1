"""Reservations: tokens, instance indices, each session's state machine, the reaper.

A reservation (L{nexusws.sessions.reservation}) holds the lowest free index of
a service until it ends. Services are reached only through
L{nexusws.sessions.backend.ISessionBackend}; an instance's start is run by
L{nexusws.sessions.starting} and fails with a L{StartFailure}. Its states::

    reserved --activate--> starting --address accepts--> active
    reserved --release--> released;  reserved --unused for `timeout` s--> expired
    (shutdown leaves reserved ones: the state file keeps them for the next run)
    starting --start failed or timed out, release, WebSocket gone, shutdown--> stopping
    active --WebSocket lost (client side), grace > 0--> detached --same token--> active
    active --WebSocket closed (grace 0, backend end), release, shutdown--> stopping
    detached --grace expired, release, shutdown--> stopping  (L{nexusws.sessions.attach})
    stopping --service.stop done (or failed, or timed out)--> released

Every transition is logged once, the token named by its tag (L{nexusws.logs.tag},
no token material). A reservation, its release while unused, and the start of
its instance are recorded (C{on_change}) before they take effect: one that cannot be recorded
is refused (L{NotRecorded}) and nothing changes. Timeouts
run on the injected reactor's clock; the injected wall clock only stamps
reservations (/v1/status, the state file): another process must understand those.
"""

import time
import uuid

from twisted.internet import defer
from twisted.python.failure import Failure

from nexusws.errors import StartupError
from nexusws.logs import logger, printable, tag
from nexusws.sessions import procs, starting
from nexusws.sessions.adoption import Keeping
from nexusws.sessions.attach import Attaching, TokenInUse  # noqa: F401 (TokenInUse: raised by activate)
from nexusws.sessions.backend import CUT_SHORT, NOT_READY, NOT_RECORDED, StartFailure
from nexusws.sessions.deadlines import Deadlines
from nexusws.sessions.events import SHUTDOWN, Reporting
from nexusws.sessions.ports import wait_for_port
from nexusws.sessions.reservation import ACTIVE, EXPIRED, NEXT, RELEASED, RESERVED, STARTING, STOPPING, Reservation
from nexusws.sessions.statefile import NotRecorded
from nexusws.sessions.stopping import kill_processes
from nexusws.sessions.timeouts import (
    GRACE,
    RECONNECT_GRACE,
    RESERVATION_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
)
from nexusws.sessions.upkeep import Upkeep

_log = logger("nexusws.reservations")


class NoFreeInstance(Exception):
    """Every instance of the service is taken (or the server is stopping)."""


class UnknownService(Exception):
    """No service has that name or alias."""


class UnknownToken(Exception):
    """The token was never issued, or its reservation has ended or is ending."""


class Registry(Attaching, Deadlines, Keeping, Reporting, Upkeep):
    """All reservations of all services.

    @param services: the L{nexusws.sessions.backend.ISessionBackend}s (the local one:
        L{nexusws.sessions.instances.Service}); only that interface is used.
    @param reactor: gives C{seconds()} and C{callLater} for every timeout.
    @param timeout: seconds a reservation may stay unused before the reaper reclaims it.
    @param start_timeout: seconds from activation until the address accepts (start included).
    @param on_change: called with no argument after every change of state; it may
        raise L{NotRecorded}, which refuses a reservation, a release of an unused
        one and an instance's start.
    @param wallclock: wall-clock epoch seconds, for timestamps and the state file only.
    @param wait_for_port: C{(reactor, host, port, timeout)} -> Deferred firing once it accepts.
    @param kill_processes: C{(reactor, [(pid, start_time)], grace)} -> Deferred firing
        with the pids it killed; terminates a previous run's processes.
    @param stop_timeout: seconds a service's stop may take before its index is freed anyway.
    @param kill_grace: seconds from SIGTERM to SIGKILL for a previous run's processes.
    @param metrics: a L{nexusws.metrics.Metrics} that counts reservations and launches, or None.
    @param reconnect_grace: seconds an instance is kept after its WebSocket is lost, unless
        its service's options say otherwise (L{nexusws.sessions.attach}).
    @param limits: the defaults of the idle and time limits (L{nexusws.sessions.deadlines.LIMITS}'
        names; those not given: its defaults), unless a service's options say otherwise.
    @param keep_sessions: leave running instances alive at shutdown, for the next run to
        adopt (L{nexusws.sessions.adoption}); C{family}: C{{pid: start}} -> the live processes
        that belong to those (L{nexusws.sessions.procs.family}), for adopted instances;
        C{boot_id}: this boot's (default: L{nexusws.sessions.procs.boot_id}): a state file
        recorded in another boot names no live process.
    Each reservation's events (L{nexusws.sessions.events}: C{events_of}, C{session})
    are reported as its transitions are logged; a service's C{on_progress} is set to report its steps.
    @raise StartupError: two services share a name or alias."""

    def __init__(self, services, reactor, timeout=RESERVATION_TIMEOUT, start_timeout=START_TIMEOUT,
                 on_change=None, wallclock=time.time, wait_for_port=wait_for_port,
                 kill_processes=kill_processes, stop_timeout=STOP_TIMEOUT, kill_grace=GRACE, metrics=None,
                 reconnect_grace=RECONNECT_GRACE, limits=None, keep_sessions=False, family=procs.family,
                 boot_id=None):
        self.services, self._by_name = list(services), {}
        for service in self.services:
            service.on_progress = self._progress
            if hasattr(service, "on_ended"):  # a backend whose instances may end on their own
                service.on_ended = self._backend_ended
            for name in (service.name, *getattr(service, "aliases", ())):
                if self._by_name.setdefault(name, service) is not service:
                    raise StartupError(f"service name {name!r} is used by two services")
        self._reactor, self._wallclock, self.on_change = reactor, wallclock, on_change
        self.timeout, self.start_timeout, self.stop_timeout = timeout, start_timeout, stop_timeout
        self.kill_grace, self._kill_processes = kill_grace, kill_processes
        self.metrics, self.reconnect_grace, self.limit_defaults = metrics, reconnect_grace, dict(limits or {})
        self._wait_for_port = wait_for_port
        self.keep_sessions, self._family = keep_sessions, family
        self._boot_id = procs.boot_id() if boot_id is None else boot_id  # restore's reboot check
        self._live = {}  # token -> Reservation, in every state but the final ones
        self._orphans = []  # (pid, start_time) left by a previous run, until they are gone
        self._killing, self._reaper, self._closing = None, None, False
        self.unrecorded = None  # why the last change could not be recorded (NotRecorded)

    def get(self, token):
        """The live L{Reservation} of C{token}, or None."""
        return self._live.get(token)

    def service(self, name):
        """The service called C{name} (its name or an alias), or None."""
        return self._by_name.get(name)

    def outstanding(self, user, client):
        """How many reservations hold an instance for C{user} (reserved, starting, active or
        detached: a stopping one is ending); without a user, how many anonymous ones C{client} made."""
        return sum(r.user == user if user is not None else r.user is None and r.client == client
                   for r in self._live.values() if r.state != STOPPING)

    def status(self):
        """/v1/status: every service, with its live instances sorted by index."""
        now = self._reactor.seconds()
        return [{"name": s.name, "count": s.count, "common_options": dict(s.common_options),
                 "instances": [r.as_status(now) for r in self._instances(s)]} for s in self.services]

    def _instances(self, service):
        return sorted((r for r in self._live.values() if r.service is service), key=lambda r: r.index)

    def reserve(self, service_name, options=None, user=None, client=None):
        """Reserve the lowest free index of a service (by name or alias).

        @raise UnknownService: no such service.
        @raise NoFreeInstance: all its indices are taken, or the server is stopping.
        @raise NotRecorded: the state file could not record it; it is not kept."""
        service = self.service(service_name)
        if service is None:
            raise UnknownService(f"unknown service {printable(service_name)!r}")
        if self._closing:
            raise NoFreeInstance("the server is shutting down")
        taken = {r.index for r in self._instances(service)}
        index = next((i for i in range(service.count) if i not in taken), None)
        if index is None:
            self._count(service, "no_free_instance")
            raise NoFreeInstance(f"all {service.count} instance(s) of service "
                                 f"{printable(service.name)!r} are in use")
        r = Reservation(str(uuid.uuid4()), service, index, dict(options or {}), user,
                        self._reactor.seconds(), self._wallclock())
        r.client, self._live[r.token] = client, r
        if not self._changed():  # not recorded: a token that might not survive a crash
            del self._live[r.token]
            raise NotRecorded(str(self.unrecorded))
        self._logged(r, "new", RESERVED, None if user is None else f"user {printable(user)}")
        self._count(service, "reserved")
        return r

    def activate(self, token, attachment=None, takeover=False):
        """A WebSocket presented C{token}: start its instance (the token is checked first),
        or attach to it while it runs (L{nexusws.sessions.attach}: detached, or C{takeover}).

        @param attachment: the caller's object for that WebSocket, given back to
            L{deactivate} when it is gone (its C{take_over()} is called if another takes over).
        @raise UnknownToken: never issued, released, expired or being stopped.
        @raise TokenInUse: presented by another WebSocket still there (starting, or
            active without C{takeover}).
        @return: a Deferred firing with C{(host, port)} once that address accepts
            connections (at once when attaching), or failing with L{StartFailure} once whatever was started
            has been stopped and the index freed (or at once, the reservation
            kept, when the start cannot be recorded). Cancelling it stops the instance."""
        r = self._live.get(token)
        if r is None or r.state == STOPPING:
            raise UnknownToken(f"unknown, ended or ending token {tag(token)}")
        if r.state != RESERVED:
            return self._attach(r, attachment, takeover)
        r.attached = attachment
        try:
            self._set_state(r, STARTING, required=True)
        except NotRecorded as e:  # nothing started; the token stays reserved
            return defer.fail(StartFailure(r.service.name, r.index, NOT_RECORDED, str(e)))
        r.activated = self._reactor.seconds()
        options = dict(r.options, token=token)
        if r.user is not None:
            options["user"] = r.user
        bound = getattr(r.service, "start_bound", None)  # a batch backend's queue: its own bound
        timeout = self.start_timeout if bound is None else bound(self.start_timeout)
        r.pending = d = starting.start(self._reactor, r, options, timeout, self._wait_for_port)
        return d.addBoth(self._start_settled, r)

    def _start_settled(self, result, r):
        r.pending = None
        if r.state == STARTING and not isinstance(result, Failure):
            self._set_state(r, ACTIVE, f"at {printable(r.address[0])}:{r.address[1]}")
            return result
        if r.state == STARTING:
            failure = result.value  # a StartFailure (see nexusws.sessions.starting)
            # Its cause: the backend's own failure names the instance, the registry's is a reason.
            cause = failure.why if failure.what == NOT_READY else str(failure)
            r.failure = failure
            self._set_state(r, STOPPING, f"start failed: {cause}")
        else:  # ended by release, deactivate or shutdown while starting
            failure = StartFailure(r.service.name, r.index, CUT_SHORT, r.why)
        failed = defer.Deferred()  # not chained: cancelling it must not cut the stop short
        self._stop_instance(r).addBoth(lambda _: failed.errback(failure))
        return failed

    def release(self, token):
        """End a reservation: at once if unused, else once its instance has stopped.

        @raise UnknownToken: never issued, or already ended.
        @raise NotRecorded: unused, and the state file could not record its end: it stays.
        @return: a Deferred firing (None) once the index is free."""
        r = self._live.get(token)
        if r is None:
            raise UnknownToken(f"unknown or ended token {tag(token)}")
        return self._end(r, "released", required=True)

    def shutdown(self):
        """Stop every running instance, refuse anything new; fires when done.

        Unused reservations stay: the state file keeps them, so tokens already
        in pages work again after a restart (within their timeout). With
        C{keep_sessions}, active and detached instances stay too, running
        (L{nexusws.sessions.adoption})."""
        self._closing = True
        self.stop_reaper()
        if self.keep_sessions and self._keep_running():
            self._changed()
        ends = [self._end(r, SHUTDOWN) for r in list(self._live.values())
                if r.state != RESERVED and not r.kept]
        ends += [self._killing] if self._killing is not None else []
        return defer.DeferredList(ends, consumeErrors=True).addCallback(lambda _: None)

    def _end(self, r, why, required=False):
        if r.state == RESERVED:
            self._set_state(r, RELEASED, why, required=required)
            return defer.succeed(None)
        done = defer.Deferred()
        r.waiters.append(done)
        if r.state == STARTING:
            r.why, r.cancelled = why, True
            self._set_state(r, STOPPING, f"{why} while starting")
            if r.pending is not None:
                r.pending.cancel()  # _start_settled then stops it
        elif r.state != STOPPING:  # active or detached
            self._set_state(r, STOPPING, why)
            self._stop_instance(r)
        return done

    def _stop_instance(self, r):
        def stopped(result):
            if isinstance(result, Failure):
                why = (f"stop() did not finish within {self.stop_timeout:g} s"
                       if result.check(defer.TimeoutError) else starting.describe_failure(result))
                _log.warn("{label}: stop failed: {why}; freeing the index anyway", label=r.label, why=why)
            self._set_state(r, RELEASED)
        d = self._stop_adopted(r) if r.adopted else defer.maybeDeferred(r.service.stop, r.index)
        return d.addTimeout(self.stop_timeout, self._reactor).addBoth(stopped)

    def _set_state(self, r, new, why=None, required=False):
        """Move C{r} to state C{new}, record it, log it.

        @param required: the change must be recorded first: if it cannot be,
            C{r} is left as it was and L{NotRecorded} raised."""
        old = r.state
        if new not in NEXT.get(old, ()):
            raise RuntimeError(f"reservation {r.label}: no transition {old} -> {new}")
        r.state = new
        self._ungrace(r)  # leaving detached ends its grace
        if new == STOPPING:
            self._limits_stop(r)
        if new in (ACTIVE, STOPPING):
            try:
                self._refresh_pids(r)
            except Exception:  # logged; the transition must go on
                _log.failure("{label}: listing its processes failed", label=r.label)
        ended = new in (RELEASED, EXPIRED)
        if ended:
            del self._live[r.token]
        if required and not self._changed():
            r.state = old
            if ended:
                self._live[r.token] = r
            raise NotRecorded(str(self.unrecorded))
        if ended:
            self._count(r.service, new)
        if old == STARTING and self.metrics is not None:
            # A start cut short by a release, the WebSocket closing or a shutdown: cancelled.
            outcome = "started" if new == ACTIVE else "cancelled" if r.cancelled else "failed"
            self.metrics.launches.labels(r.service.name, outcome).inc()
            if new == ACTIVE:
                self.metrics.launch_seconds.labels(r.service.name).observe(
                    self._reactor.seconds() - r.activated)
        self._logged(r, old, new, why)
        if old == STARTING and new == ACTIVE:
            self._limits_start(r)  # after its ready event: a warning comes after it
        while ended and r.waiters:
            r.waiters.pop(0).callback(None)
        if not required:
            self._changed()

    def _count(self, service, outcome):
        if self.metrics is not None:
            self.metrics.reservations.labels(service.name, outcome).inc()

    def _changed(self):
        """Call C{on_change}; whether the change was recorded (else C{unrecorded} says why).

        L{NotRecorded} is the recorder's own refusal (it logs its outages);
        any other error is logged and counts as recorded: the state machine goes on."""
        self.unrecorded = None
        if self.on_change is not None:
            try:
                self.on_change()
            except NotRecorded as e:
                self.unrecorded = e
                return False
            except Exception:  # logged; the state machine must go on
                _log.failure("the on_change callback failed")
        return True

    def _refresh_pids(self, r):
        """Update C{r.pids}; True if they changed. While stopping, the processes
        seen before are kept: the service may forget them before they are gone."""
        if r.adopted:
            current = self._adopted_pids(r)
        else:
            current = [(int(pid), start) for pid, start in r.service.pids(r.index)]
        if r.state == STOPPING:
            current = r.pids + [p for p in current if p not in r.pids]
        changed, r.pids = current != r.pids, current
        return changed

    def live(self):
        """Every live reservation (reserved, starting, active, detached, stopping)."""
        return list(self._live.values())

    def in_use(self):
        """Service name -> how many of its instances are reserved or running."""
        counts = {}
        for r in self._live.values():
            counts[r.service.name] = counts.get(r.service.name, 0) + 1
        return counts

    def now(self):
        """The reactor's clock."""
        return self._reactor.seconds()

    def running(self):
        """Whether any instance is starting, active, detached or stopping (may have processes)."""
        return any(r.state != RESERVED for r in self._live.values())

    def snapshot(self):
        """What the state file records: live reservations and a previous run's leftovers."""
        live = sorted(self._live.values(), key=lambda r: (r.service.name, r.index))
        return {"reservations": [r.record() for r in live], "orphans": [list(p) for p in self._orphans]}
