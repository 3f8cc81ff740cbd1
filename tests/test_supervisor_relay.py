"""nexusws.sessions.supervisor relaying its program's output (C{"relay": true}).

The supervisor runs here as the launcher runs it (C{python -I -S supervisor.py},
its command on stdin, signals at their defaults, its stdout and stderr pipes
that the test reads as the gateway would). A relayed program writes to pipes of
the supervisor's (checked by each test through the pipe its fd 1 is), so that
when the reader of the supervisor's output goes away (a gateway stopped with
C{--keep_sessions} leaves its sessions running) the program never meets a broken
pipe; every process a test starts carries a marker, and none may be left after it.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from nexusws.sessions import wrapping
from support.sessions import kill_all, with_environment

MARKER_VAR = "NEXUSWS_RELAY_TEST_MARKER"
PY = sys.executable


@pytest.fixture
def marker():
    """A marker for the processes of one test; whatever still carries it after the test is
    killed, and fails it."""
    value = uuid.uuid4().hex
    yield value
    left = kill_all(marked(value))
    assert left == [], f"processes left behind: {left}"


def marked(marker):
    """Pids of live processes whose environment carries C{marker}."""
    return with_environment(MARKER_VAR, marker)


def supervise(argv, marker, relay=True):
    """A supervisor started as the launcher starts one, given C{argv} to run; its Popen."""
    env = dict(os.environ, **{MARKER_VAR: marker})
    proc = subprocess.Popen([PY, "-I", "-S", wrapping.SUPERVISOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, restore_signals=True)
    proc.stdin.write(wrapping.supervisor_command(argv, env, None, relay=relay))
    proc.stdin.close()
    proc.stdin = None  # for communicate()
    return proc


def pipe_of(f):
    """What the pipe C{f} is an end of is called in /proc (C{pipe:[inode]})."""
    return os.readlink(f"/proc/self/fd/{f.fileno()}")


def python(source, *args):
    return [PY, "-c", textwrap.dedent(source), *args]


def gone(proc):
    """The reader of the supervisor's output goes away, as a stopped gateway's pipes do."""
    proc.stdout.close()
    proc.stderr.close()


def test_a_relay_command_is_what_the_launcher_sends_when_relaying_output():
    plain = json.loads(wrapping.supervisor_command(["sleep", "1"], {}, "/"))
    relayed = json.loads(wrapping.supervisor_command(["sleep", "1"], {}, "/", relay=True))
    assert "relay" not in plain
    assert relayed == {**plain, "relay": True}


# Reports the pipe its stdout is, writes to both streams, then ends as argv[1] says.
ENDING = """
    import os, signal, sys
    print("fd1", os.readlink("/proc/self/fd/1"), flush=True)
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    sys.stdout.write("no newline at the end")
    sys.stdout.flush()
    how = sys.argv[1]
    if how.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, how))
    sys.exit(int(how))
"""


@pytest.mark.parametrize("how, code", [("0", 0), ("3", 3), ("SIGTERM", -signal.SIGTERM),
                                       ("SIGKILL", -signal.SIGKILL)])
def test_relayed_output_reaches_the_supervisors_stdout_and_stderr_and_it_ends_as_the_program(
        marker, how, code):
    proc = supervise(python(ENDING, how), marker)
    ours = pipe_of(proc.stdout)
    out, err = proc.communicate(timeout=30)
    first, _, rest = out.decode().partition("\n")
    assert first.startswith("fd1 pipe:[") and first != f"fd1 {ours}", "the program writes to a pipe of its own"
    assert rest == "to stdout\nno newline at the end"
    assert err == b"to stderr\n"
    assert proc.returncode == code


# Prints on both streams for about a second, then records how many lines it printed.
PRINTER = """
    import sys, time
    print("started", flush=True)
    n, deadline = 0, time.monotonic() + 1
    while time.monotonic() < deadline:
        print("line", n, flush=True)
        print("warning", n, file=sys.stderr, flush=True)
        n += 1
        time.sleep(0.01)
    with open(sys.argv[1], "w") as f:
        f.write(str(n))
"""

# The same in a shell, counting the writes that failed (EPIPE: echo goes on).
SHELL_PRINTER = """
    echo started
    i=0 fails=0
    while [ $i -lt 50 ]; do
        echo line $i || fails=$((fails + 1))
        echo warning $i >&2 || fails=$((fails + 1))
        sleep 0.02
        i=$((i + 1))
    done
    echo $fails > "$1"
