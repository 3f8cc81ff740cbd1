"""The README's demo (config/demo/run.py) works: page served, tunnel to its backend."""

import asyncio
import signal
import sys
import urllib.request

from websockets.asyncio.client import connect

from conftest import ROOT

DEMO = [sys.executable, str(ROOT / "config" / "demo" / "run.py")]
FREE_PORTS = ["--http_listen", "tcp:0:interface=127.0.0.1", "--ws_listen", "tcp:0:interface=127.0.0.1"]


def test_demo_serves_its_page_and_tunnels_to_its_backend_then_stops_cleanly(gateway):
    gw = gateway(FREE_PORTS, via=DEMO, http=True)
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
