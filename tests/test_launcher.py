"""nexusws.sessions.launcher, stopping, ports, wrapping: spawning, output logging,
termination of groups and leftovers (one TERM, grace, KILL loop), port waits.

Three levels:
  - in memory: a fake process reactor (a Clock that records spawnProcess and
    lets the test deliver output and exits), an injected killpg, MemoryReactorClock;
  - L{kill_processes} against real processes with a Clock for its grace period;
  - real-reactor scenarios with real processes in tests/programs/proc_launch.py,
    after each of which no process carrying the run's marker may be left.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from conftest import require
from nexusws.logs import set_verbosity
from nexusws.sessions import launcher as launcher_module
from nexusws.sessions import procs, wrapping
from nexusws.sessions.launcher import Launcher
from nexusws.sessions.ports import StartTimeout, wait_for_port
from nexusws.sessions.stopping import kill_processes, stop_tree
from nexusws.sessions.wrapping import SETSID_WRAPPER
from support.sessions import with_environment
from support.waiting import wait_until

PROGRAMS = Path(__file__).parent / "programs"
FAKE_PID = 4_999_000  # above any possible pid: /proc knows nothing of it
MARKER_VAR = "NEXUSWS_TEST_MARKER"


# --- the fake process reactor ---------------------------------------------------


def _reason(code, sig):
    if not code and sig is None:
        return Failure(error.ProcessDone(0))
    return Failure(error.ProcessTerminated(exitCode=code, signal=sig))


class FakeProcess:
    """The transport of one fake child; the test drives its output and exit."""

    def __init__(self, protocol, executable, args, env, path, pid):
        self.protocol, self.executable, self.args, self.env, self.path = protocol, executable, args, env, path
        self.pid = pid
        self.signals = []
        self.stdin_closed = self.lost = self.exited = False

    def write(self, data):
        assert not self.stdin_closed
        self.written = getattr(self, "written", b"") + data

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, sig):
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(sig)

    def loseConnection(self):
        self.lost = True

    def out(self, data):
        self.protocol.childDataReceived(1, data)

    def err(self, data):
        self.protocol.childDataReceived(2, data)

    def exit(self, code=0, sig=None):
        self.exited = True
        self.protocol.processExited(_reason(code, sig))

    def close_pipes(self, code=0, sig=None):
        for fd in (1, 2):
            self.protocol.childConnectionLost(fd)
        self.protocol.processEnded(_reason(code, sig))

    def finish(self, code=0, sig=None):
        self.exit(code, sig)
        self.close_pipes(code, sig)


@implementer(IReactorProcess)
class FakeProcessReactor(Clock):
    def __init__(self):
        super().__init__()
        self.processes = []

    def spawnProcess(self, processProtocol, executable, args=(), env=None, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        process = FakeProcess(processProtocol, executable, args, env, path, FAKE_PID + len(self.processes))
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process


class Groups:
    """An injected killpg and group_alive: records signals, simulates group states."""

    def __init__(self):
        self.sent = []
        self.exists = True  # False: killpg finds no such group
        self.alive = False  # True: members other than the leader are still running

    def killpg(self, pgid, sig):
        if not self.exists:
            raise ProcessLookupError()
        self.sent.append((pgid, sig))

    def group_alive(self, pgid):
        return self.alive


@pytest.fixture
def fake():
    reactor, groups = FakeProcessReactor(), Groups()
    # The programs themselves, as util-linux's setsid runs them (supervised: below).
    launcher = Launcher(reactor, killpg=groups.killpg, group_alive=groups.group_alive, linger=1.0,
                        supervise=False)
    return SimpleNamespace(reactor=reactor, groups=groups, launcher=launcher)


@pytest.fixture
def logged():
    """The launcher's log events as (level, text), collected during the test."""
    events = []

    def observe(event):
        if event.get("log_namespace") == "nexusws.launcher":
            events.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def fired(d):
    results = []
    d.addBoth(results.append)
    return results


# --- spawn ------------------------------------------------------------------------


@pytest.fixture
def supervised():
    reactor, groups = FakeProcessReactor(), Groups()
    launcher = Launcher(reactor, killpg=groups.killpg, group_alive=groups.group_alive, supervise=True)
    return SimpleNamespace(reactor=reactor, groups=groups, launcher=launcher)


