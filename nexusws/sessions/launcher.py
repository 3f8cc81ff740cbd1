"""Spawning and watching processes; ending a child's process group.

L{Launcher.spawn} starts a program under a L{ProcessProtocol} in a session
(and so a process group) of its own, logs its output line by line, and returns
a L{Child}. L{Child.terminate} ends the whole group: SIGTERM, a grace period on
the injected reactor's clock, then SIGKILL (L{nexusws.sessions.stopping.stop_tree}).

On Linux each program runs under a supervisor of its own (L{nexusws.sessions.supervisor}),
the L{Child}: it leads the session and is the child subreaper of all the program
starts, so even a daemon that double-forks, leaves the session and clears its
environment stays below it, and ending the L{Child} ends it too (the supervisor
passes SIGTERM on). The supervisor is an interpreter that takes about 8 ms to
start, so the launcher keeps one started ahead of need (a I{spare},
L{Launcher.prepare}) and hands it its program through its stdin: a start costs
well under a millisecond more than util-linux's C{setsid} (the fallback; the
command lines are in L{nexusws.sessions.wrapping}).

Every process a launcher starts is announced to its C{on_spawn} callables
before C{spawn} returns (the state file records it there and then).

Processes that are not our Twisted children are ended by
L{nexusws.sessions.stopping.kill_processes}; L{nexusws.sessions.ports.wait_for_port}
waits until a TCP port accepts connections.
"""

import os
import signal
import sys

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel

from nexusws.logs import logger, printable
from nexusws.scrub import redact
from nexusws.sessions import procs as _procs
from nexusws.sessions import wrapping
from nexusws.sessions.statefile import NotRecorded
from nexusws.sessions.stopping import stop_tree
from nexusws.sessions.timeouts import GRACE, LINGER

_log = logger("nexusws.launcher")

#: Seconds after a spare supervisor is taken before the next one starts: at
#: once, as a script often starts its programs one shortly after another
#: (without a spare a start waits about 15 ms more).
SPARE_DELAY = 0.0

#: A line longer than this (bytes without a newline) is logged in pieces.
MAX_LINE = 64 * 1024


class _Output:
    """Splits one output stream of a child into log lines."""

    def __init__(self, child, level):
        self._child = child
        self._level = level
        self._pending = b""

    def feed(self, data):
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_LINE:
            lines.append(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        for line in lines:
            self._emit(line)

    def flush(self):
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, line):
        text = printable(line.rstrip(b"\r").decode("utf-8", "replace"), limit=1000)
        _log.emit(self._level, "{label}: {line}", label=self._child.label, line=text)


class _ChildProtocol(ProcessProtocol):
    """Feeds a L{Child} with its process's output and exit.

    A spare supervisor's has no child until it is taken (L{attach}); until
    then its output is logged as the supervisor's, and its end noted."""

    def __init__(self, child, keep_stdin=False):
        self._child = child
        self._keep_stdin = keep_stdin
        self.ended = False
        self.done = _Once()  # fires once the process has ended
        self._attach_streams(child if child is not None else _Spare)

    def _attach_streams(self, child):
        self._streams = {1: _Output(child, LogLevel.info), 2: _Output(child, LogLevel.warn)}

    def attach(self, child):
        self._child = child
        self._attach_streams(child)

    def connectionMade(self):
        # Nothing is ever written to a child: it reads EOF rather than block.
        # (A supervisor gets its command first, then EOF.)
        if not self._keep_stdin:
            self.transport.closeStdin()

    def childDataReceived(self, fd, data):
        if fd in self._streams:
            self._streams[fd].feed(data)

    def childConnectionLost(self, fd):
        if fd in self._streams:
            self._streams[fd].flush()

    def processExited(self, reason):
        if self._child is not None:
            self._child._exited(_exit_code(reason.value))

    def processEnded(self, reason):
        self.ended = True
        for stream in self._streams.values():
            stream.flush()
        if self._child is not None:
            self._child._ended(_exit_code(reason.value))
        self.done.fire(None)


class _Spare:
    """The label of a spare supervisor's output (it has none unless something is wrong)."""

    label = "nexusws supervisor"


def _exit_code(exc):
    """The exit code, or -signal, that a L{ProcessDone}/L{ProcessTerminated} reports."""
    if getattr(exc, "signal", None):
        return -exc.signal
    return exc.exitCode or 0


class _Once:
    """A result that many may wait for; each waiter gets a Deferred of its own,
    so one waiter's callbacks cannot change what another receives."""

    def __init__(self):
        self.done = False
        self.result = None
        self._waiters = []

    def wait(self):
        if self.done:
            return defer.succeed(self.result)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def fire(self, result):
        self.done, self.result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)


