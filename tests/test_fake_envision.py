"""tests/services/fake_envision.py, EnVision's stand-in: a real X desktop (Xvfb, x11vnc) on the
port its -vnc argument names; alone, and as --local_session envision behind a real gateway."""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse

import pytest
import websockets

from conftest import require
from support.envision import FAKE_ENVISION, desktops_below, envision_executable, envision_ports, port_free
from support.sessions import all_instances, gateway_args, get, open_ws, reserve, run, session_url
from support.waiting import wait_until, wait_until_async

LINE = r"fake fake_envision\.py: X display :(\d+), VNC on 127\.0\.0\.1:(\d+), auth (\w+)"
PROGRAMS = ("Xvfb", "x11vnc")


@pytest.fixture(autouse=True)
def x_programs():
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid):
    """(state, parent pid, name) of live C{pid}, or None (gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            head, _, tail = f.read().rpartition(b")")
    except OSError:
        return None
    state, ppid = tail.split()[:2]
    if state in (b"Z", b"X"):
        return None
    return state, int(ppid), head.partition(b"(")[2].decode()


def alive(pids):
    return [pid for pid in pids if _stat(pid) is not None]


def fake_argv(port, password=None):
    auth = f"primary_password={password}" if password else "use_auth=0"
    return [sys.executable, str(FAKE_ENVISION), "-vnc", f"vnc://?rfb_port={port}&{auth}"]


def rfb_security_types(port):
    """Connect to C{port} as an RFB 3.8 client: (version line, security types offered)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        version = s.recv(12)
        s.sendall(version)
        count = s.recv(1)[0]
        types = b""
        while len(types) < count:
            types += s.recv(count - len(types))
    return version, list(types)


