"""The registry's upkeep: the reaper, and what a previous run left (issue 14's registry, split).

L{Upkeep} is the part of L{nexusws.sessions.registry.Registry} that runs on a
timer or once at start-up rather than on a request: the reaper expires
reservations unused for the timeout and notes processes started since the
last look; L{Upkeep.restore} takes over what a previous run recorded in the
state file and terminates that run's leftover processes.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from nexusws.clock import LoopingCall
from nexusws.logs import logger
from nexusws.sessions.records import recover
from nexusws.sessions.reservation import EXPIRED, RESERVED, Reservation
from nexusws.sessions.timeouts import REAP_INTERVAL_MAX, REAP_INTERVAL_MIN

_log = logger("nexusws.reservations")


class Upkeep:
    """The reaper and the previous run's leftovers. Expects of the class it is mixed
    into: C{_live}, C{_reactor}, C{_wallclock}, C{timeout}, C{_by_name}, C{_orphans},
    C{_killing}, C{_reaper}, C{kill_grace}, C{_kill_processes}, C{_instances},
    C{_set_state}, C{_refresh_pids}, C{_changed}, C{_logged}, C{_family} and C{_adopt}."""

    def start_reaper(self, interval=None):
        """Run L{reap} every C{interval} seconds (default: a tenth of the timeout, 0.5 to 5 s)."""
        if interval is None:
            interval = max(REAP_INTERVAL_MIN, min(self.timeout / 10.0, REAP_INTERVAL_MAX))
        self.stop_reaper()
        self._reaper = LoopingCall(self._reactor, self.reap)
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
            except Exception:  # logged; the next step and the loop go on
                _log.failure("reaper: {label} failed", label=r.label)
        if changed:
            self._changed()

    def restore(self, data, now=None):
        """Take over what a previous run recorded (see L{nexusws.sessions.records.recover}).

        Surviving reservations come back with the same token and index and the
        time they had left; instances the previous run kept running come back
        detached (L{nexusws.sessions.adoption}); the previous run's other
        processes are terminated.

        @param now: wall-clock epoch seconds (default: the injected wall clock).
        @return: a Deferred firing with the pids that had to be killed."""
        wall = self._wallclock() if now is None else now
        keep, adopt, doomed = recover(data, wall, self.timeout, self._by_name,
                                      alive=lambda pids: bool(self._family(dict(pids))))
        recorded_boot = data.get("boot") if isinstance(data, dict) else None
        if recorded_boot is not None and recorded_boot != self._boot_id:
            # A pid and start time of another boot may be anyone's now: nothing is signalled.
            _log.info("previous run: recorded before a reboot; its processes are gone ({count} "
                      "kept instance(s) ended, {pids} process(es) left alone)", count=len(adopt),
                      pids=len(doomed) + sum(len(s.pids) for s, _, _ in adopt))
            adopt, doomed = [], []
        for s, service, age in adopt:
            self._adopt(s, service, age, wall)
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
