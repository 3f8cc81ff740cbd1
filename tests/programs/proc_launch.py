"""Real-reactor scenarios for nexusws.sessions.launcher; run as `python proc_launch.py SCENARIO [ARGS]`.

Each scenario runs under the real reactor and prints one JSON object as its
last stdout line; tests/test_launcher.py asserts on it and checks /proc itself.
"""

import json
import os
import signal
import socket
import sys
import time

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher

from nexusws.sessions import procs
from nexusws.sessions.launcher import Launcher
from nexusws.sessions.ports import StartTimeout, wait_for_port
from nexusws.sessions.stopping import kill_processes

LINES = []


def _collect(event):
    if event.get("log_namespace") == "nexusws.launcher":
        LINES.append([event["log_level"].name, formatEvent(event)])


globalLogPublisher.addObserver(_collect)

PY = sys.executable

IGNORE_TERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)

# Forks a grandchild in the same process group that ignores SIGTERM, then waits.
GROUP = (
    "import os, signal, sys, time\n"
    "r, w = os.pipe()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    os.write(w, b'ready')\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "os.read(r, 5)\n"
    "print(pid, flush=True)\n"
    "time.sleep(60)\n"
)

# Daemonizes a grandchild the classic way: fork, setsid, fork again, the middle
# process exits. The daemon keeps stdout open (it holds the pipe) and sleeps.
DAEMON = (
    "import os, sys, time\n"
    "r, w = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    pid = os.fork()\n"
    "    if pid:\n"
    "        os.write(w, str(pid).encode())\n"
    "        os._exit(0)\n"
    "    time.sleep(60)\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "print(int(os.read(r, 100)), flush=True)\n"
    "time.sleep(60)\n"
)

OUTPUT = (
    "import sys\n"
    "sys.stdout.write('first line\\nsecond ')\n"
    "sys.stdout.flush()\n"
    "sys.stdout.write('half\\r\\n')\n"
    "sys.stderr.write('a warning\\n')\n"
    "sys.stdout.write('bell\\x07 and \\xe9\\n')\n"
    "sys.stdout.write('no newline at the end')\n"
    "sys.exit(3)\n"
)


def _wait_line(reactor, label):
    """A Deferred firing with the first stdout line logged for C{label}."""
    d = defer.Deferred()
    prefix = f"{label}: "

    def poll():
        for level, text in LINES:
            if level == "info" and text.startswith(prefix):
                loop.stop()
                d.callback(text[len(prefix):])
                return

    loop = task.LoopingCall(poll)
    loop.clock = reactor
    loop.start(0.02)
    return d


def _identity(pid):
    return [pid, procs.start_time(pid)]


async def output(reactor):
    child = Launcher(reactor).spawn([PY, "-c", OUTPUT], label="talker")
    code = await child.ended
    return {"code": code, "lines": LINES}


async def session(reactor):
    launcher = Launcher(reactor)
    child = launcher.spawn(["sleep", "60"])

    def program():  # the supervisor's child (see nexusws.sessions.supervisor)
        table = procs.all_processes()
        found = [table[pid] for pid in procs.descendants(child.pid, table)]
        return found[0] if found and found[0].cmdline.startswith("sleep") else None

    await _poll_until(reactor, lambda: program() is not None)
    entry, program = procs.info(child.pid), program()
    started = reactor.seconds()
    await child.terminate(grace=10)
    return {
        "pid": child.pid,
        "pgid": entry.pgid,
        "sid": entry.sid,
        "program": [program.pid, program.ppid, program.pgid, program.sid],
        "my_pgid": os.getpgid(0),
        "my_sid": os.getsid(0),
        "cmdline": program.cmdline,
        "start_time_matches": child.start_time == entry.start_time,
        "code": child.exit_code,
        "seconds": reactor.seconds() - started,
        "lines": LINES,
    }


