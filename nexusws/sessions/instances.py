"""Running service instances and the processes each one owns.

L{Service} (scripts subclass L{nexusws.sessions.script}, the config file is read by L{nexusws.sessions.config})
calls a script's C{start}/C{stop} and makes sure that stopping an
instance ends every process the instance started.

Which instance a process belongs to:
  - B{Helper children} (C{RemoteServiceScript.spawn}) belong to the C{index=}
    given, else to the instance whose code is running. nexusws knows that in
    the synchronous part of the script's C{start}/C{stop}, in coroutines and
    C{inlineCallbacks} they begin (a context variable), and in callbacks of the
    Deferreds the helpers return; elsewhere (a plain C{callLater}, a Deferred
    of the script's own) only when exactly one instance of the service is
    starting. Otherwise C{spawn} raises L{ServiceError} asking for C{index=}.
  - B{Processes started by other means} (C{reactor.spawnProcess},
    C{subprocess}): the gateway's live descendants are read from C{/proc}
    before C{start} is called, when its synchronous part returns, and when its
    result fires. New descendants after the synchronous part belong to the
    instance; new ones when the result fires belong to it if no other
    instance, of any service, started or ran its script's C{stop} meanwhile,
    and otherwise if they carry the instance's marker: the helpers' children
    get C{NEXUSWS_INSTANCE=<marker>} in their environment, and so does all
    they start, daemons too. Marked processes are claimed again at stop. A
    new process below one that another instance owns stays that instance's.
    Unmarked processes started during an overlap belong to no instance; the
    gateway ends them when it stops (and after a crash, at restart).
  - B{Stop}: once the script's C{stop} has finished (or failed, or exceeded
    C{stop_timeout}), helper children still running get C{Child.terminate}
    (TERM to the group, KILL after C{grace}), and every other process the
    instance owned when the stop began or owns now, with their descendants,
    goes to L{nexusws.sessions.stopping.kill_processes} (pid and start time checked).

A L{Service} is the local backend behind L{nexusws.sessions.backend.ISessionBackend}:
a start that fails, fails with a L{StartFailure}.
"""

import contextvars
import copy
import inspect

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from nexusws.logs import describe, logger, one_line, show
from nexusws.sessions.backend import BUSY, CRASHED, FAILED, NO_INSTANCE, ISessionBackend, StartFailure, as_address
from nexusws.sessions.owners import TRACKER, Instance, System
from nexusws.sessions.ports import StartTimeout
from nexusws.sessions.statefile import NotRecorded
from nexusws.sessions.timeouts import GRACE, SCRIPT_STOP_TIMEOUT

#: (service, index) of the instance whose script code is running, if known.
current = contextvars.ContextVar("nexusws_instance", default=None)


class ServiceError(Exception):
    """An instance cannot start, or a helper cannot act; the message is one line."""


class ProgramExited(ServiceError):
    """A program ended before the instance was ready (C{wait_for_port(child=)}).

    @ivar exit_status: its exit code, or -signal."""

    def __init__(self, message, exit_status):
        super().__init__(message)
        self.exit_status = exit_status


