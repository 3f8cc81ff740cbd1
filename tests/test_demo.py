"""The README's demo (config/demo/run.py) works: pages served, basic mode and sessions, and the
desktop (Xvfb and x11vnc) where they are installed, a one-line hint where not."""

import asyncio
import json
import os
import shutil
import signal
import sys
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect

from conftest import ROOT, require
from support.desktop import processes_with
from support.waiting import wait_until

DEMO = [sys.executable, str(ROOT / "config" / "demo" / "run.py")]
FREE_PORTS = ["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1"]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


#: The demo's line when the desktop's programs are missing: what to install.
PACKAGES = "apt-get install xvfb x11vnc x11-xserver-utils x11-utils novnc"


def demo(gateway, tmp_path, env=None):
    return gateway([*FREE_PORTS, "--state_file", str(tmp_path / "state.json")], via=DEMO, http=True, env=env)


def names(gw):
    status, listing = get_json(gw.http_url + "/v1/status")
    assert status == 200
    return [service["name"] for service in listing]


def reserve(gw, service):
    status, body = get_json(gw.http_url + "/v1/reserve/" + urllib.parse.quote(service))
    assert status == 200, body
    return body["token"]


def test_demo_serves_its_page_and_tunnels_to_its_backend_then_stops_cleanly(gateway, tmp_path):
    gw = demo(gateway, tmp_path)
    page = urllib.request.urlopen(gw.http_url + "/", timeout=10).read().decode()
    assert "new WebSocket(url" in page

    async def talk():
        async with connect(gw.ws_url + "/websockify", subprotocols=["binary"]) as ws:
            greeting = await ws.recv()
            assert greeting.startswith(b"hello from the nexusws demo backend")
            await ws.send(b"ping me\n")
            assert await ws.recv() == b"you said: PING ME\r\n"

    asyncio.run(asyncio.wait_for(talk(), 30))
    assert gw.stop(signal.SIGTERM) == 0
    assert "tunnel closed" in gw.log


def test_demo_session_is_reserved_started_per_websocket_and_stopped_on_close(gateway, tmp_path):
    gw = demo(gateway, tmp_path)
    page = urllib.request.urlopen(gw.http_url + "/sessions.html", timeout=10).read().decode()
    assert "/v1/reserve/" in page
    status, body = get_json(gw.http_url + "/v1/reserve/" + urllib.parse.quote("Demo Session"))
    assert status == 200 and body["index"] == 0
    token = body["token"]

    async def talk():
        async with connect(f"{gw.ws_url}/websockify?token={token}", subprotocols=["binary"]) as ws:
            assert (await ws.recv()).startswith(b"hello from the nexusws demo backend")
            await ws.send(b"mine\n")
            assert await ws.recv() == b"you said: MINE\r\n"
            _, listing = get_json(gw.http_url + "/v1/status")
            (demo_service,) = [s for s in listing if s["name"] == "Demo Session"]  # "Desktop" too, maybe
            assert [i["state"] for i in demo_service["instances"]] == ["active"]

    asyncio.run(asyncio.wait_for(talk(), 30))
    gw.wait_for(r"Demo Session.*released")
    _, listing = get_json(gw.http_url + "/v1/status")
    assert all(service["instances"] == [] for service in listing)
    assert gw.stop(signal.SIGTERM) == 0


# --- the desktop (issue 17) ------------------------------------------------------------------


