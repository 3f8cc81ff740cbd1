"""A stand-in for EnVision: takes its -vnc argument and serves a real X desktop over VNC.

    fake_envision.py -vnc "vnc://?rfb_port=P&use_auth=0"
    fake_envision.py -vnc "vnc://?rfb_port=P&primary_password=SECRET"

It starts Xvfb on a free display (-displayfd: the X server picks it, no race;
-nolisten tcp; a fresh MIT-MAGIC-COOKIE-1 in a 0600 file, removed once Xvfb,
xsetroot and x11vnc have read it), paints the root window one colour with
xsetroot (FAKE_ENVISION_COLOUR, default "#3a6ea5", tests/support/desktop.py's
COLOUR), then runs x11vnc on 127.0.0.1:P, without a password or with SECRET.
Once x11vnc accepts connections it prints one line:

    fake fake_envision.py: X display :N, VNC on 127.0.0.1:P, auth none

It exits (status 1) as soon as Xvfb or x11vnc dies, taking the other with
it; on SIGTERM, SIGINT or SIGHUP it stops both and exits 0. Its children stay
in its process group (a signal to the group reaches them) and get SIGTERM
should it be killed outright (PR_SET_PDEATHSIG). Environment:
FAKE_ENVISION_SIZE (default 1024x768). Standard library only.
"""

import ctypes
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from urllib.parse import parse_qs, urlsplit

NAME = os.path.basename(sys.argv[0])
START_TIMEOUT = 20.0
PROGRAMS = ("Xvfb", "x11vnc", "xsetroot")


class Stop(Exception):
    """A signal asked us to stop."""


def fail(message):
    sys.exit(f"{NAME}: {message}")


def parse(argv):
    """(port, password or None) from C{-vnc vnc://?rfb_port=P&...}; exits with one line if bad."""
    if len(argv) != 2 or argv[0] != "-vnc":
        fail(f'usage: {NAME} -vnc "vnc://?rfb_port=P&use_auth=0" (or &primary_password=SECRET); '
             f"got {argv}")
    url = urlsplit(argv[1])
    query = parse_qs(url.query)
    if url.scheme != "vnc" or "rfb_port" not in query:
        fail(f"bad -vnc URL {argv[1]!r}: it must be vnc://?rfb_port=P&...")
    try:
        port = int(query["rfb_port"][0])
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        fail(f"bad rfb_port {query['rfb_port'][0]!r} in {argv[1]!r}")
    return port, query.get("primary_password", [None])[0] or None


def xauthority(cookie):
    """An Xauthority file's bytes: C{cookie} for any display on any host (FamilyWild)."""
    def field(data):
        return struct.pack(">H", len(data)) + data
    return struct.pack(">H", 0xFFFF) + field(b"") + field(b"") + field(b"MIT-MAGIC-COOKIE-1") + field(cookie)


def _die_with_parent():
    """In the child: SIGTERM it when this process dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Desktop:
    def __init__(self, port, password):
        self.port, self.password = port, password
        self.children = {}  # pid -> (name, Popen)
        self.auth = None

    def spawn(self, name, argv, **kw):
        # Their output goes to stderr: stdout is for our one line (x11vnc prints PORT=P there).
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, preexec_fn=_die_with_parent,
                                 **kw)
        self.children[child.pid] = (name, child)
        return child

    def start(self):
        fd, self.auth = tempfile.mkstemp(prefix="fake-envision-xauth-")
        with os.fdopen(fd, "wb") as f:
            f.write(xauthority(os.urandom(16)))
        size = os.environ.get("FAKE_ENVISION_SIZE", "1024x768")
        reader, writer = os.pipe()
        try:
            xvfb = self.spawn("Xvfb", ["Xvfb", "-displayfd", str(writer), "-screen", "0", f"{size}x24",
                                       "-nolisten", "tcp", "-noreset", "-auth", self.auth],
                              pass_fds=(writer,))
            os.close(writer)
            self.display = self._read_display(reader, xvfb)
        finally:
            os.close(reader)
        env = {**os.environ, "XAUTHORITY": self.auth, "DISPLAY": f":{self.display}"}
        colour = os.environ.get("FAKE_ENVISION_COLOUR", "#3a6ea5")
        painted = subprocess.run(["xsetroot", "-display", f":{self.display}", "-solid", colour], env=env,
                                 stdin=subprocess.DEVNULL, stdout=sys.stderr, timeout=START_TIMEOUT)
        if painted.returncode != 0:
            raise RuntimeError(f"xsetroot -solid {colour!r} failed (status {painted.returncode})")
        argv = ["x11vnc", "-display", f":{self.display}", "-auth", self.auth, "-rfbport", str(self.port),
                "-localhost", "-noipv6", "-forever", "-shared", "-nocursorshape", "-quiet"]
        argv += ["-passwd", self.password] if self.password else ["-nopw"]
        x11vnc = self.spawn("x11vnc", argv)
        self._until(lambda: accepts(self.port), x11vnc, f"x11vnc to listen on 127.0.0.1:{self.port}")
        # Both have read the cookie (Xvfb -noreset never reads it again): nothing to leave behind.
        os.unlink(self.auth)
        self.auth = None

    def _read_display(self, reader, xvfb):
        """The display number Xvfb writes on -displayfd once it listens."""
        data, deadline = b"", time.monotonic() + START_TIMEOUT
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"Xvfb did not open a display within {START_TIMEOUT:g}s")
            ready, _, _ = select.select([reader], [], [], min(left, 0.5))
            chunk = os.read(reader, 64) if ready else b""
            if ready and not chunk:
                raise RuntimeError(f"Xvfb exited at start (status {xvfb.wait()})")
            data += chunk
        return int(data)

    def _until(self, condition, child, what):
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            if child.poll() is not None:
                raise RuntimeError(f"{child.args[0]} exited at start (status {child.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {START_TIMEOUT:g}s waiting for {what}")
            time.sleep(0.05)

    def watch(self):
        """Until one of the children ends: its name and status."""
        while True:
            pid, status = os.wait()
            if pid in self.children:
                name, child = self.children.pop(pid)
                child.returncode = os.waitstatus_to_exitcode(status)
                return name, child.returncode

    def stop(self):
        """End the children (x11vnc first), SIGKILL after 5 s; remove the cookie file."""
        for _, child in reversed(list(self.children.values())):
            if child.poll() is None:
                child.terminate()
        for _, child in reversed(list(self.children.values())):
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.children.clear()
        if self.auth and os.path.exists(self.auth):
            os.unlink(self.auth)


def main(argv):
    port, password = parse(argv)
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        fail(f"{', '.join(missing)} not on PATH (apt-get install xvfb x11vnc x11-xserver-utils)")

    def stop(signum, frame):
        raise Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    desktop = Desktop(port, password)
    status = 0
    try:
        desktop.start()
        print(f"fake {NAME}: X display :{desktop.display}, VNC on 127.0.0.1:{port}, "
              f"auth {'password' if password else 'none'}", flush=True)
        name, code = desktop.watch()
        print(f"{NAME}: {name} exited (status {code}); stopping", file=sys.stderr, flush=True)
        status = 1
    except Stop:
        pass
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"{NAME}: {e}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        desktop.stop()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
