"""Sessions that outlive a gateway restart: kept at stop, adopted at start (issue 15, item 6).

L{Keeping} is the part of L{nexusws.sessions.registry.Registry} that, with
C{keep_sessions} (C{--keep_sessions}), leaves running instances alive when the
gateway stops and takes them back when it starts again.

At shutdown every active or detached instance is I{kept}: its timers are
cancelled, its processes looked up once more, and it is recorded in the state
file as it is, with what its next run needs (L{kept_fields}): its address, its
process ids and start times, when it became active, the seconds its time limit
was extended, its last input (wall clock) and its bytes. Its WebSocket is
closed (1001, the server going away) but that ends nothing. Starting instances
are still stopped (a start cannot be handed over), and stopping ones finish.

At start (L{Keeping._adopt}) a kept instance whose recorded processes are
still alive (the same pid I{and} start time) comes back I{detached}, with the
same token and index and a fresh grace for its page to re-attach; its idle and
time limits go on from where they were. Its processes are no child of this run:
they are found from the recorded ones (the same process, and what descends
from it or shares its session), and stopping it ends them
(L{nexusws.sessions.stopping.kill_processes}: SIGTERM, grace, SIGKILL); the
service's own C{stop} is not called, as it never started that instance. One
whose processes are gone is ended (logged). Without C{keep_sessions} nothing
here happens: every instance is stopped at shutdown, as before.
"""

from twisted.internet import defer

from nexusws.logs import logger
from nexusws.sessions.reservation import ACTIVE, DETACHED, Reservation

_log = logger("nexusws.reservations")


def kept_fields(r, wallclock_now, reactor_now, last_event_id=0):
    """What the state file keeps of a kept instance C{r} besides its usual record
    (a batch job's: its C{job}, what its backend needs to take it back)."""
    fields = {"kept": True, "address": list(r.address), "extended": r.extended,
              "bytes": [r.bytes_up, r.bytes_down], "events": last_event_id}
    kept = getattr(r.service, "kept", None)
    job = kept(r.index, wallclock_now - reactor_now) if kept is not None else None
    if job is not None:
        fields["job"] = job
    if r.active_since is not None:
        fields["started"] = wallclock_now - (reactor_now - r.active_since)
    if r.last_input is not None:
        fields["last_input"] = wallclock_now - (reactor_now - r.last_input)
    return fields


class Keeping:
    """Keeping instances at shutdown and adopting them at start (see the module docstring).

    Expects of the class it is mixed into: C{_live}, C{_reactor}, C{_wallclock},
    C{keep_sessions}, C{_family}, C{kill_grace}, C{_kill_processes}, C{grace_of},
    C{limit}, C{_ungrace}, C{_limits_stop}, C{_refresh_pids}, C{_logged},
    C{_schedule}, C{_time_check}, C{_idle_check} and C{_grace_expired}."""

    def _keep_running(self):
        """At shutdown: mark every active or detached instance kept; return how many."""
        kept = 0
        for r in list(self._live.values()):
            if r.state not in (ACTIVE, DETACHED) or r.address is None:
                continue
            if not getattr(r.service, "keepable", True):  # its backend cannot be adopted: it stops
                continue
            self._fold(r, r.attached)
            r.attached = None
            self._ungrace(r)
            self._limits_stop(r)
            try:
                self._refresh_pids(r)
            except Exception:  # logged; it is kept with the processes known before
                _log.failure("{label}: listing its processes failed", label=r.label)
            r.kept = True
            log = self.events_of(r.token)
            r.kept_record = kept_fields(r, self._wallclock(), self._reactor.seconds(),
                                        0 if log is None else log.last_id)
            kept += 1
            _log.info("reservation {label}: kept running for the next run ({count} process(es))",
                      label=r.label, count=len(r.pids))
        return kept

    def kept_processes(self):
        """The processes of the kept instances and what belongs to them: the sweep at
        shutdown must leave them alone. A dict pid -> start time."""
        found = {}
        for r in self._live.values():
            if r.kept:
                found.update(self._family(dict(r.pids)))
        return found

    def _adopt(self, saved, service, age, wall):
        """Take back a kept instance of the previous run (L{nexusws.sessions.records.Saved},
        checked alive by L{nexusws.sessions.records.recover}) at wall-clock time C{wall}:
        detached, with a fresh grace."""
        now = self._reactor.seconds()
        r = Reservation(saved.token, service, saved.index, saved.options, saved.user, now - age, saved.created)
        r.state, r.address, r.pids, r.adopted = DETACHED, tuple(saved.address), list(saved.pids), True
        if saved.job is not None:  # a batch job: its backend watches it again, and stops it
            service.adopt(saved.index, r.address, saved.job, now - wall)
            r.job_end = service.ends_at(saved.index)
        r.extended, r.first_event_id = saved.extended, saved.events
        r.bytes_up, r.bytes_down = saved.bytes
        if saved.started is not None:
            r.active_since = now - max(0.0, wall - saved.started)
        r.last_input = now - max(0.0, wall - saved.last_input) if saved.last_input is not None else now
        self._live[r.token] = r
        grace = self.grace_of(service)
        self._logged(r, "kept", DETACHED, f"adopted from the previous run; grace {grace:g} s")
        r.grace_ends = now + grace
        r.grace_call = self._reactor.callLater(grace, self._grace_expired, r)
        duration = self.limit(service, "max_duration")
        if duration > 0 and r.active_since is not None:
            r.deadline = r.active_since + duration + r.extended
        if r.job_end is not None and (r.deadline is None or r.job_end < r.deadline):
            r.deadline = r.job_end
        if r.deadline is not None and r.active_since is not None:
            self._schedule(r, "time_call", self._time_check, 0.0)
        if self.limit(service, "idle_timeout") > 0:
            self._schedule(r, "idle_call", self._idle_check, 0.0)
        return r

    def _adopted_pids(self, r):
        """The live processes of adopted C{r}: the recorded ones still alive, and their family."""
        return sorted(self._family(dict(r.pids)).items())

    def _stop_adopted(self, r):
        """Stop adopted C{r}: end its processes (it was never the service's to stop),
        or have its backend cancel the batch job it took back."""
        if hasattr(r.service, "adopt"):
            return defer.maybeDeferred(r.service.stop, r.index)
        procs = self._adopted_pids(r) or r.pids
        return defer.maybeDeferred(self._kill_processes, self._reactor, procs, self.kill_grace)