def test_a_supervised_spawn_hands_a_spare_supervisor_its_program_on_stdin_then_eof(
        supervised, tmp_path, monkeypatch):
    monkeypatch.setattr(procs, "child_nofile", 1024)
    supervised.launcher.prepare()
    (spare,) = supervised.reactor.processes
    assert spare.args == [sys.executable, "-I", "-S", wrapping.SUPERVISOR]
    assert spare.env == {} and not spare.stdin_closed, "a spare waits for its command"
    assert supervised.launcher.spares() == {spare.pid}
    child = supervised.launcher.spawn(["sleep", "5"], env={"PATH": os.environ["PATH"], "A": "1"},
                                      cwd=str(tmp_path))
    assert child.pid == spare.pid and supervised.launcher.spares() == set()
    assert json.loads(spare.written) == {"argv": ["sleep", "5"], "cwd": str(tmp_path), "nofile": 1024,
                                         "env": {"PATH": os.environ["PATH"], "A": "1"}}
    assert spare.stdin_closed, "the program reads EOF"
    supervised.reactor.advance(launcher_module.SPARE_DELAY)
    assert len(supervised.reactor.processes) == 2, "the next spare is started"
    spare.finish(3)
    assert fired(child.ended) == [3]


def test_spawn_tells_on_spawn_of_the_child_before_it_returns(supervised):
    told = []
    supervised.launcher.on_spawn.append(lambda pid, start: told.append(
        (pid, start, list(supervised.reactor.processes))))
    child = supervised.launcher.spawn(["sleep", "5"])
    assert [(pid, start) for pid, start, _ in told] == [(child.pid, child.start_time)]


def test_a_child_that_cannot_be_recorded_is_killed_and_spawn_raises(supervised, fake):
    """A crash before its record was written would leak it: it is ended at once."""
    from nexusws.sessions.statefile import NotRecorded

    for world in (supervised, fake):
        def refuse(pid, start):
            raise NotRecorded("the session state cannot be recorded (No space left on device)")

        world.launcher.on_spawn.append(refuse)
        with pytest.raises(NotRecorded):
            world.launcher.spawn(["sleep", "5"])
        process = world.reactor.processes[-1]
        assert world.groups.sent == [(process.pid, signal.SIGKILL)]