def test_demo_with_xvfb_and_x11vnc_offers_a_desktop_whose_websocket_carries_x11vncs_rfb(gateway, tmp_path):
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot", "xmessage", "xclock")),
            "Xvfb, x11vnc, xsetroot, xmessage and xclock "
            "(apt-get install xvfb x11vnc x11-xserver-utils x11-utils x11-apps)")
    gw = demo(gateway, tmp_path)
    gw.wait_for(r'^demo: "Desktop" sessions too: .*http://127\.0\.0\.1:9000/ansys/nexus/sessions/')
    assert 'no "Desktop" sessions' not in gw.log
    assert names(gw) == ["Demo Session", "Desktop"]
    token = reserve(gw, "Desktop")

    async def session():
        async with connect(f"{gw.ws_url}/websockify?token={token}", subprotocols=["binary"],
                           open_timeout=30) as ws:
            greeting = await asyncio.wait_for(ws.recv(), 30)
            assert greeting == b"RFB 003.008\n", greeting
            await ws.send(greeting)
            types = await asyncio.wait_for(ws.recv(), 10)
            assert 1 in types[1:], "no password: security type None"
            display = gw.wait_for(r"desktop 0: display :(\d+) 1024x768, VNC on").group(1)
            assert len(processes_with(f":{display}")) >= 2, "Xvfb and x11vnc run for the session"
            for program in ("xmessage", "xclock"):  # the small X programs on the desktop
                gw.wait_for(rf"Desktop\[0\] {program} \(pid \d+\) started")
            status, body = await asyncio.to_thread(get_json, f"{gw.http_url}/v1/release/{token}")
            assert (status, body) == (200, {"released": token})
            return display

    display = asyncio.run(asyncio.wait_for(session(), 60))
    gw.wait_for(r"Desktop#0: stopping -> released")
    wait_until(lambda: processes_with(f":{display}") == [], 10, "Xvfb and x11vnc to end with the session")
    assert gw.stop(signal.SIGTERM) == 0


def test_demo_without_xvfb_says_in_one_line_what_to_install_and_serves_the_text_demo(gateway, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with the other programs, not Xvfb
    bin_dir.mkdir()
    for program in ("x11vnc", "xsetroot", "xmessage"):
        if shutil.which(program):
            os.symlink(shutil.which(program), bin_dir / program)
    gw = demo(gateway, tmp_path, env={"PATH": str(bin_dir)})
    hints = [line for line in gw.log.splitlines() if "apt-get install" in line]
    assert len(hints) == 1 and hints[0].startswith('demo: no "Desktop" sessions (Xvfb'), hints
    assert hints[0].endswith(PACKAGES)
    assert "/ansys/nexus/sessions/" not in gw.log
    assert names(gw) == ["Demo Session"]
    token = reserve(gw, "Demo Session")

    async def talk():
        async with connect(f"{gw.ws_url}/websockify?token={token}", subprotocols=["binary"]) as ws:
            assert (await ws.recv()).startswith(b"hello from the nexusws demo backend")
            await ws.send(b"text\n")
            assert await ws.recv() == b"you said: TEXT\r\n"

    asyncio.run(asyncio.wait_for(talk(), 30))
    gw.wait_for(r"Demo Session.*released")
    assert gw.stop(signal.SIGTERM) == 0


def test_a_closed_terminal_stops_the_demo_and_its_desktops_gracefully(gateway, tmp_path):
    """SIGHUP (a closed terminal, a dropped ssh) is a stop like Ctrl-C: the gateway, in a session of
    its own, is told to stop and stops every desktop it runs."""
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    gw = demo(gateway, tmp_path)
    token = reserve(gw, "Desktop")

    async def session():
        async with connect(f"{gw.ws_url}/websockify?token={token}", subprotocols=["binary"],
                           open_timeout=30) as ws:
            assert await asyncio.wait_for(ws.recv(), 30) == b"RFB 003.008\n"
            display = gw.wait_for(r"desktop 0: display :(\d+) 1024x768, VNC on").group(1)
            assert await asyncio.to_thread(gw.stop, signal.SIGHUP) == 0  # its close answered meanwhile
            return display

    display = asyncio.run(asyncio.wait_for(session(), 60))
    assert "Desktop#0: stopping -> released" in gw.log
    wait_until(lambda: processes_with(f":{display}") == [], 10, "the desktop to end with the demo")
