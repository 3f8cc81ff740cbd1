"""config/scripts/x11vnc_desktop_session.py with a real Xvfb and x11vnc, through a real gateway."""

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import websockets
from websockets.asyncio.client import connect

from conftest import ROOT, require
from support.desktop import free_display, processes_with

SCRIPT = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
LOOPBACK = "tcp:0:interface=127.0.0.1"


@pytest.fixture
def desktop_gateway(gateway, tmp_path):
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    base = free_display(count=2)
    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"Local Software Session": {
        "script": str(SCRIPT), "count": 2,
        "options": {"sizes": ["640x480", "800x600"], "display_base": base}}}))
    www = tmp_path / "www"
    www.mkdir()
    gw = gateway(["--remote_session_config", str(config), "--state_file", str(tmp_path / "state.json"),
                  "--http_directory", str(www), "--http_listen", LOOPBACK, "--ws_listen", LOOPBACK,
                  "--reconnect_grace", "0"],  # the reference's behaviour: stopped with the WebSocket
                 http=True)
    gw.display_base = base
    yield gw
    # An orderly stop ends the sessions; a killed gateway would orphan them.
    assert gw.stop() == 0
    assert processes_with(f":{base}") == [] and processes_with(f":{base + 1}") == []


def reserve(gw, **options):
    query = urllib.parse.urlencode(options)
    url = f"{gw.http_url}/v1/reserve/{urllib.parse.quote('Local Software Session')}?{query}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_desktop_session_serves_rfb_through_the_websocket_and_is_cleaned_up(desktop_gateway):
    gw = desktop_gateway
    display = f":{gw.display_base}"
    started = time.time() - 1
    token = reserve(gw, size="800x600", password="s3cret")["token"]

    async def session():
        async with connect(f"{gw.ws_url}/websockify?token={token}", subprotocols=["binary"],
                           open_timeout=30) as ws:
            greeting = await asyncio.wait_for(ws.recv(), 30)
            assert greeting.startswith(b"RFB 003.")
            await ws.send(greeting[:12])  # the client picks the same version
            types = await asyncio.wait_for(ws.recv(), 10)
            assert types[0] >= 1 and 2 in types[1:], "VNC authentication (type 2) is offered"
            assert len(processes_with(display)) >= 2, "Xvfb and x11vnc run for the session"
            # The display wants the session's cookie: another local client is refused.
            intruder = subprocess.run(["xsetroot", "-display", display, "-solid", "red"],
                                      env={**os.environ, "XAUTHORITY": "/nonexistent"},
                                      capture_output=True, text=True, timeout=20)
            assert intruder.returncode != 0 and "unable to open display" in intruder.stderr

    asyncio.run(session())
    gw.wait_for(r"Local Software Session#0: stopping -> released")
    assert not [f for f in os.listdir(tempfile.gettempdir()) if f.startswith(("nexusws-xauth-", "nexusws-vnc-"))
                and os.stat(os.path.join(tempfile.gettempdir(), f)).st_mtime >= started], "private files removed"
    assert processes_with(display) == [], "Xvfb and x11vnc are gone after the session"
    assert not os.path.exists(f"/tmp/.X11-unix/X{gw.display_base}")
    assert "s3cret" not in gw.log


def test_desktop_session_without_password_needs_no_authentication(desktop_gateway):
    gw = desktop_gateway
    token = reserve(gw)["token"]

    async def session():
        async with connect(f"{gw.ws_url}/?token={token}", subprotocols=["binary"], open_timeout=30) as ws:
            greeting = await asyncio.wait_for(ws.recv(), 30)
            await ws.send(greeting[:12])
            types = await asyncio.wait_for(ws.recv(), 10)
            assert 1 in types[1:], "security type None is offered"

    asyncio.run(session())


def test_unoffered_size_closes_the_websocket_with_the_reason(desktop_gateway):
    gw = desktop_gateway
    token = reserve(gw, size="99999x99999")["token"]

    async def session():
        async with connect(f"{gw.ws_url}/?token={token}", subprotocols=["binary"], open_timeout=30) as ws:
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 30)
            assert ws.close_code == 1011
            assert "is not offered" in ws.close_reason

    asyncio.run(session())
    assert processes_with(f":{gw.display_base}") == []