def test_spawn_runs_argv_through_setsid_with_the_given_env_and_cwd(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(procs, "child_nofile", None)
    child = fake.launcher.spawn(["sleep", "5"], env={"PATH": os.environ["PATH"], "A": "1"}, cwd=str(tmp_path))
    (p,) = fake.reactor.processes
    if wrapping.SETSID:  # util-linux's
        assert p.executable == wrapping.SETSID and p.args == [wrapping.SETSID, "--", "sleep", "5"]
    else:
        assert p.executable == sys.executable and p.args == [sys.executable, "-c", SETSID_WRAPPER, "sleep", "5"]
    assert p.env == {"PATH": os.environ["PATH"], "A": "1"}
    assert p.path == str(tmp_path)
    assert child.pid == p.pid and child.running and child.exit_code is None
    assert child.label == "sleep"
    assert child.start_time is None  # /proc has no such (fake) pid


def test_spawn_without_env_gives_the_child_this_process_environment(fake):
    fake.launcher.spawn(["sleep", "5"], label="s")
    assert fake.reactor.processes[0].env == dict(os.environ)


@pytest.mark.parametrize("inherit", [True, False])
def test_children_never_see_the_security_token_or_systemd_sockets(fake, monkeypatch, inherit):
    gateway_only = {"WEBSOCKETSERVER_SECURITY_TOKEN": "HELLO", "LISTEN_FDS": "2", "LISTEN_PID": "1",
                    "LISTEN_FDNAMES": "ws:http"}
    for name, value in gateway_only.items():
        monkeypatch.setenv(name, value)
    env = None if inherit else {**gateway_only, "PATH": os.environ["PATH"], "A": "1"}
    fake.launcher.spawn(["sleep", "5"], env=env, label="s")
    child_env = fake.reactor.processes[0].env
    assert not set(gateway_only) & set(child_env)
    assert child_env["PATH"] == os.environ["PATH"]


def test_secrets_in_arguments_never_reach_the_log_even_at_debug(fake, logged):
    """The built-ins pass vnc://?primary_password=...: every log line masks it."""
    set_verbosity(1)
    try:
        fake.launcher.spawn(["sleep", "vnc://?rfb_port=5900&primary_password=hunter2"], label="s")
    finally:
        set_verbosity(0)
    text = "\n".join(line for _, line in logged)
    assert "primary_password=***" in text, "the debug line with the arguments was logged"
    assert "hunter2" not in text


def test_spawn_of_a_missing_program_raises_and_starts_nothing(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        fake.launcher.spawn(["no-such-program"])
    (tmp_path / "not-executable").write_text("")
    with pytest.raises(FileNotFoundError):
        fake.launcher.spawn(["./not-executable"], cwd=str(tmp_path))
    assert fake.reactor.processes == []


def test_spawn_finds_a_relative_program_in_the_given_cwd(fake, tmp_path):
    program = tmp_path / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    fake.launcher.spawn(["./prog"], cwd=str(tmp_path), label="p")
    assert fake.reactor.processes[0].args[-1] == "./prog"


def test_the_child_stdin_is_closed_at_start_so_it_reads_eof(fake):
    fake.launcher.spawn(["cat"])
    assert fake.reactor.processes[0].stdin_closed


# --- output -------------------------------------------------------------------------


def output_lines(events, label):
    return [(level, text) for level, text in events if text.startswith(label + ": ")]


def test_output_is_logged_line_by_line_with_the_label_stdout_info_stderr_warning(fake, logged):
    fake.launcher.spawn(["sh"], label="app")
    p = fake.reactor.processes[0]
    p.out(b"one\ntw")
    p.err(b"bad\n")
    p.out(b"o\r\nthree\n")
    assert output_lines(logged, "app") == [
        ("info", "app: one"), ("warn", "app: bad"), ("info", "app: two"), ("info", "app: three"),
    ]


def test_a_partial_last_line_is_logged_when_the_process_ends(fake, logged):
    fake.launcher.spawn(["sh"], label="app")
    p = fake.reactor.processes[0]
    p.out(b"done\nno newline")
    p.err(b"oops")
    assert output_lines(logged, "app") == [("info", "app: done")]
    p.finish(1)
    assert output_lines(logged, "app")[1:] == [("info", "app: no newline"), ("warn", "app: oops")]


def test_output_lines_are_made_printable(fake, logged):
    fake.launcher.spawn(["sh"], label="app")
    fake.reactor.processes[0].out(b"bell\x07 esc\x1b[0m \xff\n")
    assert output_lines(logged, "app") == [("info", "app: bell%07 esc%1B[0m %EF%BF%BD")]


def test_an_endless_line_is_logged_in_pieces_instead_of_growing_without_bound(fake, logged):
    fake.launcher.spawn(["sh"], label="app")
    fake.reactor.processes[0].out(b"x" * (launcher_module.MAX_LINE * 2 + 10))
    assert len(output_lines(logged, "app")) == 2


# --- ended ---------------------------------------------------------------------------


@pytest.mark.parametrize("code, sig, expected", [(0, None, 0), (3, None, 3), (None, 9, -9), (None, 15, -15)])
def test_ended_fires_with_the_exit_code_or_minus_the_signal(fake, code, sig, expected):
    child = fake.launcher.spawn(["sh"])
    result = fired(child.ended)
    fake.reactor.processes[0].finish(code, sig)
    assert result == [expected]
    assert child.exit_code == expected and not child.running
    assert fired(child.ended) == [expected]  # asked again after the end


def test_ended_waits_for_the_last_output_after_the_exit(fake, logged):
    child = fake.launcher.spawn(["sh"], label="app")
    result = fired(child.ended)
    p = fake.reactor.processes[0]
    p.exit(0)
    assert not child.running and result == []
    p.out(b"late line\n")
    p.close_pipes(0)
    assert result == [0]
    assert ("info", "app: late line") in logged


def test_each_ended_deferred_gets_the_exit_code_whatever_other_callers_do(fake):
    child = fake.launcher.spawn(["sh"])
    first = child.ended
    first.addCallback(lambda code: "changed by the first caller")
    second = fired(child.ended)
    fake.reactor.processes[0].finish(4)
    assert second == [4]


def test_ended_fires_after_the_linger_when_a_daemon_holds_the_output_pipes(fake):
    child = fake.launcher.spawn(["sh"])
    result = fired(child.ended)
    p = fake.reactor.processes[0]
    p.exit(0)
    fake.reactor.advance(0.9)
    assert not p.lost
    fake.reactor.advance(0.1)
    assert p.lost  # stopped reading: Twisted then ends the process
    p.close_pipes(0)
    assert result == [0]


# --- terminate -------------------------------------------------------------------------


def test_terminate_sends_sigterm_to_the_group_and_no_sigkill_when_it_exits_in_time(fake):
    child = fake.launcher.spawn(["sh"])
    done = fired(child.terminate(grace=5))
    assert fake.groups.sent == [(child.pid, signal.SIGTERM)]
    fake.reactor.advance(1)
    fake.reactor.processes[0].finish(None, signal.SIGTERM)
    fake.reactor.advance(0.1)
    assert done == [None]
    fake.reactor.advance(10)
    assert fake.groups.sent == [(child.pid, signal.SIGTERM)]


def test_terminate_sends_sigkill_to_the_group_when_the_grace_period_passes(fake):
    child = fake.launcher.spawn(["sh"])
    done = fired(child.terminate(grace=5))
    fake.reactor.pump([0.1] * 49)
    assert fake.groups.sent == [(child.pid, signal.SIGTERM)]
    fake.reactor.advance(0.2)
    assert fake.groups.sent == [(child.pid, signal.SIGTERM), (child.pid, signal.SIGKILL)]
    assert done == []  # not before the leader is gone
    fake.reactor.processes[0].finish(None, signal.SIGKILL)
    assert done == [None] and child.exit_code == -signal.SIGKILL


def test_terminate_gives_the_rest_of_the_group_the_grace_period_then_kills_it(fake):
    child = fake.launcher.spawn(["sh"])
    fake.groups.alive = True  # a member that ignores SIGTERM
    done = fired(child.terminate(grace=2))
    fake.reactor.processes[0].finish(None, signal.SIGTERM)
    fake.reactor.advance(1.5)
    assert done == [] and fake.groups.sent == [(child.pid, signal.SIGTERM)]
    fake.reactor.pump([0.1] * 6)
    assert fake.groups.sent[-1] == (child.pid, signal.SIGKILL)
    assert done == [None]


def test_terminate_sends_no_sigkill_once_the_whole_group_has_gone_in_time(fake):
    child = fake.launcher.spawn(["sh"])
    fake.groups.alive = True
    done = fired(child.terminate(grace=2))
    fake.reactor.processes[0].finish(None, signal.SIGTERM)
    fake.reactor.advance(1)
    fake.groups.alive = False
    fake.reactor.pump([0.1] * 30)
    assert done == [None] and fake.groups.sent == [(child.pid, signal.SIGTERM)]


def test_terminate_is_idempotent_every_call_fires_and_signals_are_sent_once(fake):
    child = fake.launcher.spawn(["sh"])
    first = fired(child.terminate(grace=5))
    second = fired(child.terminate(grace=5))
    fake.reactor.processes[0].finish(None, signal.SIGTERM)
    fake.reactor.advance(0.1)
    third = fired(child.terminate(grace=5))
    assert first == second == third == [None]
    assert fake.groups.sent == [(child.pid, signal.SIGTERM)]


def test_terminate_after_the_process_and_its_group_are_gone_fires_at_once(fake):
    child = fake.launcher.spawn(["sh"])
    fake.reactor.processes[0].finish(0)
    fake.groups.exists = False
    assert fired(child.terminate(grace=5)) == [None]
    assert fake.reactor.processes[0].signals == []


def test_terminate_before_the_wrapper_made_its_group_signals_the_leader_itself(fake):
    child = fake.launcher.spawn(["sh"])
    fake.groups.exists = False  # setsid has not run yet
    done = fired(child.terminate(grace=1))
    p = fake.reactor.processes[0]
    assert p.signals == [signal.SIGTERM]
    fake.reactor.pump([0.1] * 9)
    assert p.signals == [signal.SIGTERM]
    fake.reactor.advance(0.2)
    assert p.signals == [signal.SIGTERM, signal.SIGKILL]
    p.finish(None, signal.SIGKILL)
    assert done == [None]


# --- wait_for_port in memory ------------------------------------------------------------


def test_wait_for_port_retries_refused_connects_and_closes_the_one_that_succeeds():
    reactor = MemoryReactorClock()
    done = fired(wait_for_port(reactor, "127.0.0.1", 5901, timeout=10, interval=0.5))
    # An address literal's refusal counts at once; tries follow every 3 ms for a second, then every interval.
    def refuse_and_wait(wait):
        attempt = len(reactor.tcpClients) - 1
        reactor.tcpClients[attempt][2].clientConnectionFailed(
            reactor.connectors[attempt], Failure(error.ConnectionRefusedError()))
        reactor.advance(wait * 0.9)
        assert len(reactor.tcpClients) == attempt + 1
        reactor.advance(wait * 0.1)
        assert len(reactor.tcpClients) == attempt + 2

    refuse_and_wait(0.003)
    reactor.advance(1.0)  # past the quick period (nothing is tried while no answer is due)
    refuse_and_wait(0.5)
    host, port, factory, _, _ = reactor.tcpClients[2]
    assert (host, port) == ("127.0.0.1", 5901)
    transport = StringTransport()
    factory.buildProtocol(None).makeConnection(transport)
    assert done == [None]
    assert transport.disconnecting
    assert reactor.getDelayedCalls() == []


def test_wait_for_port_fails_with_start_timeout_naming_the_address_after_the_timeout():
    reactor = MemoryReactorClock()
    done = fired(wait_for_port(reactor, "127.0.0.1", 5901, timeout=2.5, interval=0.5))
    reactor.advance(2.4)
    assert done == []
    reactor.advance(0.1)
    assert done[0].check(StartTimeout)
    assert str(done[0].value) == "port 127.0.0.1:5901 did not accept connections within 2.5s"
    assert reactor.getDelayedCalls() == []


# --- kill_processes: real processes, Clock for the grace period --------------------------


class Kills:
    """An os.kill that records what it sends (and sends it, unless told not to)."""

    def __init__(self, real=True):
        self.sent = []
        self.real = real

    def __call__(self, pid, sig):
        self.sent.append((pid, sig))
        if self.real:
            os.kill(pid, sig)

    def pids(self, sig):
        return {pid for pid, s in self.sent if s == sig}


def drive(clock, d, step=0.1, limit=15.0):
    """Advance C{clock} by C{step} every 10 ms of real time until C{d} fires."""
    results = fired(d)
    deadline = time.monotonic() + limit
    while not results:
        assert time.monotonic() < deadline, "kill_processes did not finish"
        time.sleep(0.01)
        clock.advance(step)
    return results[0]


def identity(pid):
    return (pid, procs.start_time(pid))


IGNORE_TERM = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_kill_processes_sends_only_sigterm_to_a_process_that_exits_in_time(popen):
    p = popen(["sleep", "60"])
    kills, clock = Kills(), Clock()
    assert drive(clock, kill_processes(clock, [identity(p.pid)], grace=1000, kill=kills)) == []
    assert kills.sent == [(p.pid, signal.SIGTERM)]
    assert p.wait(5) == -signal.SIGTERM


def test_kill_processes_sends_sigkill_when_sigterm_is_ignored_for_the_grace_period(popen):
    p = popen([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    kills, clock = Kills(), Clock()
    d = kill_processes(clock, [identity(p.pid)], grace=3, kill=kills)
    clock.pump([0.1] * 29)
    assert kills.sent == [(p.pid, signal.SIGTERM)]
    assert drive(clock, d) == [p.pid]
    assert kills.sent == [(p.pid, signal.SIGTERM), (p.pid, signal.SIGKILL)]
    assert p.wait(5) == -signal.SIGKILL


def test_kill_processes_never_signals_a_pid_whose_start_time_differs(popen):
    p = popen(["sleep", "60"])
    pid, started = identity(p.pid)
    kills, clock = Kills(), Clock()
    assert drive(clock, kill_processes(clock, [(pid, started - 1), (pid, None)], grace=1, kill=kills)) == []
    assert kills.sent == []
    assert procs.same_process(pid, started)


def test_kill_processes_also_ends_the_descendants_of_each_process(popen):
    p = popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    wait_until(lambda: len(procs.descendants(p.pid)) == 2, 10, "both sleeps started", interval=0.01)
    sleeps = procs.descendants(p.pid)
    kills, clock = Kills(), Clock()
    assert drive(clock, kill_processes(clock, [identity(p.pid)], grace=1000, kill=kills)) == []
    assert kills.pids(signal.SIGTERM) == {p.pid} | sleeps
    wait_until(lambda: not any(procs.is_alive(procs.info(s)) for s in sleeps), 10, "the sleeps have exited",
               interval=0.01)


# A session leader whose session holds a process that is not its descendant:
# the middle process exits, so the sleeper is re-parented away from the leader.
ORPHAN_IN_SESSION = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    print(pid, flush=True)\n"
    "    os._exit(0)\n"
    "time.sleep(60)\n"
)


def test_kill_processes_ends_the_whole_session_of_a_session_leader(popen):
    p = popen([sys.executable, "-c", ORPHAN_IN_SESSION], start_new_session=True,
              stdout=subprocess.PIPE, text=True)
    orphan = int(p.stdout.readline())
    # once the middle process is gone
    wait_until(lambda: orphan not in procs.descendants(p.pid), 10, "the sleeper re-parented", interval=0.01)
    assert procs.info(orphan).sid == p.pid
    orphan_id = identity(orphan)
    kills, clock = Kills(), Clock()
    assert drive(clock, kill_processes(clock, [identity(p.pid)], grace=1000, kill=kills)) == []
    assert kills.pids(signal.SIGTERM) == {p.pid, orphan}
    assert not procs.same_process(*orphan_id)


# On SIGTERM it starts a child that ignores SIGTERM, and ignores it itself.
FORKS_ON_TERM = (
    "import os, signal, sys, time\n"
    "def on_term(*_):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    print(pid, flush=True)\n"
    "signal.signal(signal.SIGTERM, on_term)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


def test_kill_processes_kills_processes_started_during_the_grace_period(popen):
    p = popen([sys.executable, "-c", FORKS_ON_TERM], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    kills, clock = Kills(), Clock()
    d = kill_processes(clock, [identity(p.pid)], grace=1, kill=kills)
    late = int(p.stdout.readline())
    late_id = identity(late)
    assert drive(clock, d) == sorted([p.pid, late])
    assert kills.pids(signal.SIGKILL) == {p.pid, late}
    wait_until(lambda: not procs.same_process(*late_id), 10, "the late child has gone", interval=0.01)


def test_kill_processes_never_signals_this_process_itself():
    kills, clock = Kills(real=False), Clock()
    drive(clock, kill_processes(clock, [identity(os.getpid())], grace=0.5, kill=kills))
    assert os.getpid() not in {pid for pid, _ in kills.sent}


# --- stop_tree: the one TERM, grace, KILL loop ----------------------------------------------


class Tree:
    """Targets for stop_tree that the test ends by hand."""

    def __init__(self, alive=True):
        self.alive, self.sent, self.killed = alive, [], []

    def run(self, clock, grace, **kw):
        return stop_tree(clock, grace, send=self.sent.append, alive=lambda: self.alive,
                         kill=lambda left: self.killed.append(left) or "killed", **kw)


def test_stop_tree_sends_sigterm_and_ends_once_the_targets_are_gone():
    clock, tree = Clock(), Tree()
    done = fired(tree.run(clock, 5))
    assert tree.sent == [signal.SIGTERM] and done == []
    clock.advance(0.1)
    tree.alive = False
    clock.advance(0.1)
    assert done == [None] and tree.killed == [] and clock.getDelayedCalls() == []


def test_stop_tree_kills_what_is_left_once_the_grace_period_has_passed():
    clock, tree = Clock(), Tree()
    done = fired(tree.run(clock, 2))
    clock.pump([0.1] * 19)
    assert done == [] and tree.killed == []
    clock.advance(0.1)
    assert tree.killed == [True] and done == ["killed"] and tree.sent == [signal.SIGTERM]


def test_stop_tree_looks_at_once_only_when_asked():
    """look_now (a child's group): a tree already gone ends synchronously; otherwise
    the first look is one interval (or the grace, if shorter) after the SIGTERM."""
    clock = Clock()
    assert fired(Tree(alive=False).run(clock, 5, look_now=True)) == [None]
    later = fired(Tree(alive=False).run(clock, 0))
    assert later == [] and [c.getTime() for c in clock.getDelayedCalls()] == [0]
    clock.advance(0)
    assert later == [None]


def test_every_grace_period_and_timeout_default_comes_from_the_timeouts_module():
    import inspect

    from nexusws.sessions import builtin, keeper, registry, script, timeouts
    from nexusws.sessions.instances import Service

    def default(function, name):
        return inspect.signature(function).parameters[name].default

    assert (timeouts.GRACE, timeouts.SCRIPT_STOP_TIMEOUT, timeouts.STOP_TIMEOUT) == (5.0, 30.0, 60.0)
    assert (timeouts.START_TIMEOUT, timeouts.APP_START_TIMEOUT, timeouts.POLL_INTERVAL) == (30.0, 120.0, 0.1)
    assert default(kill_processes, "grace") == default(launcher_module.Child.terminate, "grace") == 5.0
    assert default(keeper.SessionsService.__init__, "kill_grace") == default(
        script.RemoteServiceScript.terminate, "grace") == Service.grace == timeouts.GRACE
    assert Service.stop_timeout == timeouts.SCRIPT_STOP_TIMEOUT
    assert default(registry.Registry.__init__, "start_timeout") == timeouts.START_TIMEOUT
    assert default(registry.Registry.__init__, "stop_timeout") == timeouts.STOP_TIMEOUT
    assert default(registry.Registry.__init__, "timeout") == timeouts.RESERVATION_TIMEOUT == 300.0
    assert builtin.LocalApplication.start_timeout == timeouts.APP_START_TIMEOUT


# --- real reactor, real processes ---------------------------------------------------------


def marked(marker):
    """Pids of live processes whose environment carries C{marker}."""
    return with_environment(MARKER_VAR, marker)


def scenario(*args, timeout=60):
    """Run a proc_launch.py scenario; return its JSON; assert that it left no process behind."""
    marker = uuid.uuid4().hex
    env = dict(os.environ, **{MARKER_VAR: marker})
    p = subprocess.Popen([sys.executable, str(PROGRAMS / "proc_launch.py"), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        left = marked(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert p.returncode == 0, err
    assert left == [], f"processes left behind: {left}"
    return json.loads(out.splitlines()[-1])


def test_the_setsid_wrapper_starts_a_new_session_and_keeps_the_pid():
    p = subprocess.run([sys.executable, "-c", SETSID_WRAPPER, sys.executable, "-c",
                        "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"],
                       capture_output=True, text=True, timeout=30, check=False)
    pid, pgid, sid = map(int, p.stdout.split())
    assert pid == pgid == sid != os.getsid(0)


@pytest.mark.parametrize("tools", ["util-linux", "python"])
def test_programs_get_the_original_open_files_limit_back(monkeypatch, tools):
    monkeypatch.setattr(procs, "child_nofile", 100)
    if tools == "python":
        monkeypatch.setattr(wrapping, "SETSID", None)
    else:
        require(wrapping.SETSID and wrapping.PRLIMIT, "setsid and prlimit (util-linux)")
    env = dict(os.environ)
    args = wrapping.wrap(["sh", "-c", "ulimit -n; ulimit -Hn; env"], env)
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=20).stdout.splitlines()
    hard = str(resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    assert out[:2] == ["100", hard]
    assert not any(line.startswith(procs.CHILD_NOFILE_ENV + "=") for line in out)


def test_the_setsid_wrapper_exits_127_with_one_line_when_exec_fails():
    p = subprocess.run([sys.executable, "-c", SETSID_WRAPPER, "/nonexistent/program"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 127
    assert p.stderr == "cannot execute /nonexistent/program: No such file or directory\n"


def test_real_child_output_is_logged_by_line_and_stream_and_its_exit_code_reported():
    result = scenario("output")
    assert result["code"] == 3
    lines = output_lines(result["lines"], "talker")
    # Each stream keeps its order; the two pipes may interleave either way.
    assert [text for level, text in lines if level == "info"] == [
        "talker: first line",
        "talker: second half",
        "talker: bell%07 and %C3%A9",
        "talker: no newline at the end",
    ]
    assert [text for level, text in lines if level == "warn"] == ["talker: a warning"]


def test_real_child_runs_as_its_own_session_and_group_leader_and_sigterm_ends_it():
    """The Child is the program's supervisor: it leads the session, the program is
    its child in the same session and group; the program's SIGTERM is the Child's."""
    result = scenario("session")
    assert result["pgid"] == result["sid"] == result["pid"]
    assert result["pgid"] != result["my_pgid"] and result["sid"] != result["my_sid"]
    assert result["cmdline"] == "sleep 60"
    pid, ppid, pgid, sid = result["program"]
    assert ppid == pgid == sid == result["pid"] != pid
    assert result["start_time_matches"]
    assert result["code"] == -signal.SIGTERM
    assert result["seconds"] < 5


def test_real_child_ignoring_sigterm_is_killed_after_the_grace_period():
    result = scenario("ignore_term", "0.5")
    assert result["code"] == -signal.SIGKILL
    assert 0.5 <= result["seconds"] < 5
    assert ["warn", f"stubborn (pid {result['child'][0]}): still running 0.5s after SIGTERM; sending SIGKILL"] \
        in result["lines"]


def test_real_grandchild_in_the_group_that_ignores_sigterm_is_killed_with_the_group():
    result = scenario("group")
    # The supervisor waits for the grandchild, so the group's SIGKILL ends it too.
    assert result["code"] == -signal.SIGKILL
    assert result["seconds"] >= 0.5  # it waited out the grace period for the grandchild
    assert not procs.same_process(*result["grandchild"])


def test_real_daemonized_grandchild_stays_below_its_supervisor_and_ends_with_the_child():
    """A daemon (double fork, a session of its own) is re-parented to the program's
    supervisor, not to the gateway: it stays the Child's, and terminating the
    Child ends it (it used to escape to the gateway, belonging to no instance)."""
    result = scenario("daemon")
    assert result["daemon_ppid"] == result["child"][0]  # re-parented to the supervisor
    assert result["daemon_sid"] != result["child"][0]  # its own session: out of the group's reach
    assert not result["escaped_group_kill"], "the supervisor passed the SIGTERM on"
    assert result["ended_after"] < 1.0
    assert result["leftovers"] == []
    assert result["code"] == -signal.SIGTERM  # the program's end
    assert not procs.same_process(*result["daemon"])


def test_real_unsupervised_daemonized_grandchild_escapes_the_group_but_not_kill_processes():
    """Without a supervisor (util-linux setsid) a daemon escapes the group; a
    subreaper gateway still finds it among its descendants and ends it."""
    result = scenario("daemon", "unsupervised")
    assert result["subreaper"]
    assert result["daemon_ppid"] == result["me"]  # re-parented to the subreaper
    assert result["daemon_sid"] != result["child"][0]  # its own session: out of the group's reach
    assert result["escaped_group_kill"]
    assert 1.0 <= result["ended_after"] < 5  # ended fired after the linger though it holds stdout
    assert result["leftovers"] == [result["daemon"]]
    assert result["killed"] == []  # it took SIGTERM
    assert result["daemon"][0] in result["reaped"]
    assert not procs.same_process(*result["daemon"])


def test_real_spawn_of_a_missing_program_raises_file_not_found():
    assert "no-such-program-nexusws" in scenario("missing")["error"]


def test_real_wait_for_port_fires_when_a_listening_socket_accepts_and_closes_the_probe():
    result = scenario("port_open")
    assert result["seconds"] < 2 and result["probe_closed"]


def test_real_wait_for_port_fires_once_a_port_starts_listening_later():
    assert 0.5 <= scenario("port_late")["seconds"] < 3


def test_real_wait_for_port_on_a_closed_port_fails_with_start_timeout():
    result = scenario("port_closed", "0.5")
    assert result["error"] == f"port 127.0.0.1:{result['port']} did not accept connections within 0.5s"
    assert 0.5 <= result["seconds"] < 3


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_the_supervisor_ends_as_its_program_did_killed_by_any_signal(sig):
    """A program killed by SIGKILL (the end of every TERM, grace, KILL) made the supervisor
    print a traceback (no handler can be set for SIGKILL) instead of dying the same way."""
    program = [sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(sig)})"]
    done = subprocess.run([sys.executable, "-I", "-S", wrapping.SUPERVISOR],
                          input=wrapping.supervisor_command(program, dict(os.environ), None),
                          capture_output=True, timeout=30)
    assert done.returncode == -sig and b"Traceback" not in done.stderr, done.stderr