"""


@pytest.mark.parametrize("kind", ["python", "shell"])
def test_a_program_printing_after_its_reader_went_away_never_sees_a_broken_pipe(marker, tmp_path, kind):
    """A stopped gateway (C{--keep_sessions}) closed the supervisor's pipes: Python's print
    raised BrokenPipeError (exit 1, or 120 at the final flush), a shell's echo failed."""
    record = tmp_path / "record"
    if kind == "python":
        argv = python(PRINTER, str(record))
    else:
        argv = ["sh", "-c", textwrap.dedent(SHELL_PRINTER), "sh", str(record)]
    proc = supervise(argv, marker)
    assert proc.stdout.readline() == b"started\n"
    gone(proc)
    assert proc.wait(30) == 0, "the program printed on to its end and exited 0"
    if kind == "python":
        assert int(record.read_text()) > 10
    else:
        assert record.read_text() == "0\n", "no echo failed"


# Double-forks a daemon (a session of its own) that keeps the output open and prints on
# for half a second after the program has exited 5; it records its parent and its end.
DAEMON = """
    import os, sys, time
    print("program", flush=True)
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        middle = os.getpid()
        if os.fork() == 0:
            os.close(r)
            os.write(w, b"x")
            os.close(w)
            while os.getppid() == middle:
                time.sleep(0.01)
            print("daemon fd1", os.readlink("/proc/self/fd/1"), flush=True)
            for n in range(25):
                print("daemon line", n, flush=True)
                time.sleep(0.02)
            with open(sys.argv[1], "w") as f:
                f.write(f"{os.getpid()} {os.getppid()}")
            print("daemon done", flush=True)
            os._exit(0)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    sys.exit(5)
"""


@pytest.mark.parametrize("reader", ["kept", "gone"])
def test_the_supervisor_waits_for_a_daemon_holding_the_output_and_relays_it(marker, tmp_path, reader):
    record = tmp_path / "record"
    proc = supervise(python(DAEMON, str(record)), marker)
    ours = pipe_of(proc.stdout)
    assert proc.stdout.readline() == b"program\n"
    if reader == "gone":
        gone(proc)
        code = proc.wait(30)
    else:
        out, err = proc.communicate(timeout=30)
        code = proc.returncode
    # It ended after the daemon (which wrote its record, then its last line, then exited).
    daemon, parent = map(int, record.read_text().split())
    assert parent == proc.pid, "the daemon was re-parented to the supervisor (subreaper)"
    assert not os.path.exists(f"/proc/{daemon}"), "the supervisor reaped the daemon"
    assert code == 5, "the supervisor ends as the program did, not as the daemon"
    if reader == "kept":
        lines = out.decode().splitlines()
        assert lines[0].startswith("daemon fd1 pipe:[") and lines[0] != f"daemon fd1 {ours}"
        assert lines[1:] == [f"daemon line {n}" for n in range(25)] + ["daemon done"]
        assert err == b""


# Writes SIZE bytes to stdout and a fifth of them to stderr, interleaved, in uneven pieces.
LARGE = """
    import os, random, sys
    size = int(sys.argv[1])
    out, err = random.Random(1).randbytes(size), random.Random(2).randbytes(size // 5)
    print("fd1", os.readlink("/proc/self/fd/1"), file=sys.stderr, flush=True)
    pieces, i, j = random.Random(3), 0, 0
    while i < len(out) or j < len(err):
        n = pieces.randrange(1, 200_000)
        sys.stdout.buffer.write(out[i:i + n])
        sys.stdout.flush()
        i += n
        sys.stderr.buffer.write(err[j:j + n // 5])
        sys.stderr.flush()
        j += n // 5
"""