def start_fake(popen, port, password=None):
    fake = popen(fake_argv(port, password), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = fake.stdout.readline()
    m = re.fullmatch(LINE, line.strip())
    assert m, f"unexpected first line {line!r}; stderr: {fake.stderr.read() if fake.poll() is not None else ''}"
    assert int(m.group(2)) == port
    programs = desktops_below(fake.pid, PROGRAMS)
    assert sorted(programs.values()) == ["Xvfb", "x11vnc"], programs
    return fake, programs, m


# --- the stand-in alone ----------------------------------------------------------------------


def test_fake_serves_an_x_desktop_over_vnc_and_a_sigterm_ends_it_all(popen):
    port = free_port()
    fake, programs, m = start_fake(popen, port)
    assert m.group(3) == "none"
    assert rfb_security_types(port) == (b"RFB 003.008\n", [1])
    # The desktop answers X clients that have its cookie only: a client without one is refused.
    refused = subprocess.run(["xsetroot", "-display", f":{m.group(1)}", "-solid", "red"],
                             env={"PATH": "/usr/bin:/bin", "XAUTHORITY": "/nonexistent"},
                             capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0
    fake.send_signal(signal.SIGTERM)
    assert fake.wait(15) == 0
    wait_until(lambda: not alive(programs), 10, "Xvfb and x11vnc to end with the stand-in")
    wait_until(lambda: port_free(port), 5, "the VNC port to close")


def test_fake_with_a_password_offers_vnc_authentication(popen):
    port = free_port()
    fake, programs, m = start_fake(popen, port, password="s3cret")
    assert m.group(3) == "password"
    assert rfb_security_types(port) == (b"RFB 003.008\n", [2])
    fake.send_signal(signal.SIGINT)
    assert fake.wait(15) == 0
    wait_until(lambda: not alive(programs), 10, "Xvfb and x11vnc to end with the stand-in")


@pytest.mark.parametrize("victim", PROGRAMS)
def test_fake_exits_when_xvfb_or_x11vnc_dies_and_leaves_nothing(popen, victim):
    fake, programs, _ = start_fake(popen, free_port())
    (pid,) = [pid for pid, name in programs.items() if name == victim]
    os.kill(pid, signal.SIGKILL)
    assert fake.wait(15) == 1
    assert f"{victim} exited" in fake.stderr.read()
    wait_until(lambda: not alive(programs), 10, "the other program to end with the stand-in")


@pytest.mark.parametrize("argv", [[], ["-vnc"], ["-vnc", "http://x/?rfb_port=5"], ["-vnc", "vnc://?use_auth=0"],
                                  ["-vnc", "vnc://?rfb_port=x"], ["-vnc", "vnc://?rfb_port=70000"]])
def test_fake_refuses_a_bad_argument_in_one_line(argv):
    done = subprocess.run([sys.executable, str(FAKE_ENVISION), *argv], capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("fake_envision.py: ") and done.stderr.count("\n") == 1, done.stderr


def test_fake_without_the_x_programs_says_what_to_install_in_one_line():
    done = subprocess.run(fake_argv(free_port()), capture_output=True, text=True, timeout=20, env={"PATH": ""})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("fake_envision.py: Xvfb, x11vnc, xsetroot not on PATH "
                           "(apt-get install xvfb x11vnc x11-xserver-utils)\n")


# --- as the built-in envision service of a real gateway --------------------------------------


def envision_gateway(gateway, tmp_path, *extra):
    """A gateway with --local_session envision 1 running the stand-in; its VNC port is free."""
    base = envision_ports(1)  # envision #0's VNC port is --vnc_port_base + 1
    gw = gateway(gateway_args(tmp_path, "--local_session", "envision", "1", "--vnc_port_base", str(base),
                              "--envision_executable", str(envision_executable(tmp_path)), *extra, config=None),
                 http=True)
    gw.vnc_port = base + 1
    return gw


def test_envision_serves_the_fakes_desktop_through_the_websocket_until_released(gateway, tmp_path):
    # A long reconnect grace: only the release ends the session.
    gw = envision_gateway(gateway, tmp_path, "--reconnect_grace", "60")
    token = reserve(gw, "envision")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            assert await asyncio.wait_for(ws.recv(), 30) == b"RFB 003.008\n"  # x11vnc's, through the tunnel
            await ws.send(b"RFB 003.008\n")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x01\x01", "one security type: None"
            m = gw.wait_for(LINE)
            assert (m.group(2), m.group(3)) == (str(gw.vnc_port), "none")
            programs = desktops_below(gw.proc.pid, PROGRAMS)
            assert sorted(programs.values()) == ["Xvfb", "x11vnc"], programs
            status, body = await asyncio.to_thread(get, f"{gw.http_url}/v1/release/{urllib.parse.quote(token)}")
            assert (status, body) == (200, {"released": token})
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            await wait_until_async(lambda: not alive(programs), 10, "Xvfb and x11vnc to end with the session")

    run(session())
    assert all_instances(gw) == []
    wait_until(lambda: port_free(gw.vnc_port), 5, "the VNC port to close")
    assert desktops_below(gw.proc.pid, PROGRAMS) == {}
    assert gw.stop() == 0


def test_envision_with_a_password_offers_vnc_authentication_and_stops_with_the_websocket(gateway, tmp_path):
    gw = envision_gateway(gateway, tmp_path)  # --reconnect_grace 0: the WebSocket's end ends it
    token = reserve(gw, "envision", password="s3cret")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            assert await asyncio.wait_for(ws.recv(), 30) == b"RFB 003.008\n"
            await ws.send(b"RFB 003.008\n")
            assert await asyncio.wait_for(ws.recv(), 10) == b"\x01\x02", "one security type: VNC authentication"
            return desktops_below(gw.proc.pid, PROGRAMS)

    programs = run(session())
    assert gw.wait_for(LINE).group(3) == "password"
    gw.wait_for(r"envision#0: stopping -> released")
    wait_until(lambda: not alive(programs), 10, "Xvfb and x11vnc to end with the session")
    wait_until(lambda: port_free(gw.vnc_port), 5, "the VNC port to close")
    assert gw.stop() == 0