async def ignore_term(reactor):
    grace = float(sys.argv[2])
    child = Launcher(reactor).spawn([PY, "-c", IGNORE_TERM], label="stubborn")
    await _wait_line(reactor, "stubborn")
    started = reactor.seconds()
    await child.terminate(grace=grace)
    return {"child": [child.pid, child.start_time], "code": child.exit_code,
            "seconds": reactor.seconds() - started, "lines": LINES}


async def group(reactor):
    launcher = Launcher(reactor)
    child = launcher.spawn([PY, "-c", GROUP], label="parent")
    grandchild = int(await _wait_line(reactor, "parent"))
    grand = _identity(grandchild)
    started = reactor.seconds()
    await child.terminate(grace=0.5)
    await _poll_until(reactor, lambda: not procs.same_process(*grand))
    return {"child": [child.pid, child.start_time], "grandchild": grand,
            "grandchild_pgid": child.pid, "code": child.exit_code,
            "seconds": reactor.seconds() - started}


async def daemon(reactor):
    subreaper = procs.become_subreaper()
    launcher = Launcher(reactor, supervise=sys.argv[2:] != ["unsupervised"])
    child = launcher.spawn([PY, "-c", DAEMON], label="daemonizer")
    daemon_pid = int(await _wait_line(reactor, "daemonizer"))
    daemon_id = _identity(daemon_pid)
    # The middle process (the daemon's session leader) exits: the daemon gets a new parent.
    await _poll_until(reactor, lambda: procs.info(daemon_pid).ppid != procs.info(daemon_pid).sid)
    daemon_info = procs.info(daemon_pid)
    started = reactor.seconds()
    await child.terminate(grace=2)
    ended_after = reactor.seconds() - started
    escaped = procs.same_process(*daemon_id)
    # What the gateway does: end everything still below it.
    table = procs.all_processes()
    leftovers = [[pid, table[pid].start_time] for pid in procs.descendants(os.getpid(), table)
                 if procs.is_alive(table[pid]) and pid not in launcher.spares()]
    killed = await kill_processes(reactor, leftovers, grace=2)
    await _poll_until(reactor, lambda: procs.info(daemon_pid) is None or procs.info(daemon_pid).state == "Z")
    reaped = procs.reap_orphans([])
    return {
        "subreaper": subreaper,
        "child": [child.pid, child.start_time],
        "daemon": daemon_id,
        "daemon_ppid": daemon_info.ppid,
        "daemon_sid": daemon_info.sid,
        "me": os.getpid(),
        "escaped_group_kill": escaped,
        "ended_after": ended_after,
        "leftovers": leftovers,
        "killed": killed,
        "reaped": reaped,
        "code": child.exit_code,
    }


async def missing(reactor):
    try:
        Launcher(reactor).spawn(["no-such-program-nexusws"])
    except FileNotFoundError as e:
        return {"error": str(e)}
    return {"error": None}


async def port_open(reactor):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    started = time.monotonic()
    await wait_for_port(reactor, "127.0.0.1", port, timeout=5)
    seconds = time.monotonic() - started
    await task.deferLater(reactor, 0.2)  # lets the reactor close the probe
    server.settimeout(5)
    accepted = server.accept()[0]  # the probe connected for real...
    accepted.settimeout(5)
    eof = accepted.recv(10) == b""  # ...and closed its connection at once
    return {"seconds": seconds, "probe_closed": eof}


async def port_late(reactor):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    reactor.callLater(0.5, server.listen, 5)  # bound but not yet accepting: refused
    started = time.monotonic()
    await wait_for_port(reactor, "127.0.0.1", port, timeout=5, interval=0.05)
    return {"seconds": time.monotonic() - started}


async def port_closed(reactor):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started = time.monotonic()
    try:
        await wait_for_port(reactor, "127.0.0.1", port, timeout=float(sys.argv[2]))
    except StartTimeout as e:
        return {"error": str(e), "port": port, "seconds": time.monotonic() - started}
    return {"error": None}


async def _poll_until(reactor, condition, timeout=10.0):
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.02)


def main(reactor):
    scenario = globals()[sys.argv[1]]

    async def run():
        result = await scenario(reactor)
        print(json.dumps(result), flush=True)

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    task.react(main)