@implementer(ISessionBackend)
class Service:
    """A named service: its script instance and its live instances (the local backend).

    @ivar name: the name reservations use; C{aliases} are other names for it.
    @ivar group: C{common_options["group"]}: only members of that group may use it.
    @ivar origin: where it was defined (the config file, C{--local_session ...}).
    @ivar grace: seconds between SIGTERM and SIGKILL when ending processes.
    @ivar stop_timeout: seconds the script's C{stop} may take before what is left is ended.
    """

    grace = GRACE
    stop_timeout = SCRIPT_STOP_TIMEOUT
    on_progress = None  # the registry's: called with (service, index, text) by progress()

    def __init__(self, name, script_class, count, common_options, reactor, launcher,
                 aliases=(), origin="", system=None, tracker=None):
        """Create the script instance as C{script_class(common_options)}.

        It is bound (C{_nexus}) before its C{__init__} runs, so helpers work there.
        """
        self.name = name
        self.count = count
        self.common_options = common_options
        self.group = common_options.get("group")
        self.aliases = tuple(aliases)
        self.origin = origin
        self.reactor = reactor
        self.launcher = launcher
        self.system = system if system is not None else System()
        self.log = logger(f"nexusws.service.{name}")
        self._tracker = tracker if tracker is not None else TRACKER
        self._tracker.services.add(self)
        self._instances = {}
        script = script_class.__new__(script_class)
        script._nexus = self
        script.__init__(copy.deepcopy(common_options))
        if not hasattr(script, "_common_options"):  # an __init__ that skipped the base's
            script._common_options = copy.deepcopy(common_options)
        self.script = script

    def __repr__(self):
        return f"<Service {self.name!r} count={self.count}>"

    def start(self, index, options):
        """Start instance C{index}; a Deferred firing with C{(host, port)}.

        Every failure arrives as a L{StartFailure} (a cancellation stays a
        C{CancelledError}). Whatever a failed start began is ended by L{stop},
        which the caller still calls.
        """
        where = f"service '{self.name}' instance {index}"
        if not isinstance(index, int) or not 0 <= index < self.count:
            return defer.fail(StartFailure(self.name, index, NO_INSTANCE))
        if index in self._instances:
            return defer.fail(StartFailure(self.name, index, BUSY))
        instance = self._instances[index] = Instance(index)
        self._tracker.enter(instance)
        before = self._descendants()
        result = self._call(self.script.start, index, dict(options))
        self._attribute(instance, before)
        instance.pending = result
        return result.addBoth(self._started, instance, before, where)

    def _started(self, result, instance, before, where):
        instance.pending = None
        if instance.overlapped:
            self.log.debug("{where}: other instances started or stopped meanwhile; of the "
                           "processes that appeared during its start, it owns those its "
                           "helper children started", where=where)
        self._attribute(instance, before, marked_only=instance.overlapped)
        if instance.state == "starting":
            self._tracker.leave(instance)
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                return result
            if result.check(ServiceError, NotRecorded):  # NotRecorded: a spawn refused
                return Failure(StartFailure(self.name, instance.index, FAILED, one_line(result.value),
                                            exit_status=getattr(result.value, "exit_status", None)))
            if not result.check(StartTimeout):  # a script bug: show where
                self.log.failure("{where}: start() failed", result, where=where)
            return Failure(StartFailure(self.name, instance.index, CRASHED, describe(result.value)))
        address = as_address(result)
        if address is None:
            return Failure(StartFailure(self.name, instance.index, FAILED,
                                        f"start() returned {show(result)}, not (host, port)"))
        if instance.state == "starting":
            instance.state = "running"
            instance.address = address
        return address

    def stop(self, index):
        """Stop instance C{index}; a Deferred that fires (never fails) once all of it has ended.

        A start still in progress is cancelled first. An index not running is a no-op.
        """
        instance = self._instances.get(index)
        if instance is None:
            return defer.succeed(None)
        if instance.stopped is None:
            instance.state = "stopping"
            self._tracker.enter(instance)
            instance.stopped = self._stop(instance)
        done = defer.Deferred()
        instance.stopped.addBoth(lambda result: done.callback(None) or result)
        return done

    @defer.inlineCallbacks
    def _stop(self, instance):
        where = f"service '{self.name}' instance {instance.index}"
        try:
            if instance.pending is not None:
                instance.pending.cancel()
            # Whatever carries its marker now is its own, though it appeared late.
            self._attribute(instance, {}, marked_only=True)
            owned_before = self.pids(instance.index)
            stopping = self._call(self.script.stop, instance.index)
            if not stopping.called:
                stopping.addTimeout(self.stop_timeout, self.reactor)
            try:
                yield stopping
            except defer.TimeoutError:
                self.log.warn("{where}: stop() did not finish within {t}s; ending what is left",
                              where=where, t=self.stop_timeout)
            except Exception:  # logged; the cleanup below still runs
                self.log.failure("{where}: stop() failed; ending what is left", where=where)
            # Ending processes starts none that are not below owned ones: others' starts
            # need not count this instance as busy any more.
            self._tracker.leave(instance)
            running = [child for child in instance.children if child.running]
            if running:
                yield defer.DeferredList([child.terminate(self.grace) for child in running])
            leftovers = self._alive(set(owned_before) | set(self.pids(instance.index)))
            if leftovers:
                self.log.warn("{where}: ending {n} process(es) its stop() left running: {pids}",
                              where=where, n=len(leftovers),
                              pids=" ".join(str(pid) for pid, _ in leftovers))
                yield self.system.kill_processes(self.reactor, leftovers, self.grace)
        except Exception:  # logged; the instance is freed regardless
            self.log.failure("{where}: ending its processes failed", where=where)
        finally:
            del self._instances[instance.index]
            self._tracker.leave(instance)

    def address(self, index):
        """C{(host, port)} of instance C{index} once its start delivered it, else None."""
        instance = self._instances.get(index)
        return instance.address if instance is not None else None

    def describe(self, index):
        """Instance C{index} in brief: the backend, its state, address and processes (no /proc)."""
        instance = self._instances.get(index)
        if instance is None:
            return {"backend": "local", "state": None}
        host, port = instance.address or (None, None)
        shown = None if host is None else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"backend": "local", "state": instance.state, "address": shown,
                "processes": len(instance.owned())}

    def live(self):
        """Its live L{Instance}s (for the L{Tracker})."""
        return list(self._instances.values())

    def _call(self, method, index, *args):
        """C{method(index, *args)} as the current instance; its outcome as a Deferred."""
        token = current.set((self, index))
        try:
            result = method(index, *args)
            if inspect.isawaitable(result) and not isinstance(result, defer.Deferred):
                # Wrapped here, so the coroutine's context holds the current instance.
                result = defer.ensureDeferred(result)
        except Exception:  # a script's error becomes the Deferred's failure
            return defer.fail()
        finally:
            current.reset(token)
        return result if isinstance(result, defer.Deferred) else defer.succeed(result)

    # --- processes ------------------------------------------------------------

    def children(self, index):
        """The helper-spawned children of instance C{index} (running or not)."""
        instance = self._instances.get(index)
        return list(instance.children) if instance else []

    def pids(self, index):
        """[(pid, start_time)] of instance C{index}'s live processes, for the state file.

        Its running helper children and attributed processes, and all their descendants.
        """
        instance = self._instances.get(index)
        if instance is None:
            return []
        table = self._table()
        roots = [child.pid for child in instance.children if child.running]
        roots += [pid for pid, started in instance.procs.items()
                  if pid in table and table[pid].start_time == started]
        found = set()
        for pid in roots:
            found |= {pid} | self.system.descendants(pid, table)
        return sorted((pid, table[pid].start_time) for pid in found
                      if self.system.is_alive(table.get(pid)))

    def _alive(self, procs):
        table = self._table()
        return sorted((pid, started) for pid, started in procs
                      if self.system.is_alive(table.get(pid)) and table[pid].start_time == started)

    def _table(self):
        try:
            return self.system.process_table()
        except OSError:  # no /proc here: only helper children can be ended
            return {}

    def _descendants(self):
        """{pid: ProcInfo} of this process's live descendants, but the launcher's
        spare supervisors (waiting for a program: no instance's yet)."""
        table = self._table()
        pids = self.system.descendants(self.system.getpid(), table)
        spares = getattr(self.launcher, "spares", None)
        pids -= spares() if spares is not None else set()
        return {pid: table[pid] for pid in pids if self.system.is_alive(table.get(pid))}

    def _attribute(self, instance, before, marked_only=False):
        """Record descendants new since C{before} as C{instance}'s, unless another owns them.

        With C{marked_only}, only those carrying the instance's marker (see L{Instance}).
        """
        now = self._descendants()
        new = sorted(pid for pid, entry in now.items()
                     if pid not in before or before[pid].start_time != entry.start_time)
        if marked_only:
            carries = getattr(self.system, "environ_has", None)
            new = [pid for pid in new if carries is not None and carries(pid, instance.marker_entry)]
        if not new:
            return
        mine = instance.owned()
        others = self._tracker.owned_elsewhere(instance)
        for pid in new:
            ancestor = pid
            while ancestor in now and ancestor not in others:
                ancestor = now[ancestor].ppid
            if pid in mine or ancestor in others:
                continue
            instance.procs[pid] = now[pid].start_time
            self.log.debug("service '{name}' instance {index} owns process {pid} ({cmd})",
                           name=self.name, index=instance.index, pid=pid, cmd=now[pid].cmdline)

    # --- which instance is running (for the helpers) ---------------------------

    def instance_for(self, index, helper):
        """The live instance a helper call is for (see the module docstring)."""
        if index is None:
            index = self.current_index()
        if index is None:
            raise ServiceError(f"service '{self.name}': {helper}() cannot tell which instance "
                               f"it is for here; pass index=")
        instance = self._instances.get(index)
        if instance is None:
            raise ServiceError(f"service '{self.name}': {helper}() for instance {index}, "
                               f"which is not running")
        return instance

    def progress(self, text, index=None):
        """Report a step of instance C{index}'s start (default: the current one, as for
        C{spawn}) to C{on_progress}, which the registry sets: C{(service, index, text)}."""
        instance = self.instance_for(index, "progress")
        if self.on_progress is not None:
            self.on_progress(self, instance.index, text)

    def current_index(self):
        """The index of the instance whose code is running, or None if unknown."""
        running = current.get()
        if running is not None and running[0] is self:
            return running[1]
        starting = [i.index for i in self._instances.values() if i.state == "starting"]
        return starting[0] if len(starting) == 1 else None

