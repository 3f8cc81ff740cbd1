"""Idle and time limits end to end (issue 15, items 2-3): a real gateway, the shipped desktop
script (Xvfb + x11vnc, real RFB) and a Python websockets client that speaks RFB itself:
update requests alone leave the session idle, pointer events keep it; a time limit with
/v1/extend. In memory: test_deadlines.py, test_input_tracking.py; in the browser:
test_browser_sessions.py."""

import asyncio
import json
import shutil
import struct
import time
import urllib.request

import pytest
import websockets

from conftest import ROOT, require
from support.desktop import free_display, processes_with
from support.sessions import SCRIPTS, closed_with, gateway_args, get, open_ws, reserve, run, session_url

DESKTOP = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"
FBUR = struct.pack("!BBHHHH", 3, 1, 0, 0, 640, 480)
POINTER = struct.pack("!BBHH", 5, 0, 10, 20)


@pytest.fixture
def desktop(tmp_path):
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    base = free_display(count=1)
    config = tmp_path / "desktop.json"
    config.write_text(json.dumps({"desk": {"script": str(DESKTOP), "count": 1,
                                           "options": {"sizes": ["640x480"], "display_base": base}}}))
    yield config
    deadline = time.monotonic() + 20
    while processes_with(f":{base}"):
        assert time.monotonic() < deadline, "the desktop outlived its session"
        time.sleep(0.1)


class Rfb:
    """The client side of RFB 3.8 without authentication, over a WebSocket."""

    def __init__(self, ws):
        self.ws, self.buffer = ws, b""

    async def read(self, count):
        while len(self.buffer) < count:
            self.buffer += await asyncio.wait_for(self.ws.recv(), 15)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def handshake(self):
        assert (await self.read(12)).startswith(b"RFB 003.")
        await self.ws.send(b"RFB 003.008\n")
        (count,) = await self.read(1)
        assert 1 in await self.read(count), "no password: security type None"
        await self.ws.send(b"\x01")
        assert await self.read(4) == b"\0\0\0\0"
        await self.ws.send(b"\x01")  # ClientInit, shared
        head = await self.read(24)
        await self.read(struct.unpack("!I", head[20:24])[0])  # the desktop's name
        await self.ws.send(struct.pack("!BxHi", 2, 1, 0))  # SetEncodings: Raw

    async def drain(self):
        """Take whatever the server sent (updates), without parsing it."""
        try:
            while True:
                self.buffer = b""
                await asyncio.wait_for(self.ws.recv(), 0.05)
        except TimeoutError:
            pass


def test_a_viewer_that_only_asks_for_updates_is_warned_and_ended_for_idleness(gateway, tmp_path, desktop):
    gw = gateway(gateway_args(tmp_path, "--idle_timeout", "6", "--idle_warning", "3", config=desktop), http=True)
    token = reserve(gw, "desk")

    async def viewer():
        async with open_ws(session_url(gw, token)) as ws:
            rfb = Rfb(ws)
            await rfb.handshake()
            started = time.monotonic()
            try:
                while time.monotonic() - started < 20:
                    await ws.send(FBUR)
                    await rfb.drain()
                    await asyncio.sleep(0.2)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason, time.monotonic() - started
            raise AssertionError("an idle viewer was not ended")

    code, reason, after = run(viewer())
    assert (code, reason) == (4002, "session ended: idle") and after < 12
    gw.wait_for(r"desk#0: idle for \d+ s: it ends in \d+ s without input")
    gw.wait_for(r"desk#0: active -> stopping \(idle\)")
    assert "input tracking" not in gw.log, "the RFB stream was followed, not counted in bytes"
    with urllib.request.urlopen(f"{gw.http_url}/v1/metrics", timeout=10) as answer:
        assert 'nexusws_session_ends_total{reason="idle",service="desk"} 1.0' in answer.read().decode()


def test_pointer_events_keep_it_and_it_ends_once_they_stop(gateway, tmp_path, desktop):
    gw = gateway(gateway_args(tmp_path, "--idle_timeout", "6", "--idle_warning", "3", config=desktop), http=True)
    token = reserve(gw, "desk")

    async def user():
        async with open_ws(session_url(gw, token)) as ws:
            rfb = Rfb(ws)
            await rfb.handshake()
            started = time.monotonic()
            while time.monotonic() - started < 9:  # half again the idle limit, moving the mouse
                await ws.send(FBUR)
                await ws.send(POINTER)
                await rfb.drain()
                await asyncio.sleep(1)
            _, snapshot = get(f"{gw.http_url}/v1/session/{token}")
            assert snapshot["state"] == "active" and snapshot["idle"] < 2.5, snapshot
            assert snapshot["bytes_up"] > 9 * (len(FBUR) + len(POINTER))
            return await closed_with(ws)

    assert run(user()) == (4002, "session ended: idle")


def test_a_time_limit_warns_ends_and_extend_postpones_it(gateway, tmp_path):
    config = tmp_path / "hello.json"
    config.write_text(json.dumps({"hello": {"script": str(SCRIPTS / "hello_echo.py"), "count": 1, "options": {
        "max_duration": 4, "time_warning": 2, "max_extend": 3}}}))
    gw = gateway(gateway_args(tmp_path, config=config), http=True)
    token = reserve(gw, "hello")

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            await asyncio.wait_for(ws.recv(), 15)  # its greeting: the session is active
            started = time.monotonic()
            assert get(f"{gw.http_url}/v1/extend/{token}?seconds=4")[0] == 403
            status, snapshot = get(f"{gw.http_url}/v1/extend/{token}?seconds=3")
            assert status == 200 and 6 < snapshot["time_left"] <= 7
            code = await closed_with(ws)
            return code, time.monotonic() - started

    (code, reason), after = run(session())
    assert (code, reason) == (4003, "session ended: time limit reached") and 6 < after < 9
    gw.wait_for(r"hello#0: time limit extended by 3 s")
    gw.wait_for(r"hello#0: its time is up \(max_duration 4 s, extended by 3 s\)")
    assert token not in gw.log
