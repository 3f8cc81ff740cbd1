"""A real VNC desktop for the end-to-end tests: Xvfb painted one known colour, and x11vnc.

The root window is filled with L{COLOUR} (xsetroot), so a client that shows
the desktop can be checked pixel by pixel. x11vnc listens on 127.0.0.1 only.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import require

#: The desktop's colour, as xsetroot takes it and as RGB.
COLOUR = "#3a6ea5"
RGB = (0x3A, 0x6E, 0xA5)


def free_display(start=300, count=1):
    """A display number from which C{count} displays are unused."""
    for base in range(start, start + 600, count):
        if not any(os.path.exists(f"/tmp/.X11-unix/X{d}") or os.path.exists(f"/tmp/.X{d}-lock")
                   for d in range(base, base + count)):
            return base
    pytest.fail("no free X display number")


def processes_with(argument):
    """Pids with C{argument} (":301", say) as one whole argument of their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if argument.encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def xvfb_of(display):
    """The pids of the Xvfb serving C{display} (not the x11vnc beside it)."""
    pids = []
    for pid in processes_with(f":{display}"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if os.path.basename(f.read().split(b"\0")[0]) == b"Xvfb":
                    pids.append(pid)
        except OSError:
            pass
    return pids


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Desktop:
    """Xvfb + x11vnc; C{port} is x11vnc's port, C{password} its password (or None)."""

    def __init__(self, password=None, size="640x480"):
        require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
                "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
        self.password = password
        self.size = tuple(int(n) for n in size.split("x"))
        self.display = free_display()
        self.procs = []
        try:
            self._start(password, size)
        except BaseException:
            self.close()
            raise

    def _start(self, password, size):
        xvfb = self._spawn(["Xvfb", f":{self.display}", "-screen", "0", f"{size}x24", "-nolisten", "tcp",
                            "-noreset"])
        _wait(lambda: os.path.exists(f"/tmp/.X11-unix/X{self.display}") or xvfb.poll() is not None, "Xvfb")
        assert xvfb.poll() is None, "Xvfb exited at start"
        subprocess.run(["xsetroot", "-display", f":{self.display}", "-solid", COLOUR], check=True, timeout=20)
        self.port = _free_port()
        argv = ["x11vnc", "-display", f":{self.display}", "-rfbport", str(self.port), "-localhost",
                "-noipv6", "-forever", "-shared", "-nocursorshape", "-quiet"]
        if password:
            argv += ["-passwd", password]
        else:
            argv += ["-nopw"]
        vnc = self._spawn(argv)
        _wait(lambda: self._listening() or vnc.poll() is not None, "x11vnc")
        assert vnc.poll() is None, "x11vnc exited at start"

    def _spawn(self, argv):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)