class Child:
    """A program started by L{Launcher.spawn}; the leader of its own process group.

    @ivar pid: its pid, which is also its session and process group id.
    @ivar start_time: its start time (see L{nexusws.sessions.procs.start_time}), None if
        it was already gone when asked.
    @ivar label: the name its log lines carry.
    @ivar running: True until the process has exited.
    @ivar exit_code: None while running, then the exit code or -signal.
    """

    pid = start_time = exit_code = _transport = _terminating = _linger_call = None
    running = True

    def __init__(self, launcher, label):
        self._launcher = launcher
        self._reactor = launcher.reactor
        self.label = label
        self._exit = _Once()
        self._end = _Once()

    def __repr__(self):
        return f"<Child {self.label} pid={self.pid} running={self.running}>"

    @property
    def ended(self):
        """A new Deferred that fires (never errbacks) with the exit code or -signal,
        once the process has exited and its output has been logged."""
        return self._end.wait()

    def _exited(self, code):
        self.running = False
        self.exit_code = code
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        _log.info("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)
        self._exit.fire(code)
        # The pipes close with the process unless something it started holds
        # them open: then stop reading after a while, so `ended` still fires.
        self._linger_call = self._reactor.callLater(self._launcher.linger, self._stop_reading)

    def _stop_reading(self):
        if not self._end.done:
            _log.debug("{label}: output held open by other processes", label=self.label)
            self._transport.loseConnection()

    def _ended(self, code):
        if self.running:  # processEnded without processExited: not from Twisted, but be sure
            self._exited(code)
        if self._linger_call.active():
            self._linger_call.cancel()
        self._end.fire(self.exit_code)

    def terminate(self, grace=GRACE):
        """End the process and its whole group: SIGTERM, up to C{grace} seconds, SIGKILL.

        Every member of the group gets SIGTERM at once. Once the leader and the
        rest of its group are gone, or C{grace} seconds (on the reactor's
        clock) have passed, whatever is left of the group gets SIGKILL.
        Safe to call on a process that has already exited, and more than once.

        @return: a Deferred firing with None when the leader has exited, its
            output has been logged and the group got its SIGKILL if needed.
        """
        if self._terminating is None:
            self._terminating = _Once()
            _log.debug("{label} (pid {pid}): terminating", label=self.label, pid=self.pid)
            d = stop_tree(self._reactor, grace, send=self._signal_group, look_now=True,
                          alive=lambda: self.running or self._launcher.group_alive(self.pid),
                          kill=lambda _: self._overdue(grace))
            d.addCallback(lambda _: self._exit.wait())
            d.addCallback(lambda _: self.ended)
            d.addCallback(lambda _: self._terminating.fire(None))
        return self._terminating.wait()

    def _overdue(self, grace):
        _log.warn(
            "{label} (pid {pid}): still running {grace}s after SIGTERM; sending SIGKILL",
            label=self.label, pid=self.pid, grace=grace,
        )
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig):
        try:
            self._launcher.killpg(self.pid, sig)
            return
        # No such group: the wrapper has not called setsid yet, or the group is
        # gone (EPERM: its number is now another user's group).
        except (ProcessLookupError, PermissionError):
            pass
        if self.running:
            try:
                self._transport.signalProcess(sig)
            except error.ProcessExitedAlready:
                pass


