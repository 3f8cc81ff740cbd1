"""EnVision's stand-in (tests/services/fake_envision.py) as the built-in envision service runs it:
its executable, free VNC ports for its instances, and the desktops it leaves below a process."""

import os
import socket
import sys

import pytest

from conftest import ROOT
from support.sessions import descendants

FAKE_ENVISION = ROOT / "tests" / "services" / "fake_envision.py"
#: The programs of the stand-in's desktops (itself included).
DESKTOP_PROGRAMS = ("Xvfb", "x11vnc", FAKE_ENVISION.name)


def port_free(port):
    """Whether 127.0.0.1:C{port} may be listened on (a port in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def envision_ports(count):
    """A --vnc_port_base whose envision ports (base + 1, + 3...) for C{count} instances are free."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        ports = [first + 2 * i for i in range(count)]
        if ports[-1] < 65536 and all(port_free(p) for p in ports):
            return first - 1
    pytest.fail("no free VNC ports for envision")


def envision_executable(tmp_path):
    """An --envision_executable running the stand-in (which is not executable itself)."""
    program = tmp_path / "envision"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ENVISION}" "$@"\n')
    program.chmod(0o755)
    return program


def desktops_below(pid, programs=DESKTOP_PROGRAMS):
    """{pid: program} of the live C{programs} (Xvfb, x11vnc, stand-ins) below C{pid}."""
    found = {}
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(a.decode()) for a in argv[:2]]
        program = names[1] if names[0].startswith("python") and len(names) > 1 else names[0]
        if program in programs:
            found[child] = program
    return found