def test_the_shipped_desktop_config_loads(tmp_path):
    """config/desktop_sessions.json, as the README shows it, names a script that loads."""
    from twisted.internet import task

    from nexusws.sessions.launcher import Launcher
    from support.services import config_services

    require(shutil.which("xsetroot"), "xsetroot (apt-get install x11-xserver-utils)")  # its background
    (service,) = config_services(str(ROOT / "config" / "desktop_sessions.json"), task.Clock(), Launcher(task.Clock()))
    assert (service.name, service.count) == ("Local Software Session", 2)
    assert service.common_options["background"] == "#3a6ea5"


# --- the programs option -------------------------------------------------------------


@pytest.mark.parametrize("programs, reason", [
    ("xmessage", "programs: must be a list of command lines, not 'xmessage'"),
    ([[]], "programs: [] is not a command line (a non-empty list of strings)"),
    (["xmessage"], "programs: 'xmessage' is not a command line (a non-empty list of strings)"),
    ([["xmessage", 3]], "programs: ['xmessage', 3] is not a command line (a non-empty list of strings)"),
    ([["no-such-program-nexusws"]], "programs: 'no-such-program-nexusws' is not on PATH"),
    ([["/nonexistent/xclock"]], "programs: '/nonexistent/xclock' does not exist or is not executable"),
])
def test_a_bad_programs_option_is_refused_at_start_up_in_one_line(tmp_path, programs, reason):
    from twisted.internet import task

    from nexusws.errors import StartupError
    from nexusws.sessions.launcher import Launcher
    from support.services import config_services

    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"Desktop": {"script": str(SCRIPT), "count": 1,
                                              "options": {"programs": programs}}}))
    with pytest.raises(StartupError) as info:
        config_services(str(config), task.Clock(), Launcher(task.Clock()))
    message = str(info.value)
    assert reason in message and "\n" not in message, message


PROBE = """\
import json, os, signal, subprocess, sys
painted = subprocess.run(["xsetroot", "-solid", "#123456"], capture_output=True, text=True)
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "argv": sys.argv[2:], "display": os.environ.get("DISPLAY"),
               "xsetroot": painted.returncode, "stderr": painted.stderr}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()
"""


def test_programs_run_on_the_sessions_display_and_stop_with_the_session(gateway, tmp_path):
    """Each command line of C{programs} runs once x11vnc listens, as an X client of the session's
    display (DISPLAY and the session's cookie), and ends with the session."""
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    from support.sessions import gateway_args, marked
    from support.waiting import wait_until, wait_until_async

    base = free_display()
    probe, report = tmp_path / "probe.py", tmp_path / "probe.json"
    probe.write_text(PROBE)
    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"Local Software Session": {
        "script": str(SCRIPT), "count": 1,
        "options": {"sizes": ["640x480"], "display_base": base,
                    "programs": [["python3", str(probe), str(report), "two words", "--flag"]]}}}))
    gw = gateway(gateway_args(tmp_path, config=config), http=True)
    token = reserve(gw)["token"]

    async def session():
        async with connect(f"{gw.ws_url}/?token={token}", subprotocols=["binary"], open_timeout=30) as ws:
            assert (await asyncio.wait_for(ws.recv(), 30)).startswith(b"RFB 003.")
            await wait_until_async(report.exists, 20, "the program to report")
            seen = json.loads(report.read_text())
            assert seen["pid"] in marked(str(report)), "it runs while the session does"
            return seen

    seen = asyncio.run(session())
    assert seen["argv"] == ["two words", "--flag"]
    assert seen["display"] == f":{base}"
    assert seen["xsetroot"] == 0, f"the program is a client of the display: {seen['stderr']}"
    gw.wait_for(r"Local Software Session#0: stopping -> released")
    wait_until(lambda: not marked(str(report)), 10, "the program to end with the session")
    assert processes_with(f":{base}") == []
    assert gw.stop() == 0


def test_without_programs_the_desktop_runs_nothing_else(tmp_path):
    """The option is optional: absent (or empty), the script has no programs to start."""
    from twisted.internet import task

    from nexusws.sessions.launcher import Launcher
    from support.services import config_services

    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"A": {"script": str(SCRIPT), "count": 1, "options": {}},
                                  "B": {"script": str(SCRIPT), "count": 1, "options": {"programs": []}}}))
    services = config_services(str(config), task.Clock(), Launcher(task.Clock()))
    assert [service.script.programs for service in services] == [[], []]