class Launcher:
    """Starts programs as L{Child}ren, each in a session of its own.

    @param reactor: an C{IReactorProcess} and C{IReactorTime}.
    @param killpg: how to signal a process group (C{os.killpg}; tests inject another).
    @param group_alive: C{group_alive(pgid)} tells whether a process group still
        has live members (from C{/proc}; tests inject another).
    @param linger: seconds to keep reading a child's output after it exited while
        other processes still hold its pipes open.
    @param supervise: whether to run each program under a supervisor (default: on Linux).
    @param relay_output: whether each supervisor I{relays} its program's output
        (C{"relay": true} in its command, L{nexusws.sessions.supervisor}): the program
        writes to pipes of the supervisor's, which copies it to the pipes this
        launcher reads (logged as without relaying) and, once they are gone (the
        gateway stopped, C{--keep_sessions}), reads on and discards it, so the
        program never meets a broken pipe, which many runtimes (Python's) die of.
        Only supervised spawns relay; without, the program has the pipes we read.
    """

    def __init__(self, reactor, killpg=os.killpg, group_alive=None, linger=LINGER, supervise=None,
                 relay_output=False):
        self.reactor = reactor
        self.killpg = killpg
        self.group_alive = group_alive or _procs.group_alive
        self.linger = linger
        self.supervise = wrapping.SUPERVISE if supervise is None else supervise
        self.relay_output = relay_output
        #: Callables C{(pid, start_time)} told of every process started, before
        #: C{spawn} returns; one raising L{NotRecorded} makes C{spawn} end it and fail.
        self.on_spawn = []
        self._spare = None  # (transport, protocol) of a supervisor waiting for a program
        self._refill = None  # the call that starts the next spare
        self._closed = False

    def prepare(self):
        """Start a spare supervisor now, if supervising and none is waiting."""
        if self._refill is not None and self._refill.active():
            self._refill.cancel()
        self._refill = None
        if self.supervise and not self._closed and self._spare is None:
            self._spare = self._start_supervisor()

    def spares(self):
        """The pids of the spare supervisors (not any instance's processes)."""
        return {self._spare[0].pid} if self._spare is not None else set()

    def close(self):
        """Dismiss the spare supervisor and start no other; a Deferred that fires once it is gone."""
        self._closed = True
        if self._refill is not None and self._refill.active():
            self._refill.cancel()
        spare, self._spare = self._spare, None
        if spare is None:
            return defer.succeed(None)
        spare[0].closeStdin()  # EOF without a command: it exits
        return spare[1].done.wait()

    def _start_supervisor(self):
        protocol = _ChildProtocol(None, keep_stdin=True)
        args = [sys.executable, "-I", "-S", wrapping.SUPERVISOR]
        transport = self.reactor.spawnProcess(protocol, args[0], args, env={})
        return transport, protocol

    def _take_spare(self):
        spare, self._spare = self._spare, None
        if spare is None or spare[1].ended:
            spare = self._start_supervisor()
        if not self._closed and (self._refill is None or not self._refill.active()):
            self._refill = self.reactor.callLater(SPARE_DELAY, self.prepare)
        return spare

    def spawn(self, argv, env=None, cwd=None, label=""):
        """Start C{argv} in a new session and process group; return its L{Child}.

        Lines on its stdout are logged as info, on stderr as warnings, each as
        C{<label>: <line>}; a last line without a newline is logged at exit.
        Its stdin is closed.

        @param env: its environment; None: this process's environment; either
            without the gateway's own variables (L{procs.GATEWAY_ONLY_ENV}).
        @param cwd: its working directory; None: ours.
        @param label: the name its log lines carry; default: the program's name.
        @raise FileNotFoundError: C{argv[0]} is not an executable program.
        @raise NotRecorded: an C{on_spawn} callable could not record it: it was ended.
        """
        argv = [os.fsdecode(a) for a in argv]
        if not argv:
            raise ValueError("spawn: empty argv")
        env = _procs.child_environment(os.environ if env is None else env)
        wrapping.check_executable(argv[0], env, cwd)
        child = Child(self, label or os.path.basename(argv[0]))
        if self.supervise:
            transport, protocol = self._take_spare()
            protocol.attach(child)
            transport.write(wrapping.supervisor_command(argv, env, cwd, relay=self.relay_output))
            transport.closeStdin()
        else:
            args = wrapping.wrap(argv, env)
            protocol = _ChildProtocol(child)
            transport = self.reactor.spawnProcess(protocol, args[0], args, env=env, path=cwd)
        child._transport = transport
        child.pid = transport.pid
        child.start_time = _procs.start_time(child.pid)
        # Arguments may hold secrets (a VNC password): only the program at info level.
        fields = {"label": child.label, "pid": child.pid}
        _log.info("{label} (pid {pid}) started: {program}", program=printable(argv[0]), **fields)
        _log.debug("{label} (pid {pid}) argv: {argv}",  # secrets masked as in URLs
                   argv=printable(" ".join(redact(arg) for arg in argv)), **fields)
        self._announce(child)
        return child

    def _announce(self, child):
        """Tell C{on_spawn} of C{child}; if it cannot be recorded, end it and raise."""
        for hook in list(self.on_spawn):
            try:
                hook(child.pid, child.start_time)
            except NotRecorded:
                _log.info("{label} (pid {pid}): ended at once, as it could not be recorded",
                          label=child.label, pid=child.pid)
                child._signal_group(signal.SIGKILL)
                raise
            except Exception:  # logged; the child runs on
                _log.failure("{label} (pid {pid}): telling of its start failed",
                             label=child.label, pid=child.pid)
