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
