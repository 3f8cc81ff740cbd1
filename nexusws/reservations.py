"""Reservations: tokens, instance indices, each session's state machine, the reaper.

A reservation holds the lowest free index of a service until it ends. Its states::

    reserved --activate--> starting --address accepts--> active
    reserved --release--> released;  reserved --unused for `timeout` s--> expired
    (shutdown leaves reserved ones: the state file keeps them for the next run)
    starting --start failed or timed out, release, WebSocket gone, shutdown--> stopping
    active --WebSocket closed, release, shutdown--> stopping
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

from twisted.internet import defer, task
from twisted.python.failure import Failure

from nexusws.errors import StartupError
from nexusws.launcher import kill_processes, wait_for_port
from nexusws.logs import iso_utc, logger, printable, tag
from nexusws.statefile import NotRecorded, recover

_log = logger("nexusws.reservations")

RESERVED, STARTING, ACTIVE, STOPPING = "reserved", "starting", "active", "stopping"
RELEASED, EXPIRED = "released", "expired"
_NEXT = {RESERVED: (STARTING, RELEASED, EXPIRED), STARTING: (ACTIVE, STOPPING),
         ACTIVE: (STOPPING,), STOPPING: (RELEASED,)}


class NoFreeInstance(Exception):
    """Every instance of the service is taken (or the server is stopping)."""


class UnknownService(Exception):
    """No service has that name or alias."""


class UnknownToken(Exception):
    """The token was never issued, or its reservation has ended or is ending."""


class TokenInUse(Exception):
    """The token has already been presented by a WebSocket."""


class StartFailed(Exception):
    """An instance did not start; the message is one line, fit for a close reason."""


def _describe(failure):
    value = failure.value
    if isinstance(value, defer.CancelledError):
        return "start cancelled"
    text = (str(value).strip().splitlines() or [""])[0]
    if type(value).__module__ == "builtins":  # nexusws's own errors are sentences already
        text = f"{type(value).__name__}: {text}" if text else type(value).__name__
    return printable(text, limit=1000)  # cut where shown (a close frame keeps the end)


class Reservation:
    """One reserved (and maybe running) instance of a service.

    @ivar created: when it was made, on the reactor's clock (for the timeout);
        C{created_wall}: the same moment in wall-clock epoch seconds.
    @ivar pids: C{(pid, start_time)} of the processes it runs, as last seen.
    @ivar client: the address that reserved it, for L{nexusws.limits}' quota (not saved)."""

    client = None
    activated = None  # when its token's WebSocket came (reactor clock)

    def __init__(self, token, service, index, options, user, created, created_wall):
        self.token, self.service, self.index, self.options, self.user = (
            token, service, index, options, user)
        self.created, self.created_wall = created, created_wall
        self.state, self.pids, self.address = RESERVED, [], None
        # The start in flight, why it was cut short, Deferreds to fire when it ends:
        self._pending, self._why, self._waiters = None, None, []
        self._record = None
        self._cancelled = False  # its start was cut short by a release, a close or a shutdown

    @property
    def timestamp(self):
        return iso_utc(self.created_wall)

    @property
    def label(self):
        return f"{tag(self.token)} {printable(self.service.name)}#{self.index}"

    def as_status(self):
        """Its entry in /v1/status (JSON-safe)."""
        return {"index": self.index, "token": self.token, "timestamp": self.timestamp,
                "state": self.state, "options": dict(self.options), "user": self.user}

    def record(self):
        """Its entry in the state file (read back by L{nexusws.statefile.saved_records}).

        The same object until its state or processes change: the state file
        tells what changed by identity, at no cost per unchanged reservation."""
        key = (self.state, tuple(self.pids))
        if self._record is None or self._record[0] != key:
            self._record = key, dict(
                self.as_status(), service=self.service.name, created=self.created_wall,
                pids=[list(p) for p in self.pids])
        return self._record[1]


