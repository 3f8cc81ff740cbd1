"""The README's demo (config/demo/run.py) works: pages served, basic mode and sessions."""

import asyncio
import json
import signal
import sys
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect

from conftest import ROOT

DEMO = [sys.executable, str(ROOT / "config" / "demo" / "run.py")]
FREE_PORTS = ["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1"]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.status, json.loads(answer.read())


def demo(gateway, tmp_path):
    return gateway([*FREE_PORTS, "--state_file", str(tmp_path / "state.json")], via=DEMO, http=True)


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
            (demo_service,) = listing
            assert [i["state"] for i in demo_service["instances"]] == ["active"]

    asyncio.run(asyncio.wait_for(talk(), 30))
    gw.wait_for(r"Demo Session.*released")
    _, listing = get_json(gw.http_url + "/v1/status")
    assert listing[0]["instances"] == []
    assert gw.stop(signal.SIGTERM) == 0
