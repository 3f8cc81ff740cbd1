"""The sessions of a running gateway as a Twisted service: L{SessionsService}.

It ties the registry (L{nexusws.sessions.registry}), the state file
(L{nexusws.sessions.statefile}) and the launchers to the gateway's life: the
previous run's leftovers ended at start, the reaper and the orphan watch while
it runs, every instance stopped and no process left behind at stop.
"""

import os

from twisted.application import service
from twisted.internet import defer

from nexusws.clock import LoopingCall
from nexusws.logs import logger
from nexusws.sessions import procs, slurmsite, stopping
from nexusws.sessions.statefile import NotRecorded
from nexusws.sessions.timeouts import GRACE, WATCH_INTERVAL

_log = logger("nexusws")

#: This boot's id, once (it does not change while we run).
BOOT_ID = procs.boot_id()


class SessionsService(service.Service):
    """Sessions: the state file, the previous run's leftovers, the reaper, no orphans at stop.

    At start it checks the state file can be written, becomes the child
    subreaper (so processes a session daemonizes stay our descendants),
    restores the previous run's reservations and ends its processes, then
    starts the reaper. At stop it stops every instance, then ends whatever
    descendant of the gateway is still alive, and records the final state;
    with the registry's C{keep_sessions}, the instances it keeps running and
    their processes are left alone (L{nexusws.sessions.adoption}).

    Every process a launcher starts is recorded in the state write that
    follows its start, before the script goes on (L{spawned}); others are
    found when an instance changes state and by a look every 2 s. A change
    that cannot be recorded is refused (L{save} raises L{NotRecorded}); an
    outage of the file is logged once when it begins and once when it ends.
    The registry's C{on_change} is to call L{save} (the assembly sets it).

    @param launchers: the L{nexusws.sessions.launcher.Launcher}s the registry's
        services start programs with: each one's C{on_spawn} calls L{spawned},
        and each is closed at stop. None by default (a test's registry).
    """

    def __init__(self, registry, statefile, reactor, kill_grace=GRACE, launchers=(), slurm=None):
        self.registry = registry
        self.slurm = slurm  # the Slurm services' site (nexusws.sessions.slurmsite), if any
        self.statefile = statefile
        self.reactor = reactor
        self.kill_grace = kill_grace
        self._reaping = None
        self._failing = None  # why the state file cannot be written, during an outage
        self._recorded = set()
        self.launchers = list(launchers)
        for launcher_ in self.launchers:
            launcher_.on_spawn.append(self.spawned)

    def save(self, scan=True):
        """Record the registry in the state file.

        Every live descendant of the gateway is recorded too (as processes to
        end after a crash), whichever instance owns it: so a restart after a
        SIGKILL ends even processes no instance could be sure were its own.

        @param scan: look for descendants in C{/proc} (when an instance may have some).
        @raise NotRecorded: the file could not be written (one line logged per outage).
        """
        data = self.registry.snapshot()
        # With no instance running and nothing recorded there is nothing new to
        # find (a reserve or release): skip the pass over /proc; _watch looks anyway.
        if scan and (self._recorded or self.registry.running()):
            self._recorded = self._descendants()
        data["boot"] = BOOT_ID  # its processes mean nothing after a reboot (L{procs.boot_id})
        kept = self.registry.kept_processes()  # left running for the next run: no orphans
        data["orphans"] = [list(p) for p in dict.fromkeys(
            [tuple(p) for p in data.get("orphans", [])] + sorted(self._recorded)) if p not in kept.items()]
        try:
            self.statefile.write(data)
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            if self._failing is None:
                _log.error("cannot write the session state file {path}: {error}; new "
                           "reservations and session starts are refused until it can be",
                           path=self.statefile.path, error=reason)
            self._failing = reason
            raise NotRecorded(f"the session state cannot be recorded ({reason})") from None
        if self._failing is not None:
            _log.info("the session state file {path} can be written again", path=self.statefile.path)
            self._failing = None

    def _save(self, scan=True):
        """L{save}, for changes that go on anyway (the outage is logged)."""
        try:
            self.save(scan)
        except NotRecorded:
            pass

    def spawned(self, pid, start_time):
        """A launcher started process C{pid}: record it now, before anything else happens.

        @raise NotRecorded: it could not be recorded (the launcher then ends it).
        """
        self._recorded.add((pid, start_time))
        self.save(scan=False)

    def privilegedStartService(self):
        super().privilegedStartService()
        self.statefile.check()
        if not procs.become_subreaper():
            _log.warn("cannot become the child subreaper: processes a session daemonizes "
                      "may outlive it if nexusws is killed")
        d = self.registry.restore(self.statefile.read())
        d.addCallback(lambda killed: self._save())
        d.addErrback(lambda f: _log.failure("restoring the previous sessions failed", f))
        if self.slurm is not None:  # Slurm's commands checked; the jobs a previous run left cancelled
            slurm_services = [s for s in self.registry.services if getattr(s, "kind", None) == "slurm"]
            d.addCallback(lambda _: slurmsite.startup(  # the jobs adopted (--keep_sessions) are kept
                self.slurm, slurm_services, adopted={j for s in slurm_services for j in s.job_ids()}))

    def startService(self):
        super().startService()
        self.registry.start_reaper()
        # Orphans a session daemonized are reparented to us: reap them when they
        # die, and keep the state file's list of our processes current.
        self._reaping = LoopingCall(self.reactor, self._watch)
        self._reaping.start(WATCH_INTERVAL, now=False).addErrback(
            lambda f: _log.failure("reaping orphans failed", f))

    def stopService(self):
        super().stopService()
        if self._reaping is not None and self._reaping.running:
            self._reaping.stop()
        d = self.registry.shutdown()
        d.addErrback(lambda f: _log.failure("stopping the sessions failed", f))
        d.addCallback(lambda _: defer.DeferredList([launcher_.close() for launcher_ in self.launchers]))
        d.addCallback(lambda _: self._sweep())
        if self.slurm is not None:
            d.addCallback(lambda result: self.slurm.stop() or result)
        d.addCallback(lambda _: self._save())
        d.addBoth(lambda result: self.statefile.close() or result)
        return d

    def _watch(self):
        procs.reap_orphans()
        # During an outage, try again: the end of it is noticed and logged, and
        # the file catches up with the changes that went on meanwhile.
        if self._failing is not None or self._descendants() != self._recorded:
            self._save()

    @staticmethod
    def _descendants():
        """(pid, start time) of every live descendant of this process."""
        table = procs.stat_table()  # one pass over /proc: start times from the same snapshot
        return {(pid, table[pid].start_time) for pid in procs.descendants(os.getpid(), table)}

    #: Sweeps after the first, for processes started while one went on (a program that
    #: forks anew as fast as its processes are ended); each ends with SIGKILL at once.
    SWEEPS = 10

    def _sweep(self, sweep=0):
        """End every process still descending from the gateway: nothing outlives it.

        Looks again once a sweep is done, until none is left (L{SWEEPS} more at
        most): what ended the processes it knew of may have started others."""
        kept = self.registry.kept_processes()  # --keep_sessions: left running for the next run
        leftovers = sorted(p for p in self._descendants() if p not in kept.items())
        if not leftovers:
            return None
        if sweep > self.SWEEPS:
            _log.warn("{count} process(es) still left after {sweeps} sweeps: {pids}",
                      count=len(leftovers), sweeps=self.SWEEPS, pids=[pid for pid, _ in leftovers])
            return None
        _log.info("ending {count} process(es) the sessions left behind", count=len(leftovers))
        d = stopping.kill_processes(self.reactor, leftovers, grace=self.kill_grace if sweep == 0 else 0)
        return d.addCallback(lambda _: self._sweep(sweep + 1))
