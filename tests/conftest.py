"""Shared fixtures: real gateway processes on loopback, port 0 only."""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

from support.data_path import data_path  # noqa: F401 (a fixture: @both_paths in test_bridge, test_pipes)
from support.pipes import pair  # noqa: F401 (a fixture: test_pipes, test_internals)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / ".artifacts"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI") == "true"

LISTEN_RE = re.compile(r"(--ws_listen|--http_listen) listening on (\w+)://([^/]+):(\d+)/")
#: A gateway log line that is an unhandled error: a failure, an error or critical
#: event, a traceback. Any of these fails the test that ran the gateway.
ERROR_LINE_RE = re.compile(r"#(?:error|critical)\]|Traceback \(most recent call last\)|Unhandled Error")


def require(condition, what):
    """Skip loudly when a real component is missing; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide {what}")
    pytest.skip(f"needs {what}")


class Gateway:
    """A running nexusws process whose log is collected line by line."""

    def __init__(self, args, via="cli", env=None, cwd=None):
        if via == "cli":
            cmd = [str(BIN / "nexus-websocketserver"), *args]
        elif via == "twistd":
            cmd = [str(BIN / "twistd"), "-n", "--pidfile=", "nexusws", *args]
        else:
            cmd = [*via, *args]  # any other command line that runs a gateway
        full_env = dict(os.environ)
        full_env.pop(
            "WEBSOCKETSERVER_SECURITY_TOKEN", None
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ws_port = self.http_port = None
        self.ws_scheme = self.http_scheme = None

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def log(self):
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=15.0):
        """Wait until a log line matches C{pattern}; return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log line matching {pattern!r} within {timeout}s; log:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def wait_listening(self, http=False):
        m = self.wait_for(r"--ws_listen listening on")
        self._note(m)
        if http:
            self._note(self.wait_for(r"--http_listen listening on"))
        return self

    def _note(self, m):
        m = LISTEN_RE.search(m.string)
        if m.group(1) == "--ws_listen":
            self.ws_scheme, self.ws_port = m.group(2), int(m.group(4))
        else:
            self.http_scheme, self.http_port = m.group(2), int(m.group(4))

    @property
    def ws_url(self):
        return f"{self.ws_scheme}://127.0.0.1:{self.ws_port}"

    @property
    def http_url(self):
        return f"{self.http_scheme}://127.0.0.1:{self.http_port}"

    def error_lines(self):
        """The log lines that report an unhandled error (L{ERROR_LINE_RE}), each with
        the continuation lines (a traceback) that follow it."""
        found, within, program = [], False, None
        with self._cond:
            for line in self.lines:
                if program is not None and program in line:  # a session program's traceback goes on
                    found[-1] += "\n" + line
                    continue
                program = None
                if ERROR_LINE_RE.search(line) and not (within and line.startswith("\t")):
                    found.append(line)
                    within = True
                    # A session program's output comes a line at a time ("] echo[0] python3: ..."):
                    # the lines after its "Traceback" line with the same prefix are the traceback.
                    head, sep, _ = line.partition(" Traceback (most recent call last)")
                    program = head.rpartition("] ")[2] if sep and "#warn] " in head else None
                elif within and line.startswith("\t"):
                    found[-1] += "\n" + line
                else:
                    within = False
        return found

    def rss_kib(self):
        return _status_kib(self.proc.pid, "VmRSS")

    def hwm_kib(self):
        return _status_kib(self.proc.pid, "VmHWM")

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """Signal the gateway and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # its group, and what runs below it in sessions of their own
            raise AssertionError(
                f"gateway did not exit within {timeout}s after {sig}:\n{self.log}"
            ) from None
        self._reader.join(5)
        return code

    def kill(self):
        """SIGKILL the gateway and everything below it: its sessions run in sessions
        (and process groups) of their own, which the gateway's group does not reach,
        and a killed gateway ends nothing (a restart on its state file would)."""
        if self.proc.poll() is None:
            from nexusws.sessions import procs

            below = procs.descendants(self.proc.pid)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


@pytest.fixture
def gateway(request):
    """Start gateways with C{gateway(args, via=...)}; all are killed at teardown.

    A gateway whose log shows an unhandled error (L{ERROR_LINE_RE}) fails the
    test, unless the test is marked C{errors_expected} (it provokes one on purpose).
    """
    started = []

    def start(args, via="cli", env=None, cwd=None, http=False, wait=True):
        gw = Gateway(args, via=via, env=env, cwd=cwd)
        started.append(gw)
        if wait:
            gw.wait_listening(http=http)
        return gw

    yield start
    for gw in started:
        gw.kill()
    if request.node.get_closest_marker("errors_expected") is None:
        errors = [line for gw in started for line in gw.error_lines()]
        if errors:
            pytest.fail("unhandled error in a gateway's log:\n" + "\n".join(errors[:20]), pytrace=False)


@pytest.fixture(autouse=True)
def no_unhandled_errors(request):
    """Fail a test during which this process logged a failure or an error/critical
    event (an unhandled error in a Deferred, a traceback from a callback...),
    unless it is marked C{errors_expected}."""
    from twisted.logger import LogLevel, formatEvent

    seen = []

    def observe(event):
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield
    globalLogPublisher.removeObserver(observe)
    if seen and request.node.get_closest_marker("errors_expected") is None:
        text = []
        for event in seen[:10]:
            failure = event.get("log_failure")
            text.append(formatEvent(event) + ("\n" + failure.getTraceback() if failure is not None else ""))
        pytest.fail("unhandled error logged during the test:\n" + "\n".join(text), pytrace=False)


async def echo_stream(reader, writer, writers, greeting=b""):
    """Send C{greeting}, then echo until EOF; C{writers} holds the writer meanwhile."""
    writers.add(writer)
    try:
        writer.write(greeting)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writers.discard(writer)
        writer.close()


@pytest.fixture
def echo_port():
    """A loopback TCP echo server (asyncio, in a thread, for synchronous tests); yields its port."""
    loop = asyncio.new_event_loop()
    writers = set()

    async def echo(reader, writer):
        await echo_stream(reader, writer, writers)

    server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]

    async def stop():
        server.close()
        for writer in list(writers):
            writer.close()
        await asyncio.sleep(0.05)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture
def events():
    """Collect the log events emitted during a test."""
    collected = []
    globalLogPublisher.addObserver(collected.append)
    yield collected
    globalLogPublisher.removeObserver(collected.append)


@pytest.fixture
def marker():
    """A unique argv marker for this test's session processes; leftovers are killed after."""
    from support.sessions import kill_marked, new_marker

    value = new_marker()
    yield value
    kill_marked(value)