def test_large_output_is_relayed_intact(marker):
    size = 10 * 1024 * 1024
    proc = supervise(python(LARGE, str(size)), marker)
    ours = pipe_of(proc.stdout)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    first, _, err = err.partition(b"\n")
    assert first.startswith(b"fd1 pipe:[") and first.decode() != f"fd1 {ours}"
    assert (len(out), hashlib.sha256(out).hexdigest()) == (
        size, hashlib.sha256(random.Random(1).randbytes(size)).hexdigest())
    assert (len(err), hashlib.sha256(err).hexdigest()) == (
        size // 5, hashlib.sha256(random.Random(2).randbytes(size // 5)).hexdigest())


# The program and a child of its in a session of their own (out of the group's reach) each
# print a line on SIGTERM, record it in the directory argv[1] and exit 0.
TERMINATED = """
    import os, signal, subprocess, sys, time

    def on_term(name):
        def handler(number, frame):
            print(name, "got SIGTERM", flush=True)
            with open(os.path.join(sys.argv[1], name), "w") as f:
                f.write("SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, handler)

    if sys.argv[2:] == ["daemon"]:
        on_term("daemon")
    else:
        on_term("program")
        subprocess.Popen([sys.executable, sys.argv[0], sys.argv[1], "daemon"], start_new_session=True)
    print("ready", sys.argv[2:] and sys.argv[2] or "program", os.readlink("/proc/self/fd/1"), flush=True)
    while True:
        time.sleep(1)
"""


@pytest.mark.parametrize("reader", ["kept", "gone"])
def test_sigterm_to_the_relaying_supervisors_group_reaches_the_program_and_its_daemon(
        marker, tmp_path, reader):
    """As L{nexusws.sessions.launcher.Child.terminate} does (here: a kept session ended after
    an adoption, its reader gone): the group's SIGTERM reaches the program, the supervisor
    passes it on to the daemon; what they print then does not kill them."""
    script, records = tmp_path / "terminated.py", tmp_path / "records"
    script.write_text(textwrap.dedent(TERMINATED))
    records.mkdir()
    proc = supervise([PY, str(script), str(records)], marker)
    ours = pipe_of(proc.stdout)
    ready = sorted(proc.stdout.readline().decode().split() for _ in range(2))
    assert [line[:2] for line in ready] == [["ready", "daemon"], ["ready", "program"]]
    assert all(line[2].startswith("pipe:[") and line[2] != ours for line in ready), ready
    if reader == "gone":
        gone(proc)
    os.killpg(proc.pid, signal.SIGTERM)
    if reader == "gone":
        assert proc.wait(30) == 0
    else:
        out, _ = proc.communicate(timeout=30)
        assert sorted(out.decode().splitlines()) == ["daemon got SIGTERM", "program got SIGTERM"]
        assert proc.returncode == 0
    assert {p.name: p.read_text() for p in records.iterdir()} == {"program": "SIGTERM", "daemon": "SIGTERM"}


# A launcher relaying output under the real reactor: what the program writes is logged
# as without relaying (the JSON of the exit code, the gateway's pipe, the lines logged).
LAUNCHER = """
    import json, os, sys
    from twisted.internet import defer, reactor, task
    from twisted.logger import formatEvent, globalLogPublisher
    from nexusws.sessions.launcher import Launcher

    lines = []
    globalLogPublisher.addObserver(lambda event: lines.append(
        [event["log_level"].name, formatEvent(event)])
        if event.get("log_namespace") == "nexusws.launcher" else None)

    async def main():
        launcher = Launcher(reactor, supervise=True, relay_output=True)
        launcher.prepare()
        child = launcher.spawn([sys.executable, "-c", sys.argv[1]], label="talker")
        ours = os.readlink(f"/proc/self/fd/{child._transport.pipes[1].fileno()}")
        code = await child.ended
        await launcher.close()
        print(json.dumps({"code": code, "ours": ours, "lines": lines}))

    task.react(lambda _: defer.ensureDeferred(main()))
"""

TALKER = """
import os, sys
print("fd1", os.readlink("/proc/self/fd/1"))
print("first line")
print("a warning", file=sys.stderr)
sys.stdout.write("no newline at the end")
sys.exit(4)
"""


def test_a_launcher_relaying_output_logs_it_as_without_relaying(marker):
    env = dict(os.environ, **{MARKER_VAR: marker})
    done = subprocess.run([PY, "-c", textwrap.dedent(LAUNCHER), TALKER], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 4
    lines = [(level, text) for level, text in result["lines"] if text.startswith("talker: ")]
    (fd1,) = [text for level, text in lines if text.startswith("talker: fd1 ")]
    assert fd1.startswith("talker: fd1 pipe:[") and fd1 != f"talker: fd1 {result['ours']}"
    # Each stream keeps its order; the two pipes may interleave either way.
    assert [text for level, text in lines if level == "info"] == [
        fd1, "talker: first line", "talker: no newline at the end"]
    assert [text for level, text in lines if level == "warn"] == ["talker: a warning"]
