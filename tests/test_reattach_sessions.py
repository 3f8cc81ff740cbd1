"""Re-attach within a grace period end to end: a real gateway, real session processes
(an echo server that greets with its pid; the shipped x11vnc desktop), Python websockets."""

import asyncio
import json
import shutil
import urllib.request

import websockets

from conftest import ROOT, require
from support.desktop import free_display, processes_with
from support.sessions import (
    assert_gone,
    closed_with,
    echo,
    gateway_args,
    get,
    greeting,
    instances,
    marked,
    open_ws,
    refusal,
    reserve,
    run,
    service_config,
    session_url,
)

DESKTOP = ROOT / "config" / "scripts" / "x11vnc_desktop_session.py"


def hello_config(tmp_path, **options):
    """A config file with one service, "hello": an echo server greeting with its pid."""
    return service_config(tmp_path, "hello", "hello_echo.py", **options)


def test_a_client_that_reconnects_within_the_grace_reaches_the_same_process(gateway, tmp_path, marker):
    """The WebSocket closes; the instance stays (detached, its grace counting down in
    /v1/status); the same token reaches the same server process; nothing is launched again."""
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "30", config=hello_config(tmp_path)), http=True)
    token = reserve(gw, "hello", marker=marker)

    async def first():
        async with open_ws(session_url(gw, token)) as ws:
            pid = await greeting(ws)
            await echo(ws)
            return pid

    pid = run(first())
    gw.wait_for(r"hello#0: active -> detached \(WebSocket closed; grace 30 s\)")
    (entry,) = instances(gw, "hello")
    assert entry["state"] == "detached" and 0 < entry["grace_left"] <= 30
    assert pid in marked(marker), "the server still runs"

    async def second():
        async with open_ws(session_url(gw, token, "/again")) as ws:
            assert await greeting(ws) == pid
            await echo(ws, b"y" * 100_000)
            assert [i["state"] for i in instances(gw, "hello")] == ["active"]

    run(second())
    gw.wait_for(r"hello#0: detached -> active \(re-attached\)")
    assert len([line for line in gw.lines if "started pid" in line or ") started" in line]) == 1, gw.log
    assert token not in gw.log
    assert get(f"{gw.http_url}/v1/release/{token}") == (200, {"released": token})
    assert_gone(marker)
    with urllib.request.urlopen(f"{gw.http_url}/v1/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'nexusws_reattaches_total{service="hello"} 1.0' in metrics


def test_a_dropped_connection_ends_the_session_once_the_grace_has_run_out(gateway, tmp_path, marker):
    """The service's own reconnect_grace (1 s) overrides the default; the TCP connection
    is dropped without a close frame; past the grace the process is gone and the token dead."""
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "60",
                              config=hello_config(tmp_path, reconnect_grace=1)), http=True)
    token = reserve(gw, "hello", marker=marker)

    async def dropped():
        ws = await open_ws(session_url(gw, token))
        pid = await greeting(ws)
        ws.transport.abort()  # no close frame: a network failure
        return pid

    pid = run(dropped())
    gw.wait_for(r"hello#0: active -> detached \(WebSocket closed; grace 1 s\)")
    gw.wait_for(r"hello#0: detached -> stopping \(grace_expired\)")
    gw.wait_for(r"hello#0: stopping -> released")
    assert_gone(marker)
    assert pid not in marked(marker)
    assert run(refusal(session_url(gw, token))) == 404


def test_with_grace_0_the_session_ends_when_its_websocket_closes(gateway, tmp_path, marker):
    """--reconnect_grace 0: the reference's behaviour."""
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "0", config=hello_config(tmp_path)), http=True)
    token = reserve(gw, "hello", marker=marker)

    async def session():
        async with open_ws(session_url(gw, token)) as ws:
            await greeting(ws)

    run(session())
    gw.wait_for(r"hello#0: active -> stopping \(WebSocket closed\)")
    assert_gone(marker)
    assert "detached" not in gw.log


def test_takeover_by_the_same_client_closes_the_old_websocket_4001_and_reaches_the_same_process(
        gateway, tmp_path, marker):
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "30", config=hello_config(tmp_path)), http=True)
    token = reserve(gw, "hello", marker=marker)

    async def scenario():
        async with open_ws(session_url(gw, token)) as old:
            pid = await greeting(old)
            assert await refusal(session_url(gw, token)) == 409
            async with open_ws(session_url(gw, token) + "&takeover=1") as new:
                assert await closed_with(old) == (4001, "taken over")
                assert await greeting(new) == pid
                await echo(new)

    run(scenario())
    gw.wait_for(r"hello#0: taken over by a new WebSocket")
    gw.wait_for(r"hello#0: active -> detached")
    assert len(instances(gw, "hello")) == 1


def test_a_desktop_re_attaches_to_the_same_xvfb_and_x11vnc_and_gets_an_rfb_greeting(gateway, tmp_path):
    """The shipped desktop script runs x11vnc -forever -shared: after the WebSocket closes,
    the same token gets a new RFB greeting from the same x11vnc, on the same X server."""
    require(all(shutil.which(p) for p in ("Xvfb", "x11vnc", "xsetroot")),
            "Xvfb, x11vnc and xsetroot (apt-get install xvfb x11vnc x11-xserver-utils)")
    base = free_display(count=1)
    config = tmp_path / "desktops.json"
    config.write_text(json.dumps({"Local Software Session": {
        "script": str(DESKTOP), "count": 1,
        "options": {"sizes": ["640x480"], "display_base": base, "reconnect_grace": 30}}}))
    gw = gateway(gateway_args(tmp_path, "--reconnect_grace", "0", config=config), http=True)
    display = f":{base}"
    token = reserve(gw, "Local Software Session")

    async def rfb():
        async with websockets.connect(session_url(gw, token), subprotocols=["binary"], open_timeout=30) as ws:
            hello = await asyncio.wait_for(ws.recv(), 30)
            assert hello.startswith(b"RFB 003.")
            await ws.send(hello[:12])
            types = await asyncio.wait_for(ws.recv(), 10)
            assert types[0] >= 1, "security types offered"

    try:
        run(rfb())
        first = sorted(processes_with(display))
        assert len(first) >= 2, "Xvfb and x11vnc run"
        gw.wait_for(r"Local Software Session#0: active -> detached \(WebSocket closed; grace 30 s\)")
        assert sorted(processes_with(display)) == first
        run(rfb())
        gw.wait_for(r"Local Software Session#0: detached -> active \(re-attached\)")
        assert sorted(processes_with(display)) == first, "the same X server and x11vnc"
        assert get(f"{gw.http_url}/v1/release/{token}") == (200, {"released": token})
        gw.wait_for(r"Local Software Session#0: stopping -> released")
        assert processes_with(display) == []
    finally:
        assert gw.stop() == 0
    assert processes_with(display) == []