@pytest.fixture
def popen():
    """Start processes with C{popen(argv, **kw)}; whatever is left is killed and waited for."""
    from nexusws.sessions import procs

    started = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            for pid in procs.descendants(p.pid):  # a shell's background children too
                os.kill(pid, signal.SIGKILL)
            p.kill()
        p.wait(5)
        if p.stdout is not None:
            p.stdout.close()


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def have(program):
    return shutil.which(program) is not None


NODE_DIR = ROOT / "tests" / ".node"
#: npm packages the tests use, at exact versions: Node's ws client, and noVNC 1.7 (its RFB core
#: for the browser tests, its DES for VNC authentication in Node).
NODE_PACKAGES = {"ws": "ws@8.23.1", "@novnc/novnc": "@novnc/novnc@1.7.0"}


@pytest.fixture(scope="session")
def node_modules():
    """tests/.node/node_modules with L{NODE_PACKAGES}, installed once from the npm registry (git-ignored)."""
    require(have("node") and have("npm"), "node and npm")
    modules = NODE_DIR / "node_modules"
    if not all((modules / name / "package.json").is_file() for name in NODE_PACKAGES):
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
             *NODE_PACKAGES.values()],
            check=True, capture_output=True, timeout=300,
        )
    return modules


@pytest.fixture
def desktop():
    """Start VNC desktops (L{support.desktop.Desktop}) with C{desktop(password=..., size=...)}; all stop at teardown."""
    from support.desktop import Desktop

    started = []

    def start(**kw):
        d = Desktop(**kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm (L{support.slurm}), once per test session."""
    from support import slurm

    require(slurm.available(), slurm.NEEDS)
    cluster = slurm.start()
    yield cluster
    slurm.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The test Slurm; a test must end every job it submitted."""
    yield slurm_cluster
    left = slurm_cluster.live_jobs()
    for job in left:
        slurm_cluster.run("scancel", job, check=False)
    assert not left, f"jobs left behind: {left}"