class Registry:
    """All reservations of all services.

    @param services: L{nexusws.services.Service}s (C{name}, C{count}, C{common_options},
        C{aliases}, C{start(index, options)}, C{stop(index)}, C{pids(index)}).
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
    @raise StartupError: two services share a name or alias."""

    def __init__(self, services, reactor, timeout=300.0, start_timeout=30.0, on_change=None,
                 wallclock=time.time, wait_for_port=wait_for_port, kill_processes=kill_processes,
                 stop_timeout=60.0, kill_grace=5.0, metrics=None):
        self.services, self._by_name = list(services), {}
        for service in self.services:
            for name in (service.name, *getattr(service, "aliases", ())):
                if self._by_name.setdefault(name, service) is not service:
                    raise StartupError(f"service name {name!r} is used by two services")
        self._reactor, self._wallclock, self.on_change = reactor, wallclock, on_change
        self.timeout, self.start_timeout, self.stop_timeout = timeout, start_timeout, stop_timeout
        self.kill_grace, self._kill_processes = kill_grace, kill_processes
        self.metrics = metrics
        self._wait_for_port = wait_for_port
        self._live = {}  # token -> Reservation, in every state but the final ones
        self._orphans = []  # (pid, start_time) left by a previous run, until they are gone
        self._killing, self._reaper, self._closing = None, None, False
        self.unrecorded = None  # why the last change could not be recorded (NotRecorded)

    def get(self, token):
        """The live L{Reservation} of C{token}, or None."""
        return self._live.get(token)

    def status(self):
        """/v1/status: every service, with its live instances sorted by index."""
        return [{"name": s.name, "count": s.count, "common_options": dict(s.common_options),
                 "instances": [r.as_status() for r in self._instances(s)]} for s in self.services]

    def _instances(self, service):
        return sorted((r for r in self._live.values() if r.service is service), key=lambda r: r.index)

    def reserve(self, service_name, options=None, user=None, client=None):
        """Reserve the lowest free index of a service (by name or alias).

        @raise UnknownService: no such service.
        @raise NoFreeInstance: all its indices are taken, or the server is stopping.
        @raise NotRecorded: the state file could not record it; it is not kept."""
        service = self._by_name.get(service_name)
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

    def activate(self, token):
        """A WebSocket presented C{token}: start its instance (the token is checked first).

        @raise UnknownToken: never issued, released, expired or being stopped.
        @raise TokenInUse: already presented (starting or active).
        @return: a Deferred firing with C{(host, port)} once that address accepts
            connections, or failing with L{StartFailed} once whatever was started
            has been stopped and the index freed (or at once, the reservation
            kept, when the start cannot be recorded). Cancelling it stops the instance."""
        r = self._live.get(token)
        if r is None or r.state == STOPPING:
            raise UnknownToken(f"unknown, ended or ending token {tag(token)}")
        if r.state != RESERVED:
            raise TokenInUse(f"token {tag(token)} is already in use ({r.state})")
        try:
            self._set_state(r, STARTING, required=True)
        except NotRecorded as e:  # nothing started; the token stays reserved
            return defer.fail(StartFailed(f"{r.service.name} instance {r.index} not started: {e}"))
        r.activated = self._reactor.seconds()
        options = dict(r.options, token=token)
        if r.user is not None:
            options["user"] = r.user
        deadline = self._reactor.seconds() + self.start_timeout
        timer = self._reactor.callLater(self.start_timeout, self._start_timed_out, r)
        r._pending = d = defer.ensureDeferred(self._start(r, options, deadline))
        return d.addBoth(self._start_settled, r, timer)

    async def _start(self, r, options, deadline):
        address = await defer.maybeDeferred(r.service.start, r.index, options)
        try:
            host, port = address
            r.address = (str(host), int(port))
        except (TypeError, ValueError):
            raise StartFailed(f"start() returned {printable(repr(address))}, not (host, port)") from None
        left = max(0.0, deadline - self._reactor.seconds())
        await defer.maybeDeferred(self._wait_for_port, self._reactor, *r.address, left)
        return r.address

    def _start_timed_out(self, r):
        where = "start() gave no address" if r.address is None else (
            f"{printable(r.address[0])}:{r.address[1]} did not accept connections")
        r._why = f"{where} within {self.start_timeout:g} s"
        if r._pending is not None:
            r._pending.cancel()

    def _start_settled(self, result, r, timer):
        if timer.active():
            timer.cancel()
        r._pending = None
        if r.state == STARTING and not isinstance(result, Failure):
            self._set_state(r, ACTIVE, f"at {printable(r.address[0])}:{r.address[1]}")
            return result
        what = f"service {printable(r.service.name)!r} instance {r.index}"
        if r.state == STARTING:
            r._why = r._why or _describe(result)
            self._set_state(r, STOPPING, f"start failed: {r._why}")
            # A service's own errors already name the instance.
            message = r._why if r._why.startswith(what) else f"{what} failed to start: {r._why}"
        else:  # ended by release, deactivate or shutdown while starting
            message = f"{what} was stopped before it started ({r._why})"
        failed = defer.Deferred()  # not chained: cancelling it must not cut the stop short
        self._stop_instance(r).addBoth(lambda _: failed.errback(StartFailed(message)))
        return failed

    def deactivate(self, token):
        """The WebSocket that activated C{token} closed: stop the instance, free the index.

        Harmless for a token that is unknown, ended, or not activated.
        @return: a Deferred firing (None) once the index is free."""
        r = self._live.get(token)
        if r is None or r.state == RESERVED:
            _log.debug("deactivate {token}: nothing to stop", token=tag(token))
            return defer.succeed(None)
        return self._end(r, "WebSocket closed")

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
        in pages work again after a restart (within their timeout)."""
        self._closing = True
        self.stop_reaper()
        ends = [self._end(r, "server shutting down") for r in list(self._live.values())
                if r.state != RESERVED]
        ends += [self._killing] if self._killing is not None else []
        return defer.DeferredList(ends, consumeErrors=True).addCallback(lambda _: None)

    def _end(self, r, why, required=False):
        if r.state == RESERVED:
            self._set_state(r, RELEASED, why, required=required)
            return defer.succeed(None)
        done = defer.Deferred()
        r._waiters.append(done)
        if r.state == STARTING:
            r._why, r._cancelled = why, True
            self._set_state(r, STOPPING, f"{why} while starting")
            if r._pending is not None:
                r._pending.cancel()  # _start_settled then stops it
        elif r.state == ACTIVE:
            self._set_state(r, STOPPING, why)
            self._stop_instance(r)
        return done

    def _stop_instance(self, r):
        def stopped(result):
            if isinstance(result, Failure):
                why = (f"stop() did not finish within {self.stop_timeout:g} s"
                       if result.check(defer.TimeoutError) else _describe(result))
                _log.warn("{label}: stop failed: {why}; freeing the index anyway", label=r.label, why=why)
            self._set_state(r, RELEASED)
        d = defer.maybeDeferred(r.service.stop, r.index)
        return d.addTimeout(self.stop_timeout, self._reactor).addBoth(stopped)

    def _set_state(self, r, new, why=None, required=False):
        """Move C{r} to state C{new}, record it, log it.

        @param required: the change must be recorded first: if it cannot be,
            C{r} is left as it was and L{NotRecorded} raised."""
        old = r.state
        if new not in _NEXT.get(old, ()):
            raise RuntimeError(f"reservation {r.label}: no transition {old} -> {new}")
        r.state = new
        if new in (ACTIVE, STOPPING):
            try:
                self._refresh_pids(r)
            except Exception:  # noqa: BLE001 - logged; the transition must go on
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
            outcome = "started" if new == ACTIVE else "cancelled" if r._cancelled else "failed"
            self.metrics.launches.labels(r.service.name, outcome).inc()
            if new == ACTIVE:
                self.metrics.launch_seconds.labels(r.service.name).observe(
                    self._reactor.seconds() - r.activated)
        self._logged(r, old, new, why)
        while ended and r._waiters:
            r._waiters.pop(0).callback(None)
        if not required:
            self._changed()

    def _count(self, service, outcome):
        if self.metrics is not None:
            self.metrics.reservations.labels(service.name, outcome).inc()

    def _logged(self, r, old, new, why):
        _log.info("reservation {label}: {old} -> {new}{why}", label=r.label, old=old, new=new,
                  why=f" ({why})" if why else "")

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
            except Exception:  # noqa: BLE001 - logged; the state machine must go on
                _log.failure("the on_change callback failed")
        return True

    def _refresh_pids(self, r):
        """Update C{r.pids}; True if they changed. While stopping, the processes
        seen before are kept: the service may forget them before they are gone."""
        current = [(int(pid), start) for pid, start in r.service.pids(r.index)]
        if r.state == STOPPING:
            current = r.pids + [p for p in current if p not in r.pids]
        changed, r.pids = current != r.pids, current
        return changed

    def start_reaper(self, interval=None):
        """Run L{reap} every C{interval} seconds (default: a tenth of the timeout, 0.5 to 5 s)."""
        if interval is None:
            interval = max(0.5, min(self.timeout / 10.0, 5.0))
        self.stop_reaper()
        self._reaper = task.LoopingCall(self.reap)
        self._reaper.clock = self._reactor
        self._reaper.start(interval, now=False).addErrback(
            lambda f: _log.failure("the reaper stopped", f))

    def stop_reaper(self):
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        self._reaper = None

    def reap(self):
        """Expire reservations unused for the timeout; note processes started since.

        One step per reservation: one failing does not stop the others or the loop."""
        now, changed = self._reactor.seconds(), False
        for r in list(self._live.values()):
            try:
                if r.state == RESERVED and now - r.created >= self.timeout:
                    self._set_state(r, EXPIRED, f"unused for {self.timeout:g} s")
                elif r.state != RESERVED:
                    changed = self._refresh_pids(r) or changed
            except Exception:  # noqa: BLE001 - logged; the next step and the loop go on
                _log.failure("reaper: {label} failed", label=r.label)
        if changed:
            self._changed()

    def running(self):
        """Whether any instance is starting, active or stopping (may have processes)."""
        return any(r.state != RESERVED for r in self._live.values())

    def snapshot(self):
        """What the state file records: live reservations and a previous run's leftovers."""
        live = sorted(self._live.values(), key=lambda r: (r.service.name, r.index))
        return {"reservations": [r.record() for r in live], "orphans": [list(p) for p in self._orphans]}

    def restore(self, data, now=None):
        """Take over what a previous run recorded (see L{nexusws.statefile.recover}).

        Surviving reservations come back with the same token and index and the
        time they had left; the previous run's processes are terminated.

        @param now: wall-clock epoch seconds (default: the injected wall clock).
        @return: a Deferred firing with the pids that had to be killed."""
        keep, doomed = recover(data, self._wallclock() if now is None else now,
                               self.timeout, self._by_name)
        for s, service, age in keep:
            if s.token not in self._live and s.index not in {r.index for r in self._instances(service)}:
                r = Reservation(s.token, service, s.index, s.options, s.user,
                                self._reactor.seconds() - age, s.created)
                self._live[s.token] = r
                self._logged(r, "saved", RESERVED, f"restored, {self.timeout - age:.0f} s left")
        self._orphans = doomed
        self._changed()
        if not doomed:
            return defer.succeed([])
        _log.info("previous run: terminating its leftover processes {pids}",
                  pids=" ".join(str(pid) for pid, _ in doomed))
        self._killing = defer.maybeDeferred(self._kill_processes, self._reactor, doomed, self.kill_grace)
        return self._killing.addBoth(self._killed)

    def _killed(self, killed):
        self._killing = None
        if isinstance(killed, Failure):
            _log.failure("previous run: terminating its processes failed", killed)
            return []
        _log.info("previous run: leftover processes ended (killed: {killed})",
                  killed=" ".join(str(pid) for pid in killed or ()) or "none still running")
        self._orphans = []
        self._changed()
        return killed
