"""Processes the bench starts (gateways, backend, the bench's own WS server) and their memory."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent


def cpu_seconds(pid):
    """User + system CPU seconds process C{pid} has used so far."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class Proc:
    """A child process in its own process group, its output in a log file."""

    running = []  # every Proc alive, for stop_all

    def __init__(self, name, argv, log_path, ready=None, timeout=30.0, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # open while the process runs
        self.p = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
        self.pid = self.p.pid
        Proc.running.append(self)
        self.match = None
        if ready is not None:
            self.match = self.wait_log(ready, timeout)

    def wait_log(self, pattern, timeout=30.0):
        """Wait for C{pattern} (a regex) in the log; return its match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = rx.search(text)
            if m:
                return m
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.p.returncode}): {text[-2000:]}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name}: no {pattern!r} in its log within {timeout}s")

    def descendants(self):
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout=15.0):
        """SIGTERM to the group, then SIGKILL; also any descendant in another group."""
        if self in Proc.running:
            Proc.running.remove(self)
        kids = self.descendants()
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(5)
        for kid in kids:  # started by this process, perhaps in groups of their own
            try:
                kid.kill()
            except psutil.Error:
                pass
        self._log.close()
        return self.p.returncode

    @classmethod
    def stop_all(cls):
        for proc in list(reversed(cls.running)):
            try:
                proc.stop(timeout=5)
            except Exception as e:  # cleanup must go on  # recorded; the bench goes on
                print(f"bench: stopping {proc.name}: {e}", file=sys.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc is not None and proc.p.poll() is not None:
                return False
            time.sleep(0.02)
    return False


def start_backend(logdir):
    proc = Proc("backend", [sys.executable, BENCH / "backend.py"], logdir / "backend.log",
                ready=r"listening on 127\.0\.0\.1:(\d+)")
    proc.port = int(proc.match.group(1))
    return proc


def start_rfb_backend(logdir, name="rfb-backend"):
    """bench/backend.py --rfb: the RFB server of figure 10."""
    proc = Proc(name, [sys.executable, BENCH / "backend.py", "--rfb"], logdir / f"{name}.log",
                ready=r"rfb backend listening on 127\.0\.0\.1:(\d+)")
    proc.port = int(proc.match.group(1))
    return proc


def start_wsmini(logdir, relay_to=None, name=None):
    """bench/wsmini.py: the client's ceiling, or (C{relay_to} a backend port) the minimal relay."""
    name = name or ("wsmini" if relay_to is None else "wsmini-relay")
    extra = [] if relay_to is None else ["--relay", str(relay_to)]
    proc = Proc(name, [sys.executable, BENCH / "wsmini.py", *extra], logdir / f"{name}.log",
                ready=r"listening on 127\.0\.0\.1:(\d+)", cwd=BENCH)
    proc.port = int(proc.match.group(1))
    return proc


def nexusws_argv(backend_port, extra=()):
    return [BIN / "nexus-websocketserver", "--ws_listen", "tcp:0:interface=127.0.0.1",
            "--client_hostname", "127.0.0.1", "--client_port", str(backend_port),
            "--max_tunnels", "0", "--max_tunnels_per_address", "0", *extra]


def find_gateway(proc, timeout=10.0):
    """The pid of the nexusws process under a wrapper (py-spy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kid in proc.descendants():
            try:
                if "nexus-websocketserver" in " ".join(kid.cmdline()):
                    return kid.pid
            except psutil.Error:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: no nexus-websocketserver under the wrapper")


def start_nexusws(backend_port, logdir, name="nexusws", extra=(), wrap=()):
    """nexusws in basic mode; C{wrap}: a command to run it under (py-spy record ... --)."""
    argv = nexusws_argv(backend_port, extra)
    if wrap:  # the console script run by this Python, under the wrapper
        argv = [*wrap, sys.executable, *argv]
    proc = Proc(name, argv, logdir / f"{name}.log",
                ready=r"--ws_listen listening on ws://127\.0\.0\.1:(\d+)/")
    proc.port = int(proc.match.group(1))
    proc.kind = "nexusws"
    proc.gateway_pid = find_gateway(proc) if wrap else proc.pid
    return proc


def start_websockify(backend_port, logdir, name="websockify", tries=10):
    """websockify 0.13 (it cannot report a port-0 bind: pick one, retry if taken)."""
    for _attempt in range(tries):
        port = free_port()
        proc = Proc(name, [BIN / "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{backend_port}"],
                    logdir / f"{name}.log")
        if wait_port(port, proc=proc):
            proc.port = port
            proc.kind = "websockify"
            proc.gateway_pid = proc.pid
            return proc
        proc.stop()
    raise RuntimeError("websockify did not start")


def tree_cpu():
    """CPU seconds of this process and every descendant, the reaped ones included."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for kid in psutil.Process().children(recursive=True):
        try:
            c = kid.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


class ForeignLoad:
    """How much CPU processes other than the bench's own used from now on: a figure
    measured while something else ran (a test suite, a build) is noisy, and says so."""

    def __init__(self):
        self.t0, self.busy0, self.ours0 = time.monotonic(), self._busy(), tree_cpu()

    @staticmethod
    def _busy():
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)

    def share(self):
        """The others' CPU over the wall time since, as a share of all cores (0 to 1)."""
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        foreign = (self._busy() - self.busy0) - (tree_cpu() - self.ours0)
        return max(0.0, foreign / wall) if wall > 0 else 0.0


def smaps(pid):
    """(Rss, Pss) of one process in bytes, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


def tree_memory(pid):
    """(Rss, Pss, processes) summed over C{pid} and its descendants (websockify forks)."""
    pids = [pid]
    try:
        pids += [k.pid for k in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        pass
    rss = pss = 0
    for p in pids:
        r, s = smaps(p)
        rss += r
        pss += s
    return rss, pss, len(pids)
